"""The SDK-based LLM backends (Anthropic, Hugging Face inference, LiteLLM) through the engine,
against the real HTTP test server on 127.0.0.1 (tests/llm_server.py): Anthropic's Messages route
for ``AnthropicLLM``, the OpenAI route for the other two. Each backend's tests are skipped when
its SDK is not installed."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from synthpipe.models.base import LLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration
from usage_check import assert_tally_matches_rows

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]

# LiteLLM must not fetch its model cost map from the internet (load() sets this too)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

SECRET = "sk-provider-DO-NOT-LEAK-0123456789"




@dataclasses.dataclass
class Backend:
    name: str
    sdk: str
    make: Callable[..., LLM]
    path: str  # the route its requests go to
    model: str  # what the rows' model_name column says


def _anthropic(server: Any, **kw: Any) -> LLM:
    from synthpipe.models.anthropic import AnthropicLLM

    kw.setdefault("max_retries", 2)
    kw.setdefault("base_url", server.url)
    return AnthropicLLM(model="claude-test", api_key=SECRET, **kw)


def _huggingface(server: Any, **kw: Any) -> LLM:
    from synthpipe.models.huggingface import InferenceEndpointsLLM

    kw.setdefault("max_retries", 2)
    kw.setdefault("retry_base_delay", 0.01)
    kw.setdefault("base_url", server.url)
    return InferenceEndpointsLLM(model_id="test-model", api_key=SECRET, **kw)


def _litellm(server: Any, **kw: Any) -> LLM:
    from synthpipe.models.litellm import LiteLLM

    kw.setdefault("num_retries", 2)
    kw.setdefault("api_base", server.base_url)
    return LiteLLM(model="openai/test-model", api_key=SECRET, **kw)


BACKENDS = {
    "anthropic": Backend("anthropic", "anthropic", _anthropic, "/v1/messages", "claude-test"),
    "huggingface": Backend("huggingface", "huggingface_hub", _huggingface, "/v1/chat/completions", "test-model"),
    "litellm": Backend("litellm", "litellm", _litellm, "/v1/chat/completions", "openai/test-model"),
}


@pytest.fixture(params=list(BACKENDS))
def backend(request) -> Backend:
    spec = BACKENDS[request.param]
    pytest.importorskip(spec.sdk, reason=f"the {spec.sdk} SDK is not installed")
    return spec


def _pipeline(server, backend: Backend, prompts: list[str], name: str, **llm_kw) -> Pipeline:
    with Pipeline(name=f"{name}-{backend.name}") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=8)
        load >> TextGeneration(name="gen", llm=backend.make(server, **llm_kw), input_batch_size=4)
    return pipeline


def _rows(distiset) -> list[dict]:
    return distiset["default"]["train"].to_list()


def _chat(text: str, system: str | None = None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


# ---------------------------------------------------------------- through the engine


def _retries(backend: Backend, n: int) -> dict[str, int]:
    return {"num_retries" if backend.name == "litellm" else "max_retries": n}


# One pipeline run per check group: a LiteLLM worker alone spends ~3 s importing litellm.


def test_generations_in_order_with_token_counts_and_429s_retried_after_retry_after(server, backend):
    prompts = [f"question number {i}" for i in range(10)] + ["a [[429:2]]", "b [[503:1]]"]
    result = _pipeline(server, backend, prompts, "e2e").run()
    assert result.failed_rows == []
    rows = _rows(result)
    assert [r["instruction"] for r in rows] == prompts
    assert [r["generation"] for r in rows] == [f"echo: {p}" for p in prompts]
    assert {r["model_name"] for r in rows} == {backend.model}
    assert rows[0]["synthpipe_metadata"]["statistics_gen"] == {"input_tokens": 3, "output_tokens": 4}
    assert assert_tally_matches_rows(result)["requests"] == len(prompts)  # retries are not paid answers
    assert [server.attempts(p) for p in prompts[-3:]] == [1, 3, 2]
    assert server.stats()["statuses"]["429"] == 2
    assert server.total_requests == 10 + 3 + 2
    assert {r["path"] for r in server.requests} == {backend.path}


def test_a_request_failing_for_good_fails_only_its_row_and_the_key_stays_secret(server, backend, tmp_path,
                                                                                   monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(cache))
    prompts = [f"q{i}" for i in range(8)]
    prompts[2] = "q2 [[500:always]]"
    prompts[5] = "q5 [[400]]"
    prompts[6] = "q6 [[401]]"
    result = _pipeline(server, backend, prompts, "fail", max_concurrency=2, **_retries(backend, 1)).run(
        log_level="DEBUG")
    assert [r["instruction"] for r in _rows(result)] == [p for i, p in enumerate(prompts) if i not in (2, 5, 6)]
    failed = {e["data"]["instruction"]: e for e in result.failed_rows}
    assert set(failed) == {prompts[2], prompts[5], prompts[6]}
    assert failed[prompts[2]]["error_type"].endswith("RequestFailed") and "HTTP 500" in failed[prompts[2]]["message"]
    assert "HTTP 400" in failed[prompts[5]]["message"] and "HTTP 401" in failed[prompts[6]]["message"]
    assert failed[prompts[5]]["key"] == 5
    assert server.attempts(prompts[2]) == 2  # the first try and 1 retry
    assert server.attempts(prompts[5]) == server.attempts(prompts[6]) == 1  # a 4xx is not retried
    # the key: sent to the server, and nowhere else
    for request in server.requests:
        assert any(SECRET in value for value in request["headers"].values()), request["headers"]
    files = [path for path in cache.rglob("*") if path.is_file()]
    assert any(path.name == "pipeline.log" for path in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    llm = backend.make(server)
    assert SECRET not in repr(llm) and SECRET not in json.dumps(result.failed_rows, default=repr)
    assert "api_key" not in llm.signature_fields()


class Answer(BaseModel):
    title: str
    score: int


def test_structured_output_is_asked_for_natively_and_validated(server, backend):
    prompts = ["one", "two [[badjson]]", "three"]
    result = _pipeline(server, backend, prompts, "structured", structured_output={"schema": Answer}).run()
    rows = _rows(result)
    assert [r["instruction"] for r in rows] == ["one", "three"]
    assert all(Answer.model_validate_json(r["generation"]) for r in rows)
    (failed,) = result.failed_rows
    assert failed["data"]["instruction"] == "two [[badjson]]"
    assert failed["error_type"].endswith("InvalidStructuredOutput")
    body = server.requests[-1]["body"]
    if backend.name == "anthropic":  # a forced tool whose input is the schema
        (tool,) = body["tools"]
        assert tool["input_schema"]["required"] == ["title", "score"]
        assert body["tool_choice"]["type"] == "tool" and body["tool_choice"]["name"] == tool["name"]
    elif backend.name == "huggingface":  # TGI's grammar, as huggingface_hub sends it to a URL
        assert body["response_format"]["type"] == "json_object"
        assert body["response_format"]["value"]["required"] == ["title", "score"]
    else:
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"]["required"] == ["title", "score"]


# ---------------------------------------------------------------- in process


def test_the_sdks_are_imported_only_when_a_model_loads():
    code = (
        "import sys, synthpipe, synthpipe.models, synthpipe.steps.tasks\n"
        "import synthpipe.models.anthropic, synthpipe.models.huggingface, synthpipe.models.litellm\n"
        "print(sorted(m for m in ('anthropic', 'litellm', 'openai') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_changed_key_or_limits_keep_the_signature_and_copies_drop_clients(server, backend):
    llm = backend.make(server)
    other = backend.make(server, max_concurrency=3, timeout=5.0, **_retries(backend, 0))
    other.api_key = "another-key"
    assert llm.signature_fields() == other.signature_fields()
    assert llm.generate([_chat("hi")])[0]["generations"] == ["echo: hi"]
    copy = pickle.loads(pickle.dumps(llm))  # after use: the client stays behind
    assert copy.generate([_chat("again")])[0]["generations"] == ["echo: again"]


def test_anthropic_request_shape(server):
    pytest.importorskip("anthropic")
    llm = _anthropic(server)
    out = llm.generate([_chat("hello there", system="be brief")], num_generations=2, temperature=0.3, top_k=5)
    assert out[0]["generations"] == ["echo: hello there"] * 2
    assert out[0]["statistics"] == {"input_tokens": [4, 4], "output_tokens": [3, 3]}
    assert server.total_requests == 2  # one request per generation
    request = server.requests[-1]
    body = request["body"]
    assert body["system"] == "be brief" and body["messages"] == [{"role": "user", "content": "hello there"}]
    assert (body["max_tokens"], body["temperature"], body["top_k"]) == (128, 0.3, 5)
    assert "anthropic-version" in {k.lower() for k in request["headers"]}
    (short,) = llm.generate([_chat("one two three four")], max_new_tokens=2)
    assert short["generations"] == ["echo: one"] and server.requests[-1]["body"]["max_tokens"] == 2


def test_anthropic_structured_output_that_is_not_an_object_is_wrapped(server):
    pytest.importorskip("anthropic")
    llm = _anthropic(server, structured_output={"type": "array", "items": {"type": "string"}, "minItems": 2})
    (out,) = llm.generate([_chat("list")])
    assert json.loads(out["generations"][0]) == ["echo: list", "echo: list"]
    schema = server.requests[-1]["body"]["tools"][0]["input_schema"]
    assert schema["type"] == "object" and schema["properties"]["value"]["type"] == "array"


def test_anthropic_overloaded_529_is_retried(server):
    pytest.importorskip("anthropic")
    (out,) = _anthropic(server).generate([_chat("busy [[529:1]]")])
    assert out["generations"] == ["echo: busy [[529:1]]"] and server.attempts("busy [[529:1]]") == 2


def test_hf_posts_to_the_base_url_chat_route_and_retries_timeouts(server):
    pytest.importorskip("huggingface_hub")
    llm = _huggingface(server, timeout=0.3, max_retries=1)
    out = llm.generate([_chat("x")], num_generations=2, max_new_tokens=4, stop_sequences=["\n"], top_k=3)
    assert out[0]["generations"] == ["echo: x"] * 2 and server.total_requests == 2
    body = server.requests[-1]["body"]
    assert (body["model"], body["max_tokens"], body["stop"], body["top_k"]) == ("test-model", 4, ["\n"], 3)
    assert _huggingface(server, base_url=server.base_url).generate([_chat("y")])[0]["generations"] == ["echo: y"]
    assert {r["path"] for r in server.requests} == {"/v1/chat/completions"}
    (late, stuck) = asyncio.run(llm.agenerate_batch([_chat("late [[hang:1]]"), _chat("stuck [[hang]]")]))
    assert late["generations"] == ["echo: late [[hang:1]]"]
    assert type(stuck).__name__ == "RequestFailed" and stuck.kind == "timeout" and stuck.attempts == 2
    with pytest.raises(ValueError, match="base_url, endpoint_name or model_id"):
        type(llm)().load()
    with pytest.raises(ValueError, match="not both"):
        type(llm)(base_url=server.url, endpoint_name="e")


def test_litellm_asks_for_n_choices_in_one_request(server):
    pytest.importorskip("litellm")
    (out,) = _litellm(server).generate([_chat("many words here")], num_generations=2)
    assert out["generations"] == ["echo: many words here", "echo 1: many words here"]
    assert out["statistics"]["input_tokens"] == [2, 1]  # one prompt of 3 tokens, paid once, shared out
    assert server.total_requests == 1 and server.requests[-1]["body"]["n"] == 2
