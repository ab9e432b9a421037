"""Recovering from failures: restart after a crash, isolate poison rows, retry with backoff,
stop a run whose failures pile up, and say what happened at the end."""

from __future__ import annotations

import threading
import time

import pytest

from steps_lib import CrashOnce, FlakyStep, Measure, PoisonRows, rows
from synthpipe.errors import StepFailed, SynthpipeError, TooManyFailedRows
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, StepResources

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_leftover_workers")]


def test_crashed_worker_is_restarted_and_its_batch_retried(tmp_path, caplog):
    with Pipeline(name="crash-once") as pipeline:
        load = LoadDataFromDicts(data=rows(40), batch_size=10)
        load >> CrashOnce(name="crashy", marker=str(tmp_path / "crashed"), input_batch_size=4) >> Measure()
    distiset = pipeline.run()
    train = distiset["default"]["train"]
    assert train["instruction"] == [f"q{i}" for i in range(40)]
    assert distiset.failed_rows == []
    log = distiset.log_path.read_text()
    assert "step 'crashy' replica 0 died (exit code 9) while processing batch 1, rows 4–7; restarting it" in log


@pytest.mark.parametrize("how", ["segfault", "exit"])
def test_poison_row_is_isolated_and_the_rest_goes_through(how):
    with Pipeline(name=f"poison-{how}") as pipeline:
        load = LoadDataFromDicts(data=rows(60), batch_size=20)
        poison = PoisonRows(name="poison", poison=["q13", "q41"], how=how, input_batch_size=10,
                            on_error="skip", resources=StepResources(replicas=2))
        load >> poison >> Measure()
    start = time.monotonic()
    distiset = pipeline.run()
    assert time.monotonic() - start < 60
    train = distiset["default"]["train"]
    assert train["instruction"] == [f"q{i}" for i in range(60) if i not in (13, 41)]
    failed = distiset.failed_rows
    assert [f["data"]["instruction"] for f in failed] == ["q13", "q41"]
    assert [f["row"] for f in failed] == [13, 41]
    expected = "SIGSEGV" if how == "segfault" else "exit code 3"
    for entry in failed:
        assert entry["error_type"] == "synthpipe.errors.WorkerDied"
        assert expected in entry["message"] and f"row{'s'} {entry['row']}–{entry['row']}" in entry["message"]
        assert entry["attempts"] >= 2


def test_hanging_row_is_isolated_by_the_timeout():
    with Pipeline(name="poison-hang") as pipeline:
        load = LoadDataFromDicts(data=rows(12), batch_size=4)
        load >> PoisonRows(name="slow", poison=["q5"], how="hang", timeout=1.0, input_batch_size=4,
                           on_error="skip", max_restarts=0)
    distiset = pipeline.run()
    assert distiset["default"]["train"]["instruction"] == [f"q{i}" for i in range(12) if i != 5]
    (failed,) = distiset.failed_rows
    assert failed["data"]["instruction"] == "q5"
    assert failed["error_type"] == "synthpipe.errors.StepTimeout"
    assert "timeout of 1s" in failed["message"]


def test_timeout_with_fail_policy_names_the_batch():
    with Pipeline(name="hang-fail") as pipeline:
        load = LoadDataFromDicts(data=rows(12), batch_size=4)
        load >> PoisonRows(name="slow", poison=["q5"], how="hang", timeout=0.5, input_batch_size=4)
    start = time.monotonic()
    with pytest.raises(StepFailed, match=r"step 'slow' replica 0: batch 1, rows 4–7 ran longer than the step's "
                                         r"timeout of 0.5s; the worker was killed"):
        pipeline.run()
    assert time.monotonic() - start < 20


def test_transient_errors_are_retried_with_backoff(tmp_path):
    counter = tmp_path / "calls"
    with Pipeline(name="flaky") as pipeline:
        load = LoadDataFromDicts(data=rows(20), batch_size=5)
        load >> FlakyStep(name="flaky", counter=str(counter), failures=2, retries=3, retry_delay=0.2,
                          input_batch_size=5)
    start = time.monotonic()
    distiset = pipeline.run()
    elapsed = time.monotonic() - start
    train = distiset["default"]["train"]
    assert train["instruction"] == [f"q{i}" for i in range(20)]
    assert set(train["seen"]) == {1}  # each retry started from the original rows
    assert counter.read_text() == "xxx"
    assert elapsed >= 0.2 + 0.4  # two waits, doubling
    log = distiset.log_path.read_text()
    assert "batch 1, rows 5–9 failed (attempt 1 of 4): ConnectionError: transient failure 1; retrying in" in log
    assert "batch 1, rows 5–9 failed (attempt 2 of 4): ConnectionError: transient failure 2; retrying in" in log


