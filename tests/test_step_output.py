"""A value of the wrong type, or output of the wrong shape, costs at most its own row or
stops the run naming the step, never silently thins the result (issue 10). Each case is a
real script run as a subprocess: its exit code, its message and its rows are checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import python_path

pytestmark = [pytest.mark.timeout(120)]

HEADER = """\
import json
import sys

from synthpipe.pipeline import Pipeline
from synthpipe.steps import GeneratorStep, LoadDataFromDicts, Step, StepInput, step

DATA = [{"a": i} for i in range(10)]
"""

FOOTER = """

if __name__ == "__main__":
    result = pipeline.run()
    rows = result["default"]["train"].to_list()
    print("RESULT " + json.dumps({"rows": rows, "failed": [
        {k: e.get(k) for k in ("step", "error_type", "message", "data")} for e in result.failed_rows]}, default=repr))
"""


def _run(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    script = tmp_path / "shape_pipeline.py"
    script.write_text(HEADER + body + FOOTER)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": python_path(Path(__file__).parent), "SYNTHPIPE_PROGRESS": "0",
             "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache"), **(env or {})},
    )
    result = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    return done, result


# -- values no single column type can hold -----------------------------------------------------


MIXED = """
@step(inputs=["a"], outputs=["b"])
def Mixed(inputs: StepInput):
    for row in inputs:
        row["b"] = 123 if row["a"] in (3, 7) else f"text {row['a']}"
    yield inputs


with Pipeline(name="mixed") as pipeline:
    LoadDataFromDicts(data=DATA, batch_size=4) >> Mixed(name="mixed", input_batch_size=2)
"""


def test_a_value_no_column_type_can_hold_costs_only_its_row_and_a_rerun_returns_the_result(tmp_path):
    done, result = _run(tmp_path, MIXED)
    assert done.returncode == 0, done.stderr
    assert [r["a"] for r in result["rows"]] == [0, 1, 2, 4, 5, 6, 8, 9]  # every good row, in order
    assert all(r["b"] == f"text {r['a']}" for r in result["rows"])
    assert sorted(e["data"]["a"] for e in result["failed"]) == [3, 7]
    for entry in result["failed"]:
        assert entry["step"] == "mixed" and entry["error_type"] == "synthpipe.errors.ColumnTypeClash"
        assert "step 'mixed'" in entry["message"] and "column 'b' holds an int (123)" in entry["message"]
    assert "step 'mixed' produced a row its result column cannot hold" in done.stderr
    again, second = _run(tmp_path, MIXED)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stderr
    assert second["rows"] == result["rows"] and len(second["failed"]) == 2


def test_an_int_instruction_fails_its_row_before_any_request(tmp_path, server):
    body = f"""
from synthpipe.models import OpenAILLM
from synthpipe.steps.tasks import TextGeneration

with Pipeline(name="textgen-types") as pipeline:
    data = [{{"instruction": f"question {{i}}"}} for i in range(8)]
    data[5] = {{"instruction": 123}}
    llm = OpenAILLM(model="test-model", base_url={server.base_url!r}, api_key="sk-x", max_retries=0)
    LoadDataFromDicts(data=data, batch_size=4) >> TextGeneration(name="textgen", llm=llm, input_batch_size=4)
"""
    done, result = _run(tmp_path, body)
    assert done.returncode == 0, done.stderr
    assert server.total_requests == 7  # none for the bad row
    assert [r["instruction"] for r in result["rows"]] == [f"question {i}" for i in range(8) if i != 5]
    [failed] = result["failed"]
    assert failed["step"] == "textgen" and failed["error_type"] == "synthpipe.steps.tasks.base.InputTypeError"
    assert "step 'textgen', row 5: column 'instruction' holds an int (123), not a str" in failed["message"]
    again, second = _run(tmp_path, body)
    assert again.returncode == 0 and second["rows"] == result["rows"], again.stderr


# -- output of the wrong shape ------------------------------------------------------------------


def _step(body: str, name: str = "shaped", **pipe: str) -> str:
    return body + f"""

with Pipeline(name="shape") as pipeline:
    LoadDataFromDicts(data=DATA, batch_size=5) >> Shaped(name="{name}", input_batch_size=5)
"""


def test_a_returned_list_of_rows_is_taken_as_the_rows(tmp_path):
    done, result = _run(tmp_path, _step("""
class Shaped(Step):
    @property
    def outputs(self):
        return ["b"]

    def process(self, inputs):
        return [{**row, "b": row["a"] * 2} for row in inputs]
"""))
    assert done.returncode == 0, done.stderr
    assert [r["b"] for r in result["rows"]] == [2 * i for i in range(10)]


def test_a_generator_yielding_rows_alone_ends_when_it_ends(tmp_path):
    done, result = _run(tmp_path, """
class Rows(GeneratorStep):
    @property
    def outputs(self):
        return ["a"]

    def process(self, offset=0):
        for start in range(0, 10, 3):
            yield [{"a": i} for i in range(start, min(start + 3, 10))]


with Pipeline(name="bare-rows") as pipeline:
    Rows(name="rows")
