"""Ctrl+C, SIGTERM and a killed main process, with real signals and real processes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import _processes, child_pids, python_path
from steps_lib import Explode, Measure, Sleepy, rows
from synthpipe.errors import StepFailed
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts

pytestmark = pytest.mark.timeout(90)

TESTS_DIR = Path(__file__).parent
SCRIPT = TESTS_DIR / "signal_pipeline.py"


def _start(tmp_path: Path, mode: str, seconds: float, grace: float) -> tuple[subprocess.Popen, Path]:
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": python_path(TESTS_DIR), "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache"),
           "SYNTHPIPE_PROGRESS": "0"}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, str(seconds), str(grace), str(marker)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    return proc, marker


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def _descendants(pid: int) -> set[int]:
    procs = _processes()
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, ppid, state, _ in procs:
            if ppid == parent and state != "Z" and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid, _, state, _ in _processes():
        if pid in pids and state != "Z":
            alive.add(pid)
    return alive


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str, float]:
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run did not end within {timeout}s after the signal:\n{err}") from None
    return proc.returncode, out, err, time.monotonic() - start


def _kept_rows(stderr: str) -> int:
    run_dir = Path(re.search(r"run directory (\S+)", stderr).group(1))
    return sum(pq.read_metadata(f).num_rows for f in (run_dir / "data" / "measure").glob("*.parquet"))


def test_ctrl_c_to_the_process_group_stops_gracefully_and_keeps_finished_rows(tmp_path):
    proc, marker = _start(tmp_path, "sleepy", seconds=0.4, grace=10)
    _wait_for(marker.exists)
    time.sleep(1.0)  # let some batches finish
    workers = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl+C: every process gets it
    code, out, err, took = _finish(proc, timeout=20)
    assert took < 10
    assert code in (-signal.SIGINT, 130), err
    assert "RUN RETURNED" not in out
    assert "SIGINT received: handing out no more work" in err
    assert "kept what finished" in err
    assert err.count("Traceback (most recent call last)") == 1, err  # ours only: workers ignore SIGINT
    assert err.rstrip().endswith("KeyboardInterrupt: stopped by SIGINT")
    kept = _kept_rows(err)
    assert kept > 0 and kept % 5 == 0
    assert re.search(rf"measure: {kept:,} rows in data/measure/", err)
    _wait_for(lambda: not _alive(workers), timeout=5)


def test_sigterm_exits_143_after_a_graceful_stop(tmp_path):
    proc, marker = _start(tmp_path, "sleepy", seconds=0.4, grace=10)
    _wait_for(marker.exists)
    workers = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    code, _, err, took = _finish(proc, timeout=20)
    assert code == 143 and took < 10
    assert "SIGTERM received: handing out no more work" in err and "kept what finished" in err
    _wait_for(lambda: not _alive(workers), timeout=5)


def test_second_ctrl_c_stops_at_once(tmp_path):
    proc, marker = _start(tmp_path, "sleepy", seconds=60, grace=60)
    _wait_for(marker.exists)
    workers = _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code, _, err, took = _finish(proc, timeout=20)
    assert took < 6
    assert code in (-signal.SIGINT, 130)
    assert "second SIGINT: stopping now" in err
    _wait_for(lambda: not _alive(workers), timeout=5)


def test_grace_period_bounds_the_wait_for_running_batches(tmp_path):
    proc, marker = _start(tmp_path, "sleepy", seconds=60, grace=1.5)
    _wait_for(marker.exists)
    proc.send_signal(signal.SIGINT)
    code, _, err, took = _finish(proc, timeout=20)
    assert took < 8 and code in (-signal.SIGINT, 130)
    assert "grace period over; ending the 2 batch(es) still in flight" in err


def test_ctrl_c_while_steps_are_still_loading(tmp_path):
    proc, _ = _start(tmp_path, "slowload", seconds=60, grace=10)
    _wait_for(lambda: len(_descendants(proc.pid)) >= 3)
    time.sleep(0.5)
    workers = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    code, _, err, took = _finish(proc, timeout=20)
    assert took < 6 and code in (-signal.SIGINT, 130)
    assert err.count("Traceback (most recent call last)") == 1, err
    _wait_for(lambda: not _alive(workers), timeout=5)


def test_workers_die_when_the_main_process_is_killed(tmp_path):
    proc, marker = _start(tmp_path, "sleepy", seconds=60, grace=10)
    _wait_for(marker.exists)
    workers = _descendants(proc.pid)
    assert len(workers) >= 3
    proc.kill()
    proc.communicate(timeout=10)
    start = time.monotonic()
    _wait_for(lambda: not _alive(workers), timeout=5)
    assert time.monotonic() - start < 2.5


def test_handlers_are_restored_after_run_returns_or_raises():
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    with Pipeline(name="restore-ok") as ok:
        LoadDataFromDicts(data=rows(10)) >> Measure()
    ok.run()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with Pipeline(name="restore-fail") as bad:
        LoadDataFromDicts(data=rows(10)) >> Explode(bad="q2")
    with pytest.raises(StepFailed):
        bad.run()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_sigint_in_process_raises_keyboard_interrupt_and_leaves_nothing(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    marker = tmp_path / "started"
    with Pipeline(name="in-process", stop_grace_seconds=5) as pipeline:
        LoadDataFromDicts(data=rows(100), batch_size=5) >> Sleepy(seconds=0.3, marker=str(marker), input_batch_size=5)

    def interrupt() -> None:
        _wait_for(marker.exists)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        pipeline.run()
    assert time.monotonic() - start < 20
    assert signal.getsignal(signal.SIGINT) is before
    _wait_for(lambda: not child_pids(), timeout=5)


def test_second_ctrl_c_while_workers_unload_stops_at_once(tmp_path):
    proc, marker = _start(tmp_path, "slowunload", seconds=60, grace=60)
    _wait_for(marker.exists, timeout=30)  # the run is done; its worker is in unload()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    code, _, err, took = _finish(proc, timeout=20)
    assert took < 6, err
    assert "SIGINT while workers finish: stopping them now" in err
