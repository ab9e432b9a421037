"""APIGen in real pipelines: the generator and semantic checker against the OpenAI-compatible
test server (text and structured, malformed answers), the execution checker running the calls
in child processes (a hang and a crash fail only their rows)."""

from __future__ import annotations

import json
import textwrap

import pytest

from synthpipe.errors import PipelineValidationError
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import APIGenExecutionChecker, APIGenGenerator, APIGenSemanticChecker

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]

LIBRARY = textwrap.dedent('''
    import sys

    def add(a, b):
        return a + b

    def boom(x):
        raise ValueError(f"bad x: {x}")

    def slow():
        import time
        time.sleep(120)

    def spin():
        while True:
            pass

    def crash():
        import os, signal
        os.kill(os.getpid(), signal.SIGSEGV)

    def shell(cmd):
        import subprocess
        return subprocess.run(cmd, shell=True)

    def isolated():
        print("noise on stdout")
        return "synthpipe" in sys.modules or any("synthpipe" in p for p in sys.path)
''')


@pytest.fixture
def srv(server):
    yield server
    server.configure(answers=[], responder=None)


@pytest.fixture
def libpath(tmp_path):
    path = tmp_path / "toolbox.py"
    path.write_text(LIBRARY)
    return path


def _llm(server) -> OpenAILLM:
    return OpenAILLM(model="test-model", base_url=server.base_url, api_key="k", max_retries=1, retry_base_delay=0.01)


def _rows(distiset, leaf="default") -> list[dict]:
    return distiset[leaf]["train"].to_list()


def _call(name, **arguments) -> str:
    return json.dumps([{"name": name, "arguments": arguments}])


@pytest.mark.timeout(180)
def test_calls_run_in_a_child_and_a_hang_or_a_crash_fails_only_its_row(libpath):
    data = [{"id": "add", "answers": _call("add", a=2, b=3)},
            {"id": "boom", "answers": _call("boom", x=7)},
            {"id": "slow", "answers": _call("slow")},
            {"id": "spin", "answers": _call("spin")},
            {"id": "crash", "answers": _call("crash")},
            {"id": "missing", "answers": _call("nope")},
            {"id": "shell", "answers": _call("shell", cmd="echo hi")},
            {"id": "isolated", "answers": _call("isolated")},
            {"id": "two", "answers": json.dumps([{"name": "add", "arguments": {"a": 1, "b": 1}},
                                                 {"name": "boom", "arguments": {"x": 0}}])},
            {"id": "empty", "answers": None}]
    with Pipeline(name="apigen-exec") as pipeline:
        LoadDataFromDicts(data=data) >> APIGenExecutionChecker(name="exec", libpath=str(libpath),
                                                                  execution_timeout=3.0)
    result = pipeline.run()
    rows = {r["id"]: r for r in _rows(result)}
    assert rows["add"]["keep_row_after_execution_check"] is True and rows["add"]["execution_result"] == ["5"]
    assert rows["boom"]["keep_row_after_execution_check"] is False
    assert rows["boom"]["execution_result"] == ["ValueError: bad x: 7"]
    assert rows["missing"]["execution_result"] == ["Function 'nope' not found."]
    assert "looks unsafe" in rows["shell"]["execution_result"][0]
    assert rows["isolated"]["execution_result"] == ["False"] and rows["isolated"]["keep_row_after_execution_check"]
    assert rows["two"]["execution_result"] == ["2", "ValueError: bad x: 0"]
    assert rows["two"]["keep_row_after_execution_check"] is False
    assert rows["empty"]["execution_result"] == ["No answers were provided."]
    failed = {f["data"]["id"]: f["message"] for f in result.failed_rows}
    assert set(failed) == {"slow", "spin", "crash"}
    assert "'slow' ran past the time limit of 3.0s" in failed["slow"]
    assert "'spin'" in failed["spin"] and ("time limit" in failed["spin"] or "died" in failed["spin"])
    assert "'crash' died with signal SIGSEGV" in failed["crash"]


def test_the_library_must_exist_and_answers_must_be_there(tmp_path, libpath):
    with Pipeline(name="apigen-nolib") as pipeline:
        LoadDataFromDicts(data=[{"answers": "[]"}]) >> APIGenExecutionChecker(name="exec",
                                                                              libpath=str(tmp_path / "no.py"))
    with pytest.raises(Exception, match="libpath"):
        pipeline.run()
    with Pipeline(name="apigen-nocol") as pipeline:
        LoadDataFromDicts(data=[{"query": "x"}]) >> APIGenExecutionChecker(name="exec", libpath=str(libpath))
    with pytest.raises(PipelineValidationError, match="answers"):
        pipeline.run()


