"""Durable runs: interrupt at random moments with real signals, resume, and check that no
finished batch is computed twice and the result equals an uninterrupted run's."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import python_path
from resume_pipeline import build
from steps_lib import Counting, CountingGenerator
from synthpipe.pipeline import Pipeline
from synthpipe.runtime.local import LocalExecutor
from synthpipe.store.batch_format import is_columnar

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_leftover_workers")]

TESTS_DIR = Path(__file__).parent
SCRIPT = TESTS_DIR / "resume_pipeline.py"
STEPS = ("gen", "a", "b", "c")


def _stored_batches(cache: Path) -> int:
    journals = list(cache.glob("resume-*/journal.jsonl"))
    return journals[0].read_text().count('"t":"batch"') if journals else 0


def _run_program(cache: Path, calls: Path, kill_after: float | None, signum: int,
                 kill_at_batches: int | None = None) -> tuple[bool, str]:
    """Run the pipeline as a program; send ``signum`` after ``kill_after`` seconds, or once the
    journal holds ``kill_at_batches`` more finished batches. True if it finished."""
    env = {**os.environ, "PYTHONPATH": python_path(TESTS_DIR), "SYNTHPIPE_CACHE_DIR": str(cache),
           "SYNTHPIPE_PROGRESS": "0"}
    before = _stored_batches(cache)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(calls)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    if kill_at_batches is not None:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            if _stored_batches(cache) - before >= kill_at_batches:
                proc.send_signal(signum)
                break
            time.sleep(0.02)
    elif kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run did not end (hang):\n{err}") from None
    return "RUN FINISHED" in out, err


def _result(cache: Path, calls: Path) -> list[dict]:
    os.environ["SYNTHPIPE_CACHE_DIR"] = str(cache)
    distiset = build(str(calls)).run()
    return distiset["default"]["train"].to_list()


def _journal(cache: Path) -> list[dict]:
    (store,) = cache.glob("resume-*")
    return [json.loads(line) for line in (store / "journal.jsonl").read_text().splitlines() if line.strip()]


def _stored_forms(cache: Path) -> collections.Counter:
    """(step, columnar?) -> stored batches."""
    store = next(cache.glob("resume-*"))
    forms: collections.Counter = collections.Counter()
    for record in _journal(cache):
        if record["t"] == "batch":
            with (store / "batches" / record["key"]).open("rb") as fh:
                fh.seek(record["off"])
                forms[record["step"], is_columnar(fh.read(4))] += 1
    return forms


def _calls(path: Path) -> collections.Counter:
    return collections.Counter(path.read_text().splitlines()) if path.exists() else collections.Counter()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[dict]:
    """The result of one uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    finished, err = _run_program(folder / "cache", folder / "calls", None, 0)
    assert finished, err
    return _result(folder / "cache", folder / "calls")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("seed", [1, 2])
def test_interrupt_and_resume(tmp_path, reference, signum, seed):
    rng = random.Random(seed * 100 + signum)
    cache, calls = tmp_path / "cache", tmp_path / "calls"
    interruptions = 0
    for _attempt in range(8):
        # a random moment, counted in finished batches (0: while the workers start)
        kill_at = rng.randint(0, 150) if interruptions < 3 else None
        finished, err = _run_program(cache, calls, None, signum, kill_at_batches=kill_at)
        if finished:
            break
        interruptions += 1
        late = "pipeline 'resume' finished\n" in err or "already finished" in err  # killed after the work
        if signum != signal.SIGKILL and not late:
            assert "kept what finished" in err and "Run the same pipeline again to resume" in err, err
    else:
        raise AssertionError("the pipeline never finished")
    assert interruptions >= 1, "the kill came too late to test anything; adjust the timing"

    # No finished batch was computed twice: each (step, signature, seq) is journaled once.
    batches = collections.Counter((r["step"], r["sig"], r["seq"]) for r in _journal(cache) if r["t"] == "batch")
    assert batches and max(batches.values()) == 1, [k for k, v in batches.items() if v > 1]
    forms = _stored_forms(cache)
    # both forms were stored (and replayed); how many of b's batches are columnar depends on how soon
    # its worker's columnar writer is warm, which a loaded machine delays
    assert forms["b", True] >= 1 and forms["a", False] >= 10, forms
    # Each row went through each step at least once, and again only if it was in flight at an
    # interruption (at most once per interruption).
    counted = _calls(calls)
    for step in STEPS:
        per_row = [counted[f"{step}:q{i}"] for i in range(240)]
        assert min(per_row) >= 1, step
        assert max(per_row) <= 1 + interruptions, (step, max(per_row))
    # The result equals an uninterrupted run's, and a run of the finished pipeline computes nothing.
    before = _calls(calls)
    assert _result(cache, calls) == reference
    assert _calls(calls) == before


