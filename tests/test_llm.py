"""LLM tasks through the engine, against a real OpenAI-compatible HTTP server on 127.0.0.1
(tests/llm_server.py) that injects 429s, 5xx, hangs, dropped connections and bad JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from conftest import python_path
from synthpipe.errors import PipelineValidationError
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, StepResources
from synthpipe.steps.tasks import ChatGeneration, TextGeneration
from usage_check import assert_tally_matches_rows

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]

SECRET = "sk-test-DO-NOT-LEAK-0123456789"




def _llm(server, **kw) -> OpenAILLM:
    kw.setdefault("max_retries", 2)
    kw.setdefault("retry_base_delay", 0.01)
    return OpenAILLM(model="test-model", base_url=server.base_url, api_key=SECRET, **kw)


def _pipeline(server, prompts: list[str], name: str = "llm", batch: int = 8, **llm_kw) -> Pipeline:
    with Pipeline(name=name) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=16)
        load >> TextGeneration(name="gen", llm=_llm(server, **llm_kw), input_batch_size=batch)
    return pipeline


def _rows(distiset) -> list[dict]:
    return distiset["default"]["train"].to_list()


def test_text_generation_writes_generations_in_order_with_metadata(server):
    prompts = [f"question {i}" for i in range(40)]
    result = _pipeline(server, prompts).run()
    rows = _rows(result)
    assert assert_tally_matches_rows(result)["input_tokens"] == 40 * 2  # the usage tally, from the server's counts
    assert [r["instruction"] for r in rows] == prompts
    assert [r["generation"] for r in rows] == [f"echo: {p}" for p in prompts]
    first = rows[0]
    assert first["model_name"] == "test-model"
    meta = first["synthpipe_metadata"]
    assert meta["raw_input_gen"] == [{"role": "user", "content": "question 0"}]
    assert meta["raw_output_gen"] == "echo: question 0"
    assert meta["statistics_gen"] == {"input_tokens": 2, "output_tokens": 3}
    assert server.total_requests == 40


def test_several_choices_in_one_request_count_the_prompt_once(server):
    with Pipeline(name="choices") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": f"question {i}"} for i in range(4)])
        load >> TextGeneration(name="gen", llm=_llm(server), num_generations=2, group_generations=True)
    result = pipeline.run()
    assert server.total_requests == 4  # n=2 in each request
    entry = assert_tally_matches_rows(result)
    assert entry["input_tokens"] == 4 * 2  # a 2-token prompt per request, paid once, not once per choice
    assert entry["output_tokens"] == 4 * (3 + 4)  # "echo: question i" and "echo 1: question i"


@pytest.mark.parametrize("backend", ["OllamaLLM", "ClientvLLM"])
def test_ollama_and_vllm_servers_report_their_usage_into_the_tally(server, backend):
    import synthpipe.models as models

    llm = getattr(models, backend)(model="test-model", base_url=server.base_url, max_retries=1)
    with Pipeline(name=f"usage-{backend}") as pipeline:
        LoadDataFromDicts(data=[{"instruction": f"question {i}"} for i in range(3)]) >> TextGeneration(
            name="gen", llm=llm)
    entry = assert_tally_matches_rows(pipeline.run())
    assert (entry["input_tokens"], entry["output_tokens"]) == (3 * 2, 3 * 3)


def test_requests_flow_across_batches_up_to_the_concurrency_limit(server):
    server.configure(latency=0.2)
    prompts = [f"q{i}" for i in range(96)]
    _pipeline(server, prompts, batch=8, max_concurrency=24).run()
    # 24 requests in flight at once although a batch holds only 8 rows: batches overlap
    assert server.max_in_flight == 24


def test_a_request_that_keeps_failing_fails_only_its_row(server):
    prompts = [f"q{i}" for i in range(20)]
    prompts[5] = "q5 [[500:always]]"
    prompts[12] = "q12 [[400]]"
    result = _pipeline(server, prompts).run()
    assert [r["instruction"] for r in _rows(result)] == [p for i, p in enumerate(prompts) if i not in (5, 12)]
    failed = {e["data"]["instruction"]: e for e in result.failed_rows}
    assert set(failed) == {prompts[5], prompts[12]}
    assert failed[prompts[5]]["error_type"].endswith("RequestFailed") and "HTTP 500" in failed[prompts[5]]["message"]
    assert server.attempts(prompts[5]) == 3  # the first try and 2 retries
    assert server.attempts(prompts[12]) == 1  # a 400 is not retried
    assert failed[prompts[12]]["key"] == 12


def test_429_retry_after_5xx_and_dropped_connections_are_retried(server):
    prompts = ["a [[429:2]]", "b [[503:1]]", "c [[drop:1]]", "d [[502:2]]", "e"]
    result = _pipeline(server, prompts, max_retries=3).run()
    assert result.failed_rows == []
    assert [r["generation"] for r in _rows(result)] == [f"echo: {p}" for p in prompts]
    assert [server.attempts(p) for p in prompts] == [3, 2, 2, 3, 1]


def test_a_hung_request_times_out_and_is_retried_then_fails_its_row(server):
    prompts = ["fine", "stuck [[hang]]", "late [[hang:1]]"]
    result = _pipeline(server, prompts, timeout=0.5, max_retries=1).run()
    assert [r["instruction"] for r in _rows(result)] == ["fine", "late [[hang:1]]"]
    (failed,) = result.failed_rows
    assert failed["data"]["instruction"] == "stuck [[hang]]" and "no answer within 0.5s" in failed["message"]


class Answer(BaseModel):
    title: str
    score: int


def test_structured_output_is_asked_for_and_validated(server):
    prompts = ["one", "two [[badjson]]", "three"]
    with Pipeline(name="structured") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts])
        load >> TextGeneration(name="gen", llm=_llm(server, structured_output={"schema": Answer}))
    result = pipeline.run()
    rows = _rows(result)
    assert [r["instruction"] for r in rows] == ["one", "three"]
    assert all(Answer.model_validate_json(r["generation"]) for r in rows)
    body = server.state.recent_requests()[-1]["body"]
    assert body["response_format"]["type"] == "json_schema"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["title", "score"]
    (failed,) = result.failed_rows
    assert failed["error_type"].endswith("InvalidStructuredOutput") and "not valid JSON" in failed["message"]


def test_generation_kwargs_are_a_runtime_parameter_passed_through(server):
    pipeline = _pipeline(server, ["x"])
    pipeline.run(parameters={"gen": {"llm": {"generation_kwargs": {"temperature": 0.3, "max_new_tokens": 7,
                                                                    "seed": 1}}}})
    body = server.state.recent_requests()[-1]["body"]
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.3, 7, 1)
    with pytest.raises(PipelineValidationError, match=r"step 'gen', llm: parameter 'generation_kwarg' is unknown"):
        pipeline.run(parameters={"gen": {"llm": {"generation_kwarg": {}}}})


def test_the_api_key_reaches_the_server_and_nothing_else(server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(cache))
    prompts = ["fine", "bad [[401]]"]
    result = _pipeline(server, prompts, name="secret").run(log_level="DEBUG")
    assert server.state.recent_requests()[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert len(result.failed_rows) == 1
    for path in cache.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in repr(_llm(server)) and SECRET not in json.dumps(result.failed_rows, default=repr)
    assert "hunter2" not in repr(OpenAILLM(model="m", base_url="http://me:hunter2@127.0.0.1:9/v1", api_key="k"))


def test_a_changed_key_or_concurrency_reuses_stored_results(server):
    prompts = [f"q{i}" for i in range(10)]
    _pipeline(server, prompts, name="reuse").run()
    before = server.total_requests
    with Pipeline(name="reuse") as again:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=16)
        llm = OpenAILLM(model="test-model", base_url=server.base_url, api_key="another-key", max_concurrency=3)
        load >> TextGeneration(name="gen", llm=llm, input_batch_size=8)
    assert len(_rows(again.run())) == 10
    assert server.total_requests == before


def test_failed_requests_are_retried_later_with_retry_failed(server):
    server.configure(fail_first=6, fail_status=429, retry_after=None)
    prompts = [f"q{i}" for i in range(24)]
    pipeline = _pipeline(server, prompts, name="retry-llm", batch=4, max_retries=0, max_concurrency=1)
    first = pipeline.run()
    assert len(first.failed_rows) == 6 and len(_rows(first)) == 18
    retried = pipeline.run(retry_failed=True)
    assert retried.failed_rows == []
    assert [r["instruction"] for r in _rows(retried)] == prompts
    assert server.total_requests == 24 + 6


def test_chat_generation_continues_a_conversation(server):
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    with Pipeline(name="chat") as pipeline:
        LoadDataFromDicts(data=[{"messages": chat}, {"messages": []}]) >> ChatGeneration(name="chat", llm=_llm(server))
    result = pipeline.run()
    assert _rows(result)[0]["generation"] == "echo: hello"
    (failed,) = result.failed_rows
    assert "must end with a user message" in failed["message"]


def test_a_missing_column_is_reported_before_any_request(server):
    with Pipeline(name="missing") as pipeline:
        load = LoadDataFromDicts(data=[{"prompt": "x"}])
        load >> TextGeneration(name="gen", llm=_llm(server), columns=["instruction"])
    with pytest.raises(PipelineValidationError, match="step 'gen' needs column 'instruction'"):
        pipeline.run()
    assert server.total_requests == 0



# -- the response cache ---------------------------------------------------------------------


def test_requests_already_answered_are_not_sent_again_when_only_the_step_changed(server):
    prompts = [f"q{i}" for i in range(12)]
    first = _pipeline(server, prompts, name="cached").run()
    assert server.total_requests == 12
    with Pipeline(name="cached") as changed:  # a step parameter that changes the output, not the prompts
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=16)
        load >> TextGeneration(name="gen", llm=_llm(server), input_batch_size=8, add_raw_output=False)
    again = changed.run()
    assert server.total_requests == 12  # every answer came from the cache
    assert [r["generation"] for r in _rows(again)] == [r["generation"] for r in _rows(first)]
    assert "raw_output_gen" not in _rows(again)[0]["synthpipe_metadata"]
    changed.run(use_cache=False)  # asks afresh
    assert server.total_requests == 24


def test_answers_of_a_batch_cut_short_by_a_kill_are_not_paid_for_twice(server, tmp_path):
    server.configure(latency=0.1)
    env = {**os.environ, "PYTHONPATH": python_path(Path(__file__).parent), "SYNTHPIPE_CACHE_DIR": str(tmp_path),
           "SYNTHPIPE_PROGRESS": "0"}
    program = [sys.executable, str(Path(__file__).parent / "llm_pipeline.py"), server.base_url, "60", "6"]
    proc = subprocess.Popen(program, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while server.total_requests < 30 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()  # SIGKILL mid-batch: the batch itself is not finished, some of its answers are
    proc.communicate(timeout=30)
    answered = server.total_requests
    assert 24 <= answered < 60, answered
    done = subprocess.run(program, env=env, capture_output=True, text=True, timeout=90)
    assert "RUN FINISHED 60" in done.stdout, done.stderr
    # sent twice: only the requests in flight at the kill (at most 6) and those answered in the
    # last FLUSH_SECONDS before it (answers reach the store in small groups: at most 6 more here)
    assert server.total_requests <= 60 + 12, server.total_requests


# -- answers that are not what was asked for -------------------------------------------------


def test_fewer_generations_than_asked_or_no_text_fail_the_row_never_a_silent_none(server):
    prompts = ["fine", "short [[onechoice]]", "filtered [[refuse]]"]
    with Pipeline(name="incomplete") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts])
        load >> TextGeneration(name="gen", llm=_llm(server), num_generations=2, group_generations=True)
    result = pipeline.run()
    rows = _rows(result)
    assert [r["instruction"] for r in rows] == ["fine"] and len(rows[0]["generation"]) == 2
    messages = {e["data"]["instruction"]: e["message"] for e in result.failed_rows}
    assert "asked test-model for 2 generation(s), it returned 1" in messages["short [[onechoice]]"]
    assert "IncompleteAnswer" in {e["error_type"].rsplit(".", 1)[-1] for e in result.failed_rows}
    single = _pipeline(server, ["filtered [[refuse]]", "fine"], name="refused").run()
    assert [r["instruction"] for r in _rows(single)] == ["fine"]
    assert "test-model returned no text" in single.failed_rows[0]["message"]


def test_an_answer_the_task_rejects_is_not_cached_so_a_retry_asks_again(server):
    prompts = ["one", "two [[badjson:1]]", "three"]
    with Pipeline(name="reject") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts])
        load >> TextGeneration(name="gen", llm=_llm(server, structured_output={"schema": Answer}))
    assert len(pipeline.run().failed_rows) == 1
    retried = pipeline.run(retry_failed=True)
    assert retried.failed_rows == [] and [r["instruction"] for r in _rows(retried)] == prompts
    assert server.attempts(prompts[1]) == 2


def test_identical_prompts_in_different_rows_are_different_requests_to_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(tmp_path))
    prompts = ["Invent a persona."] * 10  # sampling ten answers to one prompt
    _pipeline(server, prompts, name="same-prompt").run()
    (responses,) = tmp_path.glob("same-prompt-*/responses/*.jsonl")
    keys = [json.loads(line)["k"] for line in responses.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 10  # one answer per row, not one shared by all


def test_a_hung_batch_times_out_on_time_while_the_worker_finishes_others(server):
    server.configure(latency=0.2)
    prompts = [f"q{i}" + (" [[hang]]" if i == 2 else "") for i in range(60)]
    with Pipeline(name="hung") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=60)
        llm = _llm(server, timeout=600, max_concurrency=8)
        load >> TextGeneration(name="gen", llm=llm, input_batch_size=2, timeout=1.5, max_restarts=0)
    start = time.monotonic()
    result = pipeline.run()
    assert time.monotonic() - start < 20
    failed = {e["data"]["instruction"] for e in result.failed_rows}
    assert "q2 [[hang]]" in failed and len(_rows(result)) >= 56
    assert any("timeout of 1.5s" in e["message"] for e in result.failed_rows)


def test_replicas_share_the_endpoints_concurrency_and_generations_do_not_shrink_it(server):
    server.configure(latency=0.15)
    prompts = [f"q{i}" for i in range(96)]
    with Pipeline(name="replicas") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=32)
        load >> TextGeneration(name="gen", llm=_llm(server, max_concurrency=12), input_batch_size=4,
                               resources=StepResources(replicas=3))
    pipeline.run()
    assert server.max_in_flight <= 12
    server.reset()
    with Pipeline(name="generations") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=32)
        load >> TextGeneration(name="gen", llm=_llm(server, max_concurrency=16), input_batch_size=4,
                               num_generations=3)
    pipeline.run()
    assert server.max_in_flight == 16  # n generations ride in one request


def test_retried_rows_of_a_task_with_several_generations_land_in_order(server):
    prompts = [f"q{i}" + (" [[500:1]]" if i in (3, 15) else "") for i in range(20)]
    with Pipeline(name="expand") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=8)
        load >> TextGeneration(name="gen", llm=_llm(server, max_retries=0), input_batch_size=4, num_generations=2)
    assert len(pipeline.run().failed_rows) == 2
    retried = pipeline.run(retry_failed=True)
    assert [r["instruction"] for r in _rows(retried)] == [p for p in prompts for _ in range(2)]


def test_text_generation_renders_templates_over_columns(server):
    task = TextGeneration(name="t", llm=_llm(server), template="Q: {{ question }} ({{ level }})",
                          columns=["question", "level"], system_prompt="Be brief.")
    assert task.format_input({"question": "why?", "level": 2}) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: why? (2)"}]
    assert task.format_input({"question": "x", "level": 1, "system_prompt": "Row's own."})[0]["content"] == "Row's own."
    plain = TextGeneration(name="p", llm=_llm(server))
    assert plain.format_input({"instruction": 42}) == [{"role": "user", "content": "42"}]
    with pytest.raises(ValueError, match="column 'level' is empty"):
        task.format_input({"question": "x", "level": None})
    with pytest.raises(ValueError, match="template does not compile"):
        TextGeneration(name="bad", llm=_llm(server), template="{{ oops")


def test_a_url_with_credentials_and_an_api_key_is_refused_before_any_request(server):
    from synthpipe.errors import StepFailed

    url = server.base_url.replace("http://", "http://me:hunter2@")
    with Pipeline(name="creds") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "x"}]) >> TextGeneration(
            name="gen", llm=OpenAILLM(model="m", base_url=url, api_key="sk-also"))
    with pytest.raises(StepFailed, match="carries a user and password, and an API key is given too") as info:
        pipeline.run()
    assert "hunter2" not in str(info.value) and server.total_requests == 0
