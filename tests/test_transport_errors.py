"""Each way a request to an LLM endpoint can fail gets one plain sentence, with how often it was
tried, in the failed-rows ledger, in pipeline.log and in the end-of-run summary. Every case is
produced by a real server on 127.0.0.1 (tests/llm_server.py, or a port with nothing behind it)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from llm_server import TRUNCATE_AT
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]


def _run(base_url: str, prompts: list[str], name: str, tmp_path: Path, **llm_kw):
    llm = OpenAILLM(model="test-model", base_url=base_url, api_key="sk-test", max_retries=1,
                    retry_base_delay=0.01, **llm_kw)
    with Pipeline(name=name, cache_dir=tmp_path / "cache") as pipeline:
        LoadDataFromDicts(data=[{"instruction": p} for p in prompts]) >> TextGeneration(name="gen", llm=llm)
    return pipeline.run(use_cache=False)


def _everywhere(distiset, captured: str, prompt: str, sentence: str) -> None:
    """The sentence (a regex) is the ledger's message for the row, and is in the log and the summary."""
    ledger = {e["data"]["instruction"]: e["message"] for e in distiset.failed_rows}
    assert re.search(sentence, ledger[prompt]), ledger[prompt]
    log = (Path(distiset.run_dir) / "pipeline.log").read_text()
    assert re.search(sentence, log), log
    summary = captured.split("row(s) failed; all are in", 1)[1]  # the end-of-run summary
    assert re.search(sentence, summary), summary


def test_each_failure_of_an_answer_reads_as_what_happened(server, tmp_path, capfd):
    prompts = ["fine", "down [[503:always]]", "slow [[hang]]", "cut [[truncate]]", "proxy [[notjson]]"]
    distiset = _run(server.base_url, prompts, "transport", tmp_path, timeout=0.5)
    captured = capfd.readouterr().err
    assert [r["generation"] for r in distiset["default"]["train"].to_list()] == ["echo: fine"]
    _everywhere(distiset, captured, prompts[1],
                r"HTTP 503 from the server: injected fault 503 \(attempt 2\) for prompt .*\(overloaded\) "
                r"\(2 attempts\)")
    _everywhere(distiset, captured, prompts[2], r"no answer within 0\.5s \(2 attempts\)")
    _everywhere(distiset, captured, prompts[3],
                rf"the connection closed before the answer was complete \(HTTP 200; received {TRUNCATE_AT} "
                r"of [0-9,]+ bytes\) \(2 attempts\)")
    _everywhere(distiset, captured, prompts[4],
                r"HTTP 200, but the body is not valid JSON \(\d+ bytes, starting '<html><body>502 Bad Gateway"
                r".*\(2 attempts\)")
    for message in (e["message"] for e in distiset.failed_rows):  # nothing of the HTTP client's insides
        assert "ClientPayloadError" not in message and "ContentLengthError" not in message, message


def test_a_refused_connection_says_so(tmp_path, capfd):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    distiset = _run(f"http://127.0.0.1:{port}/v1", ["nobody home"], "refused", tmp_path)
    _everywhere(distiset, capfd.readouterr().err, "nobody home",
                rf"connection refused by 127\.0\.0\.1:{port} \(nothing listening there\?\) \(2 attempts\)")


def test_an_answer_that_does_not_fit_the_schema_says_so(server, tmp_path, capfd):
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    server.configure(answers=[(r"off schema", '{"wrong": 1}')])
    try:
        distiset = _run(server.base_url, ["on schema", "off schema"], "schema", tmp_path,
                        structured_output={"schema": schema})
    finally:
        server.configure(answers=[])
    _everywhere(distiset, capfd.readouterr().err, "off schema",
                r"the output does not match the schema: 'answer' is a required property; raw output: "
                r"'\{\"wrong\": 1\}' \(generation 0; 1 attempt")


def _anthropic_failure(base_url: str, prompt: str) -> str:
    import asyncio

    pytest.importorskip("anthropic")
    from synthpipe.models.anthropic import AnthropicLLM

    llm = AnthropicLLM(model="claude-test", api_key="sk-ant-test", base_url=base_url, max_retries=1, timeout=5)
    llm.load()

    async def ask() -> BaseException:
        try:
            await llm.agenerate([{"role": "user", "content": prompt}])
        except Exception as exc:
            return exc
        raise AssertionError("the request did not fail")

    try:
        return str(asyncio.run(ask()))
    finally:
        llm.unload()


def test_the_sdk_backends_say_the_same(server):
    """The Anthropic SDK (httpx) reaches the same sentences for a refused and a cut connection."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused = _anthropic_failure(f"http://127.0.0.1:{port}", "nobody home")
    assert re.search(rf"connection refused by 127\.0\.0\.1:{port} \(nothing listening there\?\) \(2 attempt", refused)
    cut = _anthropic_failure(server.url, "cut [[truncate]]")
    assert re.search(rf"the connection closed before the answer was complete \(received {TRUNCATE_AT} of "
                     r"[0-9,]+ bytes\) \(2 attempt", cut), cut
