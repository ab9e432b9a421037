"""The embedding-data tasks (Wang et al., 2024) in real pipelines against the OpenAI-compatible
test server: structured and text modes, malformed answers, input validation, a tiny model."""

from __future__ import annotations

import json

import pytest

from synthpipe.errors import PipelineValidationError
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import (
    BitextRetrievalGenerator,
    EmbeddingTaskGenerator,
    GenerateLongTextMatchingData,
    GenerateShortTextMatchingData,
    GenerateTextClassificationData,
    GenerateTextRetrievalData,
    MonolingualTripletGenerator,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]


@pytest.fixture
def srv(server):
    yield server
    server.configure(answers=[], responder=None)


def _llm(server, **kw) -> OpenAILLM:
    return OpenAILLM(model="test-model", base_url=server.base_url, api_key="k", max_retries=1,
                     retry_base_delay=0.01, **kw)


def _rows(distiset, leaf="default") -> list[dict]:
    return distiset[leaf]["train"].to_list()


RETRIEVAL = {"user_query": "q", "positive_document": "good doc", "hard_negative_document": "near miss"}


def test_brainstormed_tasks_feed_retrieval_examples_in_structured_mode(srv):
    srv.configure(answers=[
        (r"Think of many different text retrieval", json.dumps({"tasks": ["find recipes", "find laws", "find x"]})),
        (r"retrieval task: find recipes", json.dumps(RETRIEVAL)),
        (r"retrieval task: find laws", '{"user_query": "q", "positive_document": "only one"}'),  # a key missing
        (r"retrieval task: find x", "not json at all"),
    ])
    with Pipeline(name="embed-retrieval") as pipeline:
        tasks = EmbeddingTaskGenerator(name="brainstorm", llm=_llm(srv), category="text-retrieval",
                                       flatten_tasks=True)
        tasks >> GenerateTextRetrievalData(name="examples", llm=_llm(srv), query_type="common")
    result = pipeline.run()
    (row,) = _rows(result)
    assert row["task"] == "find recipes" and {k: row[k] for k in RETRIEVAL} == RETRIEVAL
    assert row["model_name"] == "test-model"
    prompt = row["synthpipe_metadata"]["raw_input_examples"][0]["content"]
    assert "a common query" in prompt and "English" in prompt
    failed = {f["data"]["task"]: f for f in result.failed_rows}
    assert set(failed) == {"find laws", "find x"}
    assert "hard_negative_document" in failed["find laws"]["message"]
    assert "only one" in failed["find laws"]["message"] and "not json at all" in failed["find x"]["message"]
    # structured output was asked for, with the task's schema
    formats = [(r["body"].get("response_format") or {}) for r in srv.state.recent_requests()]
    assert len(formats) == 4 and all(f.get("type") == "json_schema" for f in formats)
    assert "hard_negative_document" in json.dumps(formats[-1])


def test_the_brainstormer_unflattened_keeps_one_list_per_generation(srv):
    with Pipeline(name="embed-brainstorm") as pipeline:  # the server's minimal instance of the schema
        EmbeddingTaskGenerator(name="brainstorm", llm=_llm(srv), category="text-classification", num_generations=2)
    rows = _rows(pipeline.run())
    assert len(rows) == 2 and all(isinstance(r["tasks"], list) and r["tasks"] for r in rows)
    assert all("classification" in r["synthpipe_metadata"]["raw_input_brainstorm"][0]["content"] for r in rows)


def test_text_mode_parses_json_in_prose_and_fences(srv):
    srv.configure(answers=[
        (r"text matching task: pair short", 'Sure!\n```json\n{"input": "hi", "positive_document": "hello"}\n```'),
        (r"text matching task: pair long", 'Here: {"input": "long a", "positive_document": "long b"} done'),
        (r"classification task: sentiment", '{"input_text": "great", "label": "positive", '
                                            '"misleading_label": "negative"}'),
        (r"classification task: broken", '{"input_text": "great", "label": "positive", "misleading'),
    ])
    with Pipeline(name="embed-text") as pipeline:
        short = LoadDataFromDicts(name="short_tasks", data=[{"task": "pair short"}])
        long = LoadDataFromDicts(name="long_tasks", data=[{"task": "pair long"}])
        cls = LoadDataFromDicts(name="cls_tasks", data=[{"task": "sentiment"}, {"task": "broken"}])
        short >> GenerateShortTextMatchingData(name="short", llm=_llm(srv), use_default_structured_output=False)
        long >> GenerateLongTextMatchingData(name="long", llm=_llm(srv), use_default_structured_output=False,
                                             language="German")
        cls >> GenerateTextClassificationData(name="cls", llm=_llm(srv), use_default_structured_output=False,
                                              difficulty="PhD")
    result = pipeline.run()
    assert {(r["input"], r["positive_document"]) for r in _rows(result, "short")} == {("hi", "hello")}
    (long_row,) = _rows(result, "long")
    assert long_row["input"] == "long a" and "German" in long_row["synthpipe_metadata"]["raw_input_long"][0]["content"]
    (cls_row,) = _rows(result, "cls")
    assert (cls_row["label"], cls_row["misleading_label"]) == ("positive", "negative")
    assert "PhD" in cls_row["synthpipe_metadata"]["raw_input_cls"][0]["content"]
    (failed,) = result.failed_rows
    assert failed["data"]["task"] == "broken" and "misleading" in failed["message"]