GOOD_PAIRS = [{"query": "What is 2 plus 3?", "answers": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}]


def test_generate_execute_and_judge_in_one_pipeline_text_mode(srv, libpath):
    srv.configure(answers=[
        (r"Calls:.*add.*Results.*5", json.dumps({"thought": "adds the two numbers", "passes": "yes"})),
        (r"Calls:.*boom", "I think it is fine"),  # no JSON: the row fails
        (r"function `add`", "Here you go:\n```json\n" + json.dumps(GOOD_PAIRS) + "\n```"),
        (r"function `boom`", json.dumps([{"query": "Break with 1", "answers": [{"name": "boom",
                                                                                "arguments": {"x": 1}}]}])),
        (r"function `broken`", '[{"query": "no answers here"}]'),
    ])
    examples = 'QUERY:\nWhat is 1 plus 1?\nANSWER:\n[{"name": "add", "arguments": {"a": 1, "b": 1}}]'
    data = [{"examples": examples, "func_name": name, "func_desc": f"{name} does things"}
            for name in ("add", "boom", "broken")]
    with Pipeline(name="apigen-text") as pipeline:
        gen = APIGenGenerator(name="gen", llm=_llm(srv), number=[1, 2])
        check = APIGenExecutionChecker(name="exec", libpath=str(libpath))
        judge = APIGenSemanticChecker(name="judge", llm=_llm(srv), exclude_failed_execution=False)
        LoadDataFromDicts(data=data) >> gen >> check >> judge
    result = pipeline.run()
    (row,) = _rows(result)
    assert row["func_name"] == "add" and row["query"] == "What is 2 plus 3?"
    assert json.loads(row["answers"]) == GOOD_PAIRS[0]["answers"]
    assert row["execution_result"] == ["5"] and row["keep_row_after_semantic_check"] is True
    assert row["thought"] == "adds the two numbers"
    prompt = row["synthpipe_metadata"]["raw_input_gen"][1]["content"]
    assert "QUERY:\nWhat is 1 plus 1?" in prompt and '"query"' in prompt  # the text format was asked for
    failed = {(f["step"], f["data"]["func_name"]): f["message"] for f in result.failed_rows}
    assert set(failed) == {("gen", "broken"), ("judge", "boom")}
    assert "no answers here" in failed[("gen", "broken")] and "I think it is fine" in failed[("judge", "boom")]


def test_structured_mode_and_rows_that_failed_execution_are_not_judged(srv):
    srv.configure(answers=[(r"Query:\nfine", json.dumps({"thought": "ok", "passes": "no"})),
                           (r"Query:\nweird", json.dumps({"thought": "ok", "passes": "maybe"}))])
    data = [{"func_desc": "d", "query": q, "answers": _call("add", a=1, b=2), "execution_result": ["3"],
             "keep_row_after_execution_check": keep} for q, keep in (("fine", True), ("weird", True), ("bad", False))]
    with Pipeline(name="apigen-structured") as pipeline:
        load = LoadDataFromDicts(name="pairs", data=data)
        load >> APIGenSemanticChecker(name="judge", llm=_llm(srv), use_default_structured_output=True)
        gen_data = [{"examples": "e", "func_name": "add", "func_desc": "adds"}]
        LoadDataFromDicts(name="funcs", data=gen_data) >> APIGenGenerator(
            name="gen", llm=_llm(srv), use_default_structured_output=True, use_tools=False)
    result = pipeline.run()
    judged = {r["query"]: r for r in _rows(result, "judge")}
    assert judged["fine"]["keep_row_after_semantic_check"] is False and judged["fine"]["thought"] == "ok"
    assert judged["bad"]["thought"] is None and judged["bad"]["keep_row_after_semantic_check"] is False
    (failed,) = result.failed_rows
    assert failed["data"]["query"] == "weird" and "maybe" in failed["message"]
    (gen_row,) = _rows(result, "gen")  # the server's minimal instance of the pairs schema
    assert isinstance(gen_row["query"], str) and json.loads(gen_row["answers"])[0]["name"]
    sent = [r["body"] for r in srv.state.recent_requests()]
    assert len(sent) == 3 and all(b["response_format"]["type"] == "json_schema" for b in sent)
    assert not any("Query:\nbad" in json.dumps(b) for b in sent)
