"""What the user sees when a step fails: the original error, where it happened, no hang,
no process left behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import python_path
from steps_lib import Explode, FailingGenerator, FailingGlobal, LockError, Measure, Misbehave, NeedsTwoArgs, rows
from synthpipe.errors import RemoteError, RemoteTraceback, StepFailed, WorkerDied
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leftover_workers")]

RUN_BOUND_S = 20.0  # generous for a loaded 2-core CI machine; a hang is 60 s (timeout)


def _run_failing(pipeline: Pipeline) -> StepFailed:
    start = time.monotonic()
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert time.monotonic() - start < RUN_BOUND_S
    return info.value


def _misbehaving(mode: str, n: int = 20, **kwargs) -> Pipeline:
    with Pipeline(name=f"misbehave-{mode}") as pipeline:
        load = LoadDataFromDicts(data=rows(n), batch_size=5)
        load >> Misbehave(name="bad", mode=mode, input_batch_size=2, **kwargs) >> Measure()
    return pipeline


def test_raise_in_process_shows_original_error_and_location():
    with Pipeline(name="explode") as pipeline:
        load = LoadDataFromDicts(data=rows(30), batch_size=10)
        load >> Explode(name="explode", bad="q7", input_batch_size=4)
    err = _run_failing(pipeline)
    assert err.step == "explode"
    assert "batch 1" in str(err) and "rows 4–7" in str(err)
    assert "ValueError: boom at row q7" in str(err)
    cause = err.__cause__
    assert type(cause) is ValueError and str(cause) == "boom at row q7"
    assert isinstance(cause.__cause__, RemoteTraceback)
    text = cause.__cause__.text
    assert "steps_lib.py" in text and 'raise ValueError(f"boom at row' in text
    # the user's frames come first: the engine's own frames are trimmed away
    assert "synthpipe/runtime/worker.py" not in text


def test_exception_holding_a_lock_becomes_a_faithful_stand_in():
    err = _run_failing(_misbehaving("lock"))
    cause = err.__cause__
    assert isinstance(cause, RemoteError) and not isinstance(cause, LockError)
    assert type(cause).__name__ == "LockError"
    assert cause.type_name == "steps_lib.LockError"
    assert "lock holder failed" in str(cause)
    assert 'raise LockError("lock holder failed")' in cause.__cause__.text
    assert "steps_lib.LockError: lock holder failed" in str(err)


def test_exception_that_cannot_be_rebuilt_becomes_a_stand_in():
    err = _run_failing(_misbehaving("two_args"))
    cause = err.__cause__
    assert isinstance(cause, RemoteError) and not isinstance(cause, NeedsTwoArgs)
    assert type(cause).__qualname__ == "NeedsTwoArgs"
    assert "code 42: custom init" in str(cause)
    assert 'raise NeedsTwoArgs(42, "custom init")' in cause.__cause__.text


def test_exception_in_load_stops_the_run():
    err = _run_failing(_misbehaving("load"))
    assert err.record.phase == "load"
    assert "in load()" in str(err) and "RuntimeError: cannot load the model" in str(err)
    assert type(err.__cause__) is RuntimeError
    assert 'raise RuntimeError("cannot load the model")' in err.__cause__.__cause__.text


def test_exception_in_generator_stops_the_run():
    with Pipeline(name="gen-fails") as pipeline:
        FailingGenerator(name="source", fail_at_batch=2) >> Measure()
    err = _run_failing(pipeline)
    assert err.step == "source" and err.record.batch == 2
    assert type(err.__cause__) is OSError and "the source went away" in str(err.__cause__)
    assert 'raise OSError("the source went away")' in err.__cause__.__cause__.text


def test_exception_in_global_step_stops_the_run():
    with Pipeline(name="global-fails") as pipeline:
        LoadDataFromDicts(data=rows(10)) >> FailingGlobal(name="summary")
    err = _run_failing(pipeline)
    assert err.step == "summary"
    assert type(err.__cause__) is ZeroDivisionError
    assert 'raise ZeroDivisionError("global went wrong")' in err.__cause__.__cause__.text


def test_global_step_ignores_skip_policy():
    with Pipeline(name="global-skip") as pipeline:
        LoadDataFromDicts(data=rows(10)) >> FailingGlobal(name="summary", on_error="skip")
    _run_failing(pipeline)


def test_worker_exit_is_reported_with_exit_code_and_batch():
    err = _run_failing(_misbehaving("exit", at="q5"))
    assert "step 'bad' replica 0 died (exit code 3) while processing batch 2, rows 4–5" in str(err)
    assert type(err.__cause__) is WorkerDied and err.record.batch == 2


def test_worker_segfault_is_reported_as_sigsegv():
    err = _run_failing(_misbehaving("segfault", at="q0"))
    assert "died (SIGSEGV) while processing batch 0, rows 0–1" in str(err)


def test_worker_dying_in_load_is_reported():
    err = _run_failing(_misbehaving("load_exit"))
    assert "died (exit code 7) while loading" in str(err)


def test_unpicklable_output_names_the_step_and_column():
    err = _run_failing(_misbehaving("unpicklable", at="q1"))
    assert err.record.type_name == "synthpipe.errors.UnpicklableOutput"
    assert "step 'bad'" in str(err) and "column 'out'" in str(err) and "_thread.lock" in str(err)


def test_failure_stops_promptly_while_other_steps_are_busy():
    """A failing step ends the run within seconds even if another worker hangs mid-batch."""
    with Pipeline(name="busy") as pipeline:
        load = LoadDataFromDicts(data=rows(40), batch_size=2)
        load >> Misbehave(name="hang", mode="hang", at="q0")
        load >> Explode(name="explode", bad="q5", input_batch_size=2)
    err = _run_failing(pipeline)
    assert err.step == "explode"


def test_skip_policy_records_failed_rows_and_keeps_going():
    with Pipeline(name="skip") as pipeline:
        load = LoadDataFromDicts(data=rows(30), batch_size=10)
        load >> Explode(name="explode", bad="q7", input_batch_size=4, on_error="skip") >> Measure()
    distiset = pipeline.run()
    train = distiset["default"]["train"]
    expected = [f"q{i}" for i in range(30) if not 4 <= i <= 7]
    assert train["instruction"] == expected
    assert None not in train["checked"]
    failed = distiset.failed_rows
    assert [f["data"]["instruction"] for f in failed] == ["q4", "q5", "q6", "q7"]
    assert {f["step"] for f in failed} == {"explode"}
    assert failed[0]["error_type"] == "ValueError" and failed[0]["message"] == "boom at row q7"
    assert "boom at row" in failed[0]["traceback"] and failed[0]["row"] == 4
    assert (distiset.run_dir / "failed_rows.jsonl").exists()


SCRIPT = textwrap.dedent(
    """
    from steps_lib import Explode, rows
    from synthpipe.pipeline import Pipeline
    from synthpipe.steps import LoadDataFromDicts

    with Pipeline(name="script") as pipeline:
        LoadDataFromDicts(data=rows(20), batch_size=5) >> Explode(name="checker", bad="q12", input_batch_size=5)

    if __name__ == "__main__":
        pipeline.run()
    """
)


def test_what_the_user_sees_on_the_terminal(tmp_path):
    script = tmp_path / "user_pipeline.py"
    script.write_text(SCRIPT)
    tests_dir = str(Path(__file__).parent)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "PYTHONPATH": python_path(tests_dir)},
    )
    assert time.monotonic() - start < RUN_BOUND_S + 10
    assert proc.returncode == 1
    err = proc.stderr
    assert "Traceback in the worker process" in err
    assert 'raise ValueError(f"boom at row' in err and "steps_lib.py" in err
    assert "ValueError: boom at row q12" in err
    assert "StepFailed: step 'checker', replica 0, batch 2, rows 10–14 failed: ValueError: boom at row q12" in err
    assert "cannot pickle" not in err


@pytest.mark.parametrize(("kind", "type_name"), [("generator", "builtins.generator"), ("file", "TextIOWrapper")])
def test_rows_that_cannot_cross_the_process_boundary(kind, type_name):
    from steps_lib import YieldOddValue

    with Pipeline(name=f"odd-{kind}") as pipeline:
        LoadDataFromDicts(data=rows(4)) >> YieldOddValue(name="odd", kind=kind)
    err = _run_failing(pipeline)
    assert "step 'odd' produced a value that cannot be sent to another process" in str(err)
    assert "column 'value' of output row 0" in str(err) and type_name in str(err)


def test_a_script_without_a_main_guard_is_told_so(tmp_path):
    script = tmp_path / "no_guard.py"
    script.write_text(
        "from synthpipe.pipeline import Pipeline\n"
        "from synthpipe.steps import LoadDataFromDicts\n"
        f"with Pipeline(name='no-guard', cache_dir={str(tmp_path / 'cache')!r}) as p:\n"
        "    LoadDataFromDicts(data=[{'a': 1}])\n"
        "p.run()\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    last_line = done.stderr.strip().splitlines()[-1]  # the error the script ends with, not only a worker's stderr
    assert "PipelineDefinitionError" in last_line and 'put the call under `if __name__ == "__main__":`' in last_line
    assert "exit code" not in last_line
