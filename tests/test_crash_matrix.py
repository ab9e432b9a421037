"""Every way a step can fail × every place it can fail: each ends by itself, promptly, with
the right diagnosis, and leaves no worker behind (after CPython's test_deadlock.py)."""

from __future__ import annotations

import re
import time

import pytest

from steps_lib import FaultyGenerator, FaultyGlobal, FaultyStep, Measure, rows
from synthpipe.errors import RemoteError, RemoteTraceback, StepFailed, StepTimeout, WorkerDied
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("no_leftover_workers")]

WHERE = ["load", "process", "generator", "global"]
HOW = ["raise", "unpicklable_exception", "unrebuildable_exception", "exit", "segfault", "hang",
       "unpicklable_output"]
BOUND_S = 25.0


def _pipeline(where: str, how: str) -> Pipeline:
    limits = {"timeout": 1.0, "load_timeout": 4.0}  # load: spawn and imports too, slow on a busy machine
    with Pipeline(name=f"matrix-{where}-{how}") as pipeline:
        if where == "generator":
            FaultyGenerator(name="faulty", how=how, **limits) >> Measure()
        elif where == "global":
            LoadDataFromDicts(data=rows(20), batch_size=5) >> FaultyGlobal(name="faulty", how=how, **limits)
        else:
            load = LoadDataFromDicts(data=rows(20), batch_size=5)
            load >> FaultyStep(name="faulty", how=how, where=where, input_batch_size=2, **limits) >> Measure()
    return pipeline


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("where", WHERE)
def test_crash_matrix(where, how):
    if where == "load" and how == "unpicklable_output":
        pytest.skip("load() has no output")
    pipeline = _pipeline(where, how)
    start = time.monotonic()
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert time.monotonic() - start < BOUND_S
    err, cause = info.value, info.value.__cause__
    text = str(err)
    assert err.step == "faulty" and "step 'faulty'" in text
    if where == "load":
        assert err.record.phase == "load" and "load" in text
    else:
        assert err.record.batch is not None and "batch" in text
    place = {"load": "load", "process": "process", "generator": "generator", "global": "global step"}[where]
    if how == "raise":
        assert type(cause) is ValueError and str(cause) == f"fault in {place}"
        assert 'raise ValueError(f"fault in {where}")' in cause.__cause__.text
    elif how == "unpicklable_exception":
        assert isinstance(cause, RemoteError) and type(cause).__name__ == "LockError"
        assert str(cause) == f"fault in {place}"
        assert 'raise LockError(f"fault in {where}")' in cause.__cause__.text
    elif how == "unrebuildable_exception":
        assert isinstance(cause, RemoteError) and type(cause).__name__ == "NeedsTwoArgs"
        assert str(cause) == f"code 7: fault in {place}"
        assert isinstance(cause.__cause__, RemoteTraceback)
    elif how == "exit":
        assert type(cause) is WorkerDied and "died (exit code 3)" in text
    elif how == "segfault":
        assert type(cause) is WorkerDied and "died (SIGSEGV)" in text
    elif how == "hang":
        assert type(cause) is StepTimeout and re.search(r"timeout of [14]s", text) and "killed" in text
    elif how == "unpicklable_output":
        assert err.record.type_name == "synthpipe.errors.UnpicklableOutput"
        assert "cannot be sent to another process" in text and "_thread.lock" in text
