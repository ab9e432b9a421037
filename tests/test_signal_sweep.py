"""Ctrl+C, a second Ctrl+C and SIGTERM at many moments of a run's start-up, with real programs
in their own process group (a terminal's Ctrl+C reaches every process of the group): each must
end the way the README says, leave no process behind, and let a resume recompute nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import python_path
from steps_lib import rows

TESTS_DIR = Path(__file__).parent
SCRIPT = TESTS_DIR / "sweep_pipeline.py"
MOMENTS = 12  # per start method, spread over the first 1.5 s after run() is called
SPAN = 1.5
KINDS = ("group-sigint", "sigterm", "second-sigint")
ALL_ROWS = [row["instruction"] for row in rows(60)]


def _in_session(session: int) -> set[int]:
    """Live processes of a session: the program and everything it started."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == session:
            found.add(int(entry.name))
    return found


def _run(tmp_path: Path, method: str, journal: Path, signal_after: float | None = None,
         kind: str = "") -> tuple[int, str]:
    started = tmp_path / f"started-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": python_path(TESTS_DIR), "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache"),
           "SYNTHPIPE_PROGRESS": "0", "SYNTHPIPE_START_METHOD": method}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(journal), str(started)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        if signal_after is not None:
            deadline = time.monotonic() + 60
            while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(signal_after)
            if kind == "sigterm":
                proc.send_signal(signal.SIGTERM)  # what `kill PID` does
            else:
                os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl+C does
                if kind == "second-sigint":
                    time.sleep(0.1)
                    os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    except BaseException:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    deadline = time.monotonic() + 10
    while (left := _in_session(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes left behind: {sorted(left)}\n{err}"
    return proc.returncode, out + err


def _check_stopped(code: int, output: str, kind: str) -> bool:
    """The program stopped as asked, or had already finished; True when it stopped."""
    if code == 0 and "RUN RETURNED" in output:
        return False  # the signal came after run() returned
    assert "RUN RETURNED" not in output, output
    for foreign in ("EOFError", "ConnectionRefusedError", "BrokenPipeError", "ConnectionResetError"):
        assert foreign not in output, output
    if kind == "sigterm":
        assert code == 143, output
        assert "Traceback" not in output, output
    else:
        assert code in (130, -signal.SIGINT), output
        tracebacks = output.count("Traceback (most recent call last)")
        assert tracebacks <= 1, output  # Python's own report of the KeyboardInterrupt run() raises
        assert output.rstrip().endswith("KeyboardInterrupt: stopped by SIGINT"), output
    return True


def _computed(journal: Path) -> Counter[str]:
    text = journal.read_text() if journal.exists() else ""
    return Counter(word for line in text.splitlines() for word in line.split())


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_stop_at_any_moment_of_start_up(tmp_path, method):
    seed = random.randrange(1 << 30)
    offsets = random.Random(seed).random()
    stopped = 0
    for i in range(MOMENTS):
        moment = (i + offsets) * SPAN / MOMENTS
        kind = KINDS[i % len(KINDS)]
        where = tmp_path / f"m{i}"
        where.mkdir()
        journal = where / "journal"
        code, output = _run(where, method, journal, moment, kind)
        why = f"{kind} {moment:.3f}s after run() ({method}, seed {seed})"
        try:
            stopped += _check_stopped(code, output, kind)
        except AssertionError as exc:
            raise AssertionError(f"{why}: {exc}") from None
        first = _computed(journal)
        code, output = _run(where, method, journal)  # the resume
        assert code == 0 and "RUN RETURNED" in output, f"{why}: the resume failed:\n{output}"
        computed = _computed(journal)
        assert sorted(computed) == sorted(ALL_ROWS), why
        if kind != "second-sigint":  # a second Ctrl+C may drop batches in flight; a first one never
            again = [row for row, n in computed.items() if n > 1]
            assert not again, f"{why}: the resume computed again {again} (first run computed {sorted(first)})"
    assert stopped >= MOMENTS // 2, "most signals should have come while the run was going"
