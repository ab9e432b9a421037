"""MinHashDedup and a resume: SIGKILL the run once the dedup's upstream is finished (while the
dedup works, or after it finished), run it again: the same marks, nothing upstream computed
again, and a finished dedup not computed again either."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import python_path

pytest.importorskip("datasketch")
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("no_leftover_workers")]

TESTS_DIR = Path(__file__).parent


def _start(cache: Path, calls: Path, pause_at: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": python_path(TESTS_DIR, TESTS_DIR.parent / "src"),
           "SYNTHPIPE_CACHE_DIR": str(cache), "SYNTHPIPE_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, "-c", "import dedup_resume_pipeline as m; m.main()", str(calls),
                             pause_at], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _calls(path: Path) -> collections.Counter:
    return collections.Counter(path.read_text().splitlines()) if path.exists() else collections.Counter()


def _journal(cache: Path) -> list[dict]:
    (journal,) = cache.glob("dedup-resume-*/journal.jsonl")
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("pause_at", ["dedup", "after"])
def test_a_killed_dedup_run_resumes_with_the_same_marks_and_nothing_upstream_again(tmp_path, pause_at):
    from dedup_resume_pipeline import TOTAL, texts
    from synthpipe.steps.filtering._minhash_core import first_occurrences

    cache, calls = tmp_path / "cache", tmp_path / "calls"
    proc = _start(cache, calls, pause_at)
    deadline = time.monotonic() + 200
    while f"{pause_at}:start" not in _calls(calls) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert f"{pause_at}:start" in _calls(calls), "the run never reached the pause"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    killed = _calls(calls)
    upstream = ["gen", "spread"] + (["dedup"] if pause_at == "after" else [])
    for step in upstream:
        assert [killed[f"{step}:{n}"] for n in range(TOTAL)] == [1] * TOTAL, step  # all done before the kill
    assert not any(line.startswith("after:") and line != "after:start" for line in killed)

    resumed = _start(cache, calls, "none")
    out, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0 and "RUN FINISHED" in out, err[-3000:]
    counted = _calls(calls)
    for step in upstream:  # nothing finished before the kill was computed again
        assert [counted[f"{step}:{n}"] for n in range(TOTAL)] == [1] * TOTAL, step
    for step in ("dedup", "after"):
        assert [counted[f"{step}:{n}"] for n in range(TOTAL)] == [1] * TOTAL, step
    batches = collections.Counter((r["step"], r["sig"], r["seq"]) for r in _journal(cache) if r["t"] == "batch")
    assert batches and max(batches.values()) == 1

    marks = next(line.split()[1] for line in out.splitlines() if line.startswith("MARKS "))
    expected = first_occurrences(texts(), threshold=0.8)
    assert [m == "1" for m in marks] == expected
    marked, copies = {n for n, m in enumerate(marks) if m == "0"}, {n for n in range(TOTAL) if n % 5 == 4}
    assert marked <= copies and len(marked) >= 0.9 * len(copies)  # (a copy of a marked copy may pass)