""")
    assert done.returncode == 0, done.stderr
    assert [r["a"] for r in result["rows"]] == list(range(10))


WRONG_SHAPES = {
    "one-dict": ("""
@step(inputs=["a"], outputs=["b"])
def Shaped(inputs: StepInput):
    for row in inputs:
        yield {**row, "b": 1}
""", "process() yielded one row (a dict) as its output number 0; a step yields lists of rows"),
    "missing-column": ("""
@step(inputs=["a"], outputs=["b", "c"])
def Shaped(inputs: StepInput):
    yield [{**row, "b": 1} for row in inputs]
""", "declares output column(s) 'c' but wrote none in this batch's 5 row(s)"),
    "int-key": ("""
@step(inputs=["a"], outputs=["b"])
def Shaped(inputs: StepInput):
    yield [{**row, "b": 1, 7: "seven"} for row in inputs]
""", "output row 0 has a column named 7 (an int); column names must be strings"),
    "returns-none": ("""
class Shaped(Step):
    def process(self, inputs):
        for row in inputs:
            row["b"] = 1
""", "process() returned None; it must yield lists of rows"),
}


@pytest.mark.parametrize("case", list(WRONG_SHAPES))
def test_a_wrong_shape_stops_the_run_naming_step_batch_and_what_was_expected(tmp_path, case):
    body, expected = WRONG_SHAPES[case]
    done, _ = _run(tmp_path, _step(body))
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "StepFailed: step 'shaped', replica 0, batch 0, rows 0–4 failed: " in last, done.stderr
    assert "synthpipe.errors.StepOutputError" in last and expected in last
    assert "'str' object has no attribute" not in done.stderr and "expected bytes" not in done.stderr.lower()


def test_a_generator_yielding_a_dict_stops_naming_the_step(tmp_path):
    done, _ = _run(tmp_path, """
class Rows(GeneratorStep):
    def process(self, offset=0):
        yield {"a": 1}, True


with Pipeline(name="gen-dict") as pipeline:
    Rows(name="rows")
""")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "step 'rows'" in last and "generator step 'rows': process() yielded a tuple as its batch number 0" in last


def test_a_wrong_shape_in_a_skipping_step_keeps_the_other_batches(tmp_path):
    """One batch of the wrong shape, under on_error='skip': its rows go to the ledger named by
    the step; every other batch's rows are in the result."""
    done, result = _run(tmp_path, """
@step(inputs=["a"], outputs=["b"])
def Shaped(inputs: StepInput):
    if inputs[0]["a"] == 5:
        yield inputs[0]
    else:
        yield [{**row, "b": 1} for row in inputs]


with Pipeline(name="shape-skip") as pipeline:
    LoadDataFromDicts(data=DATA, batch_size=5) >> Shaped(name="shaped", input_batch_size=5, on_error="skip",
                                                          max_failure_rate=None)
""")
    assert done.returncode == 0, done.stderr
    assert [r["a"] for r in result["rows"]] == [0, 1, 2, 3, 4]
    assert sorted(e["data"]["a"] for e in result["failed"]) == [5, 6, 7, 8, 9]
    assert all("step 'shaped': process() yielded one row" in e["message"] for e in result["failed"])


SLOW_MIXED = """
import time


@step(inputs=["a"], outputs=["b"])
def Mixed(inputs: StepInput):
    for row in inputs:
        row["b"] = 123 if row["a"] in (3, 7) else f"text {row['a']}"
    time.sleep(0.3)
    print("DONE", ",".join(str(row["a"]) for row in inputs), flush=True)
    yield inputs


with Pipeline(name="mixed-resume", stop_grace_seconds=30) as pipeline:
    LoadDataFromDicts(data=DATA, batch_size=2) >> Mixed(name="mixed", input_batch_size=2)
"""


def test_a_set_aside_row_is_kept_once_when_an_interrupted_run_resumes(tmp_path):
    script = tmp_path / "shape_pipeline.py"
    script.write_text(HEADER + SLOW_MIXED + FOOTER)
    env = {**os.environ, "PYTHONPATH": python_path(Path(__file__).parent), "SYNTHPIPE_PROGRESS": "0",
           "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("DONE") and "3" in line.split()[1].split(","):
                break
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    done, result = _run(tmp_path, SLOW_MIXED)
    assert done.returncode == 0, done.stderr
    assert [r["a"] for r in result["rows"]] == [0, 1, 2, 4, 5, 6, 8, 9]
    assert sorted(e["data"]["a"] for e in result["failed"]) == [3, 7]


def test_retry_failed_leaves_set_aside_rows_alone(tmp_path):
    _run(tmp_path, MIXED)
    script = tmp_path / "retry.py"
    script.write_text(HEADER + MIXED + FOOTER.replace("pipeline.run()", "pipeline.run(retry_failed=True)"))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": python_path(Path(__file__).parent), "SYNTHPIPE_PROGRESS": "0",
             "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr
    assert "no failed rows to retry" in done.stderr
    result = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    assert len(result["rows"]) == 8 and len(result["failed"]) == 2
