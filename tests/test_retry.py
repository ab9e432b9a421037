"""``run(retry_failed=True)``: only the failed rows run again, through the step that failed
them and the steps after it, and come back in their place in the result."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import python_path
from steps_lib import AddBytes, Counting, CountingGenerator, FailListed, JoinCounting
from synthpipe.errors import SynthpipeError
from synthpipe.pipeline import Pipeline

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_leftover_workers")]

TESTS_DIR = Path(__file__).parent


def _calls(path: Path) -> collections.Counter:
    return collections.Counter(path.read_text().splitlines()) if path.exists() else collections.Counter()


def _chain(calls: Path, bad: Path, total: int = 40) -> Pipeline:
    with Pipeline(name="retry") as pipeline:
        gen = CountingGenerator(name="gen", total=total, batch_size=10, calls=str(calls))
        a = Counting(name="a", calls=str(calls), input_batch_size=5)
        flaky = FailListed(name="flaky", bad=str(bad), calls=str(calls), input_batch_size=4, on_error="skip")
        c = Counting(name="c", calls=str(calls), input_batch_size=3)
        gen >> a >> flaky >> c
    return pipeline


def _rows(distiset) -> list[dict]:
    return distiset["default"]["train"].to_list()


@pytest.fixture
def reference(tmp_path_factory) -> list[dict]:
    """The result of a run in which nothing fails."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "bad").write_text("")
    os.environ["SYNTHPIPE_CACHE_DIR"] = str(folder / "cache")
    try:
        return _rows(_chain(folder / "calls", folder / "bad").run())
    finally:
        del os.environ["SYNTHPIPE_CACHE_DIR"]


def test_retry_runs_only_the_failed_rows_and_puts_them_back_in_order(tmp_path, reference):
    calls, bad = tmp_path / "calls", tmp_path / "bad"
    bad.write_text("5 22")
    first = _chain(calls, bad).run()
    assert len(_rows(first)) == 32  # the batches [4..7] and [20..23] of 'flaky' failed
    assert sorted(e["data"]["n"] for e in first.failed_rows) == [4, 5, 6, 7, 20, 21, 22, 23]
    assert [e["key"] for e in first.failed_rows] == [4, 5, 6, 7, 20, 21, 22, 23]

    bad.write_text("")  # whatever failed them is over
    before = _calls(calls)
    retried = _chain(calls, bad).run(retry_failed=True)
    new_calls = _calls(calls) - before
    retried_rows = [f"q{n}" for n in (4, 5, 6, 7, 20, 21, 22, 23)]
    assert sorted(new_calls) == sorted([f"flaky:{q}" for q in retried_rows] + [f"c:{q}" for q in retried_rows])
    assert max(new_calls.values()) == 1
    assert _rows(retried) == reference  # in the original order
    assert retried.failed_rows == []

    # the retried result is now the pipeline's result: nothing runs again
    before = _calls(calls)
    assert _rows(_chain(calls, bad).run()) == reference
    assert _rows(_chain(calls, bad).run(retry_failed=True)) == reference
    assert _calls(calls) == before


def test_rows_that_fail_again_stay_failed_until_a_later_retry(tmp_path, reference):
    calls, bad = tmp_path / "calls", tmp_path / "bad"
    bad.write_text("5 22")
    _chain(calls, bad).run()
    bad.write_text("5")
    once = _chain(calls, bad).run(retry_failed=True)
    assert [e["key"] for e in once.failed_rows] == [4, 5, 6, 7]
    assert [e["data"]["n"] for e in once.failed_rows] == [4, 5, 6, 7]
    assert [r["n"] for r in _rows(once)] == [n for n in range(40) if n not in (4, 5, 6, 7)]
    # the same rows again: a new try really runs (it is not the earlier try's stored result)
    before = _calls(calls)
    twice = _chain(calls, bad).run(retry_failed=True)
    assert _calls(calls) - before == collections.Counter(f"flaky:q{n}" for n in (4, 5, 6, 7))
    assert [e["key"] for e in twice.failed_rows] == [4, 5, 6, 7]
    bad.write_text("")
    assert _rows(_chain(calls, bad).run(retry_failed=True)) == reference


def test_retry_on_a_pipeline_that_never_ran_runs_it_then_retries(tmp_path, reference):
    calls, bad = tmp_path / "calls", tmp_path / "bad"
    bad.write_text("13")
    result = _chain(calls, bad).run(retry_failed=True)  # the retry fails the same rows again
    assert [e["data"]["n"] for e in result.failed_rows] == [12, 13, 14, 15]
    assert _calls(calls)["flaky:q13"] == 2


def test_a_row_json_cannot_hold_is_retried_exactly(tmp_path):
    calls, bad = tmp_path / "calls", tmp_path / "bad"
    bad.write_text("3")
    with Pipeline(name="bytes") as pipeline:
        gen = CountingGenerator(name="gen", total=8, batch_size=8)
        blob = AddBytes(name="blob", input_batch_size=8)
        flaky = FailListed(name="flaky", bad=str(bad), calls=str(calls), input_batch_size=2, on_error="skip")
        gen >> blob >> flaky
    assert len(_rows(pipeline.run())) == 6
    bad.write_text("")
    rows = _rows(pipeline.run(retry_failed=True))
    assert [r["blob"] for r in rows] == [f"q{n}".encode() + b"\x00\xff" for n in range(8)]