def test_retries_exhausted_then_policy_applies(tmp_path):
    with Pipeline(name="flaky-skip") as pipeline:
        load = LoadDataFromDicts(data=rows(20), batch_size=5)
        load >> FlakyStep(name="flaky", counter=str(tmp_path / "calls"), failures=5, retries=1,
                          retry_delay=0.01, input_batch_size=5, on_error="skip", max_failure_rate=None)
    distiset = pipeline.run()
    assert len(distiset.failed_rows) == 5
    assert {f["attempts"] for f in distiset.failed_rows} == {2}
    assert distiset.failed_rows[0]["message"] == "transient failure 2"


def test_failure_rate_guard_stops_a_run_that_produces_nothing():
    with Pipeline(name="guard") as pipeline:
        load = LoadDataFromDicts(data=rows(400), batch_size=10)
        load >> PoisonRows(name="broken", poison=[f"q{i}" for i in range(400)], how="raise_", input_batch_size=10,
                           on_error="skip")
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert isinstance(info.value.__cause__, TooManyFailedRows)
    assert "more than max_failure_rate=0.5" in str(info.value)


def test_max_failed_rows_guard(tmp_path):
    with Pipeline(name="guard-count") as pipeline:
        load = LoadDataFromDicts(data=rows(100), batch_size=10)
        load >> PoisonRows(name="broken", poison=["q3", "q33", "q63"], how="raise_", input_batch_size=5,
                           on_error="skip", max_failed_rows=10)
    with pytest.raises(StepFailed, match="15 rows failed, more than max_failed_rows=10"):
        pipeline.run()


def test_failure_summary_lists_distinct_errors_with_counts_and_a_traceback(capfd):
    with Pipeline(name="summary") as pipeline:
        load = LoadDataFromDicts(data=rows(30), batch_size=10)
        load >> PoisonRows(name="broken", poison=["q3", "q23"], how="raise_", input_batch_size=5,
                           on_error="skip", max_failure_rate=None)
    pipeline.run()
    err = capfd.readouterr().err
    assert "synthpipe: 10 row(s) failed" in err
    assert "step 'broken': 10 row(s) failed" in err
    assert "10 × RuntimeError: poison row" in err
    assert 'raise RuntimeError("poison row")' in err


def test_step_that_cannot_be_sent_to_a_worker_is_named():
    with Pipeline(name="unsendable") as pipeline:
        LoadDataFromDicts(name="load", data=[{"instruction": "x", "lock": threading.Lock()}])
    with pytest.raises(SynthpipeError, match="step 'load' cannot be sent to a worker process: field 'data'"):
        pipeline.run()


def test_a_step_holding_the_gil_cannot_block_the_coordinator():
    """The next batch is too big for the pipe while the worker cannot read: the coordinator
    must still see the timeout."""
    from steps_lib import GilHog

    data = [{"instruction": "q0"}, {"instruction": "q1"}, {"instruction": "q2", "big": "x" * 8_000_000}]
    with Pipeline(name="gil") as pipeline:
        LoadDataFromDicts(data=data, batch_size=1) >> GilHog(name="hog", timeout=2.0, input_batch_size=1,
                                                              max_restarts=0)
    start = time.monotonic()
    with pytest.raises(StepFailed, match="ran longer than the step's timeout of 2s"):
        pipeline.run()
    assert time.monotonic() - start < 30


def test_column_type_changing_between_chunks_is_named_and_not_recorded_as_finished(tmp_path):
    from synthpipe.store.leaf_writer import LeafWriter

    writer = LeafWriter(tmp_path, ["leaf"], chunk_rows=2)
    writer.write("leaf", [{"v": 1}, {"v": None}], [0, 1])
    writer.write("leaf", [{"v": None}, {"v": 2}], [2, 3])  # null then int: fine
    with pytest.raises(SynthpipeError, match="step 'leaf' produced column 'v' values of another type"):
        writer.write("leaf", [{"v": "two"}, {"v": "three"}], [4, 5])