def test_random_knobs_are_seeded_per_row_and_a_template_can_be_replaced(srv):
    a = GenerateTextRetrievalData(name="a", llm=_llm(srv), seed=3)
    b = GenerateTextRetrievalData(name="b", llm=_llm(srv), seed=3)
    assert a.format_input({"task": "t"}) == b.format_input({"task": "t"})
    custom = GenerateTextClassificationData(name="c", llm=_llm(srv), template="Task {{ task }} at {{ difficulty }}",
                                            difficulty="college")
    assert custom.format_input({"task": "t"})[0]["content"].startswith("Task t at college")
    with pytest.raises(ValueError, match="does not compile"):
        GenerateShortTextMatchingData(name="d", llm=_llm(srv), template="{{ task ")


def test_triplet_and_bitext_generators_start_a_pipeline(srv):
    srv.configure(answers=[(r"translations", json.dumps({"S1": "Hello", "S2": "Bonjour", "S3": "Au revoir"}))])
    with Pipeline(name="embed-gen") as pipeline:
        MonolingualTripletGenerator(name="mono", llm=_llm(srv), num_generations=3, unit="sentence", batch_size=2)
        BitextRetrievalGenerator(name="bitext", llm=_llm(srv), target_language="French",
                                 use_default_structured_output=False)
    result = pipeline.run()
    mono = _rows(result, "mono")
    assert len(mono) == 3 and all(isinstance(r[k], str) and r[k] for r in mono for k in ("S1", "S2", "S3"))
    assert "sentences" in mono[0]["synthpipe_metadata"]["raw_input_mono"][0]["content"]
    (bitext,) = _rows(result, "bitext")
    assert (bitext["S1"], bitext["S2"], bitext["S3"]) == ("Hello", "Bonjour", "Au revoir")


def test_a_generator_with_an_unusable_answer_stops_with_the_raw_text(srv):
    srv.configure(answers=[(r"semantic similarity", '{"S1": "a", "S2": "b"}')])
    with Pipeline(name="embed-gen-bad") as pipeline:
        MonolingualTripletGenerator(name="mono", llm=_llm(srv))
    with pytest.raises(Exception, match="S3") as info:
        pipeline.run()
    assert "mono" in str(info.value) and '{"S1": "a", "S2": "b"}' in str(info.value)


def test_a_missing_task_column_is_refused_before_any_request(srv):
    with Pipeline(name="embed-missing") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "x"}]) >> GenerateShortTextMatchingData(name="short", llm=_llm(srv))
    with pytest.raises(PipelineValidationError, match=r"short.*task|task.*short"):
        pipeline.run()
    assert srv.total_requests == 0


@pytest.mark.timeout(300)
def test_short_text_matching_on_a_tiny_llama_cpp_model(tiny_gguf):
    pytest.importorskip("llama_cpp")
    from synthpipe.models.llamacpp import LlamaCppLLM

    tasks = [{"task": f"match question {i} to its paraphrase"} for i in range(3)]
    with Pipeline(name="embed-tiny") as pipeline:
        LoadDataFromDicts(data=tasks) >> GenerateShortTextMatchingData(
            name="short", llm=LlamaCppLLM(model_path=str(tiny_gguf), n_ctx=1024, n_threads=1))
    result = pipeline.run(parameters={"short": {"llm": {"generation_kwargs": {"max_new_tokens": 120}}}})
    rows = _rows(result) if "default" in result else []
    assert len(rows) + len(result.failed_rows) == len(tasks)
    for row in rows:
        assert isinstance(row["input"], str) and isinstance(row["positive_document"], str)
    for failed in result.failed_rows:  # a random model's JSON with an empty field: kept with the raw text
        assert "raw output" in failed["message"]


@pytest.mark.timeout(300)
def test_generate_embeddings_mean_pools_a_tiny_llamas_last_hidden_states(tiny_llama_dir):
    import numpy as np

    from synthpipe.models.transformers import TransformersLLM
    from synthpipe.steps.tasks import GenerateEmbeddings

    with Pipeline(name="hidden-states") as pipeline:
        strings = LoadDataFromDicts(name="strings", data=[{"text": "a short text"}, {"text": "something else"}])
        chats = LoadDataFromDicts(name="chats", data=[{"text": [{"role": "user", "content": "a short text"}]}])
        strings >> GenerateEmbeddings(name="embed", llm=TransformersLLM(model=str(tiny_llama_dir), device="cpu"))
        chats >> GenerateEmbeddings(name="embed_chat", llm=TransformersLLM(model=str(tiny_llama_dir), device="cpu"))
    result = pipeline.run()
    rows = _rows(result, "embed")
    (chat_row,) = _rows(result, "embed_chat")
    vectors = [np.array(r["embedding"]) for r in (rows[0], chat_row, rows[1])]
    assert all(v.ndim == 1 and v.size > 1 and np.isfinite(v).all() for v in vectors)
    assert np.allclose(vectors[0], vectors[1], atol=1e-5)  # a string is the same as its one-turn chat
    assert not np.allclose(vectors[0], vectors[2])
    assert rows[0]["model_name"] == str(tiny_llama_dir)

    llm = TransformersLLM(model=str(tiny_llama_dir), device="cpu")
    llm.load()
    (state,) = llm.get_last_hidden_states([[{"role": "user", "content": "a short text"}]])
    assert np.allclose(state.mean(axis=0), vectors[0], atol=1e-5)


def test_generate_embeddings_refuses_a_model_without_hidden_states(srv):
    from synthpipe.steps.tasks import GenerateEmbeddings

    with Pipeline(name="hidden-states-remote") as pipeline:
        LoadDataFromDicts(data=[{"text": "x"}]) >> GenerateEmbeddings(name="embed", llm=_llm(srv))
    with pytest.raises(Exception, match="OpenAILLM exposes no hidden states"):
        pipeline.run()
    assert srv.total_requests == 0