def test_rows_that_would_reach_a_join_are_refused_before_anything_runs(tmp_path):
    calls, bad = tmp_path / "calls", tmp_path / "bad"
    bad.write_text("5")
    with Pipeline(name="join") as pipeline:
        gen = CountingGenerator(name="gen", total=20, batch_size=10)
        flaky = FailListed(name="flaky", bad=str(bad), calls=str(calls), input_batch_size=4, on_error="skip")
        other = Counting(name="other")
        join = JoinCounting(name="join")
        gen >> [flaky, other] >> join
    pipeline.run()
    before = _calls(calls)
    with pytest.raises(SynthpipeError, match="step 'join'.*also takes rows from 'other'"):
        pipeline.run(retry_failed=True)
    assert _calls(calls) == before


RETRY_PROGRAM = """
import sys
sys.path.insert(0, {tests!r})
from test_retry import _chain
from pathlib import Path
result = _chain(Path({calls!r}), Path({bad!r}), total=200).run(retry_failed=True)
print("FAILED", len(result.failed_rows), "ROWS", result["default"]["train"].num_rows, flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_retry_resumes_without_redoing_finished_retried_batches(tmp_path, signum):
    calls, bad, cache = tmp_path / "calls", tmp_path / "bad", tmp_path / "cache"
    bad.write_text(" ".join(str(n) for n in range(0, 200, 12)))  # a third of the batches of 'flaky' fail
    os.environ["SYNTHPIPE_CACHE_DIR"] = str(cache)
    try:
        first = _chain(calls, bad, total=200).run()
    finally:
        del os.environ["SYNTHPIPE_CACHE_DIR"]
    assert len(first.failed_rows) == 68
    bad.write_text("")
    program = RETRY_PROGRAM.format(tests=str(TESTS_DIR), calls=str(calls), bad=str(bad))
    env = {**os.environ, "SYNTHPIPE_CACHE_DIR": str(cache), "SYNTHPIPE_PROGRESS": "0",
           "PYTHONPATH": python_path(TESTS_DIR)}
    before = _calls(calls)
    proc = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:  # stop it once some retried rows are through
        if sum((_calls(calls) - before)[f"c:q{n}"] for n in range(200)) >= 20:
            proc.send_signal(signum)
            break
        time.sleep(0.02)
    proc.communicate(timeout=60)
    assert proc.returncode != 0, "the retry finished before it was interrupted; adjust the timing"
    done = _calls(calls) - before
    finished = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=120)
    assert "FAILED 0 ROWS 200" in finished.stdout, finished.stderr
    again = _calls(calls) - before - done
    # what the interrupted retry finished is not done again (rows in flight at the stop may be)
    redone = sum(1 for line in again if line.startswith("c:") and done[line])
    assert redone <= 12, redone
    assert all(not line.startswith(("gen:", "a:")) for line in _calls(calls) - before)


def test_the_merge_goes_chunk_by_chunk_and_links_chunks_that_get_nothing(tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("5 24001")
    with Pipeline(name="chunks") as pipeline:
        gen = CountingGenerator(name="gen", total=25_000, batch_size=1000)
        flaky = FailListed(name="flaky", bad=str(bad), input_batch_size=500, on_error="skip", max_failure_rate=None)
        gen >> flaky
    first = pipeline.run()
    assert len(first.failed_rows) == 1000
    bad.write_text("")
    retried = pipeline.run(retry_failed=True)
    assert [r["n"] for r in retried["default"]["train"].to_list()] == list(range(25_000))
    before = sorted((first.run_dir / "data" / "flaky").glob("*.parquet"))
    after = sorted((retried.run_dir / "data" / "flaky").glob("*.parquet"))
    assert len(before) == len(after) == 3  # chunks of 10,000 rows
    assert os.stat(before[1]).st_ino == os.stat(after[1]).st_ino  # nothing went into it: linked
    assert os.stat(before[0]).st_ino != os.stat(after[0]).st_ino


def test_a_retried_result_survives_a_change_to_a_later_step(tmp_path, reference):
    calls, bad = tmp_path / "calls", tmp_path / "bad"
    bad.write_text("5 22")
    _chain(calls, bad).run()
    bad.write_text("")
    assert _rows(_chain(calls, bad).run(retry_failed=True)) == reference
    bad.write_text("5 22")  # would fail again if it ran: it must not run
    before = _calls(calls)
    with Pipeline(name="retry") as changed:  # the last step changes: it and only it is recomputed
        gen = CountingGenerator(name="gen", total=40, batch_size=10, calls=str(calls))
        a = Counting(name="a", calls=str(calls), input_batch_size=5)
        flaky = FailListed(name="flaky", bad=str(bad), calls=str(calls), input_batch_size=4, on_error="skip")
        c = Counting(name="c", calls=str(calls), input_batch_size=3, tag="y")
        gen >> a >> flaky >> c
    result = changed.run()
    assert result.failed_rows == []
    assert [r["n"] for r in _rows(result)] == list(range(40)) and _rows(result)[5]["c"] == "y5"
    assert {line.split(":")[0] for line in _calls(calls) - before} == {"c"}  # flaky's retried rows: from the store