def test_corrupted_journal_tail_and_torn_segment_are_survived(tmp_path, reference):
    cache, calls = tmp_path / "cache", tmp_path / "calls"
    finished, _ = _run_program(cache, calls, None, signal.SIGKILL, kill_at_batches=40)
    assert not finished
    (store,) = cache.glob("resume-*")
    with (store / "journal.jsonl").open("ab") as fh:
        fh.write(b'{"t": "batch", "step": "a", "sig": "torn-in-the-midd')
    segment = max((store / "batches").rglob("*.seg"), key=lambda p: p.stat().st_size)
    with segment.open("r+b") as fh:  # lose the last stored batch's bytes
        fh.truncate(max(0, segment.stat().st_size - 10))
    finished, err = _run_program(cache, calls, None, 0)
    assert finished, err
    assert _result(cache, calls) == reference


def _chain(calls: Path, tag: str = "x", **flags) -> Pipeline:
    with Pipeline(name="chain") as pipeline:
        gen = CountingGenerator(name="gen", total=60, batch_size=10, calls=str(calls))
        a = Counting(name="a", calls=str(calls), input_batch_size=4, use_cache=flags.get("a", True))
        b = Counting(name="b", calls=str(calls), tag=tag, input_batch_size=6)
        c = Counting(name="c", calls=str(calls), input_batch_size=8)
        gen >> a >> b >> c
    return pipeline


def _steps_called(calls: Path, before: collections.Counter) -> set[str]:
    return {line.split(":")[0] for line in (_calls(calls) - before)}


def test_changing_a_middle_step_recomputes_it_and_what_follows_only(tmp_path):
    calls = tmp_path / "calls"
    first = _chain(calls).run()["default"]["train"]
    assert first["b"][:2] == ["x0", "x1"]
    before = _calls(calls)
    second = _chain(calls, tag="y").run()["default"]["train"]
    assert _steps_called(calls, before) == {"b", "c"}
    assert second["b"][:2] == ["y0", "y1"] and second["a"] == first["a"]
    # and a runtime parameter counts the same as a field
    before = _calls(calls)
    third = _chain(calls).run(parameters={"b": {"tag": "z"}})["default"]["train"]
    assert _steps_called(calls, before) == {"b", "c"} and third["b"][0] == "z0"


def test_use_cache_false_recomputes_the_step_and_what_follows(tmp_path):
    calls = tmp_path / "calls"
    _chain(calls).run()
    before = _calls(calls)
    _chain(calls, a=False).run()
    assert _steps_called(calls, before) == {"a", "b", "c"}
    before = _calls(calls)
    _chain(calls).run(use_cache=False)
    assert _steps_called(calls, before) == {"gen", "a", "b", "c"}


def test_finished_pipeline_returns_its_result_without_starting_a_worker(tmp_path, monkeypatch):
    calls = tmp_path / "calls"
    first = _chain(calls).run()
    monkeypatch.setattr(LocalExecutor, "_start_workers", lambda self: pytest.fail("a worker was started"))
    start = time.monotonic()
    again = _chain(calls).run()
    assert time.monotonic() - start < 5
    assert again["default"]["train"].to_list() == first["default"]["train"].to_list()


def test_failed_rows_of_resumed_runs_are_kept_once(tmp_path, reference):
    cache, calls = tmp_path / "cache", tmp_path / "calls"
    _run_program(cache, calls, None, signal.SIGKILL, kill_at_batches=30)
    finished, err = _run_program(cache, calls, None, 0)
    assert finished, err
    os.environ["SYNTHPIPE_CACHE_DIR"] = str(cache)
    failed = build(str(calls)).run().failed_rows
    numbers = [entry["data"]["n"] for entry in failed]
    assert numbers == sorted(numbers) and len(numbers) == len(set(numbers)) == 70
    assert {entry["step"] for entry in failed} == {"c"}
