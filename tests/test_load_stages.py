"""Load stages (``run(load_groups=...)``): how groups become stages, what validation rejects, and,
with real worker processes and real signals, that a stage's workers load only once the previous
stage's have unloaded and exited, that crashes, Ctrl+C and a killed coordinator work across stages,
and that a resumed run reuses the finished stages without loading their steps again."""

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
from stages_pipeline import GROUPS, Probe, ProbeGenerator, build, load_groups
from synthpipe.errors import PipelineValidationError, StepFailed
from synthpipe.pipeline import Pipeline
from synthpipe.pipeline.plan import build_plan
from synthpipe.steps import StepInput, step

TESTS_DIR = Path(__file__).parent
SCRIPT = TESTS_DIR / "stages_pipeline.py"


@step(inputs=["instruction"], outputs=["count"], step_type="global")
def CountEverything(inputs: StepInput):
    yield [{**row, "count": len(inputs)} for row in inputs]


def _stages(pipeline: Pipeline, groups) -> list[list[str]]:
    return build_plan(pipeline, load_groups=groups).stages


def _problems(pipeline: Pipeline, groups) -> str:
    with pytest.raises(PipelineValidationError) as info:
        build_plan(pipeline, load_groups=groups)
    return str(info.value)


def _chain(log: str = "/dev/null") -> Pipeline:
    """gen >> a >> [b, c]; c >> d (the pipeline of stages_pipeline.py)."""
    return build(log)


# -- from groups to stages ---------------------------------------------------------------


def test_named_groups_are_stages_and_the_steps_no_group_names_run_together_between_them():
    pipeline = _chain()
    assert _stages(pipeline, [["b", "c"]]) == [["gen", "a"], ["b", "c"], ["d"]]
    assert _stages(pipeline, GROUPS) == [["gen", "a"], ["b", "c"], ["d"]]
    assert _stages(pipeline, [["d"], ["a"]]) == [["gen"], ["a"], ["b", "c"], ["d"]]  # ordered by the DAG
    steps = pipeline.steps
    assert _stages(pipeline, [[steps["b"], steps["c"]]]) == [["gen", "a"], ["b", "c"], ["d"]]  # steps, not names
    assert build_plan(pipeline).stages is None  # no load_groups: one run of everything, as before


def test_sequential_step_execution_gives_every_step_a_stage_of_its_own():
    pipeline = _chain()
    order = build_plan(pipeline).order
    assert _stages(pipeline, "sequential_step_execution") == [[name] for name in order]


def test_a_global_step_always_starts_a_stage_of_its_own():
    with Pipeline(name="globals") as pipeline:
        gen = ProbeGenerator(name="gen")
        a = Probe(name="a")
        count = CountEverything(name="count")
        b = Probe(name="b")
        gen >> a >> count >> b
    assert _stages(pipeline, []) == [["gen", "a"], ["count"], ["b"]]
    assert _stages(pipeline, [["count"]]) == [["gen", "a"], ["count"], ["b"]]
    assert "global step 'count' runs in a stage of its own" in _problems(pipeline, [["a", "count"]])


def test_impossible_groups_are_rejected_with_every_problem_named():
    pipeline = _chain()
    text = _problems(pipeline, [["gen", "a"], ["a", "bb"], ["c", "c"], []])
    assert "step 'a' is in load group 2 and also in load group 1" in text
    assert "load group 2 names step 'bb', which is not in the pipeline (did you mean 'b'?)" in text
    assert "step 'c' is in load group 3 and twice in that group" in text
    assert "load group 4 is empty" in text
    # a stage that needs a step of a later stage to run first
    text = _problems(pipeline, [["gen", "d"], ["a"]])
    assert "step 'd' (stage 1) needs step 'c' to run first" in text
    text = _problems(pipeline, [["gen", "b"], ["a"]])
    assert "step 'b' (stage 1) needs step 'a' to run first, but it is in a later load group" in text
    text = _problems(pipeline, [["gen"], ["a", "d"]])
    assert "needs step 'c' to run first, but no load group names it" in text
    assert "load_groups must be a list of groups" in _problems(pipeline, ["gen", "a"])
    assert "is not understood" in _problems(pipeline, "sequential")
    assert "neither a step nor a step name" in _problems(pipeline, [[3]])


def test_run_rejects_bad_groups_before_anything_starts(tmp_path):
    cache = tmp_path / "cache"
    pipeline = _chain(str(tmp_path / "log"))
    with pytest.raises(PipelineValidationError, match="not in the pipeline"):
        pipeline.run(load_groups=[["gen", "nope"]])
    assert not (tmp_path / "log").exists()  # no worker loaded
    assert not cache.exists() or not any(cache.rglob("journal.jsonl"))


# -- real processes ----------------------------------------------------------------------


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _check_stage_order(events: list[dict], stages: list[list[str]]) -> None:
    """Each stage's loads come after every unload of the stage before, and no worker of an
    earlier stage is still alive when a later stage's step loads."""
    stage_of = {name: i for i, stage in enumerate(stages) for name in stage}
    loads = [e for e in events if e["event"] == "load"]
    unloads = [e for e in events if e["event"] == "unload"]
    for i in range(1, len(stages)):
        before = [e for e in unloads if stage_of[e["step"]] == i - 1]
        now = [e for e in loads if stage_of[e["step"]] == i]
        assert before and now, (i, events)
        earlier_pids = {e["pid"] for e in loads if stage_of[e["step"]] < i}
        for load in now:
            assert load["t"] > max(e["t"] for e in before), f"stage {i + 1} loaded {load['step']} too early"
            assert not set(load["alive"]) & earlier_pids, f"{load['step']} loaded while {load['alive']} still ran"


def _rows(distiset) -> dict[str, list[dict]]:
    return {name: distiset[name]["train"].to_list() for name in sorted(distiset)}


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_leftover_workers")
@pytest.mark.parametrize("mode", ["groups", "sequential"])
def test_each_stage_loads_after_the_previous_stage_unloaded_and_exited(tmp_path, monkeypatch, mode):
    log = tmp_path / "log"
    pipeline = build(str(log))
    stages = _stages(pipeline, load_groups(mode))
    staged = _rows(pipeline.run(load_groups=load_groups(mode)))
    events = _events(log)
    _check_stage_order(events, stages)
    loads = collections.Counter(e["step"] for e in events if e["event"] == "load")
    assert loads == dict.fromkeys(["gen", "a", "b", "c", "d"], 1)
    rows = collections.Counter((e["step"], e["n"]) for e in events if e["event"] == "row")
    assert set(rows.values()) == {1} and len(rows) == 5 * 60  # every row once, earlier stages replayed from disk
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(tmp_path / "plain"))
    assert staged == _rows(build(str(tmp_path / "plain.log")).run())  # the same result as without stages


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_leftover_workers")
def test_a_worker_crash_in_a_stage_is_survived_and_the_next_stage_still_waits(tmp_path):
    log = tmp_path / "log"
    result = _rows(build(str(log), "crash").run(load_groups=GROUPS))
    assert len(result["d"]) == 60 and [r["c"] for r in result["d"]] == [f"c:{n}" for n in range(60)]
    events = _events(log)
    assert (tmp_path / "log.crashed").exists()
    c_loads = [e for e in events if e["step"] == "c" and e["event"] == "load"]
    assert len(c_loads) == 2  # restarted after the crash
    _check_stage_order(events, GROUPS)


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_leftover_workers")
def test_a_stage_that_fails_stops_the_run_before_the_next_stage_loads(tmp_path):
    log = tmp_path / "log"
    with pytest.raises(StepFailed, match="step 'c' replica 0 died"):
        build(str(log), "crash_always").run(load_groups=GROUPS)
    assert not [e for e in _events(log) if e["step"] == "d"]


def _start(tmp_path: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": python_path(TESTS_DIR), "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache"),
           "SYNTHPIPE_PROGRESS": "0"}
    return subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path / "log"), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def _wait_for_rows(log: Path, step_name: str, count: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and sum(1 for e in _events(log) if e["step"] == step_name and e["event"] == "row") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step_name} never processed {count} rows: {proc.communicate()[1]}")


def _finish(proc: subprocess.Popen) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the run did not end (hang):\n{err}") from None


def _group_alive(pgid: int) -> list[int]:
    alive = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(entry.name))
    return alive


def _journal_batches(tmp_path: Path) -> collections.Counter:
    (journal,) = (tmp_path / "cache").glob("stages-*/journal.jsonl")
    records = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    return collections.Counter((r["step"], r["seq"]) for r in records if r["t"] == "batch")


@pytest.mark.timeout(240)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_stopped_in_the_second_stage_then_resumed_recomputes_nothing(tmp_path, signum):
    log = tmp_path / "log"
    proc = _start(tmp_path, "slow")
    _wait_for_rows(log, "b", 10, proc)  # stage 2 is running
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl+C does: every process of the group gets it
    else:
        os.kill(proc.pid, signal.SIGKILL)  # the coordinator alone
    out, err = _finish(proc)
    if signum == signal.SIGINT:
        assert proc.returncode in (-signal.SIGINT, 130), err  # KeyboardInterrupt, as Python exits on it
        assert "Run the same pipeline again to resume" in err
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(proc.pid), "workers outlived the stopped run"
    assert "RUN FINISHED" not in out
    first = _events(log)
    assert not [e for e in first if e["step"] == "d"]  # the third stage never started
    stored_before = _journal_batches(tmp_path)

    proc = _start(tmp_path, "slow")
    out, err = _finish(proc)
    assert proc.returncode == 0 and "RUN FINISHED" in out, err
    assert "ROWS {'b': 60, 'd': 60}" in out
    assert "finished by an earlier run" in err
    second = _events(log)[len(first):]
    assert not [e for e in second if e["step"] in ("gen", "a")]  # the finished stage was not even loaded
    _check_stage_order(second, [["b", "c"], ["d"]])
    assert set(_journal_batches(tmp_path).values()) == {1}  # no batch stored twice: none computed again
    assert stored_before  # and the first run's were kept
    rows = collections.Counter((e["step"], e["n"]) for e in first + second if e["event"] == "row")
    if signum == signal.SIGINT:  # a graceful stop lets the batches in flight finish: not one row twice
        assert set(rows.values()) == {1}
    assert len(rows) == 5 * 60


@pytest.mark.timeout(300)
def test_the_staged_example_runs_offline_from_a_shell_one_model_after_the_other(tmp_path):
    root = TESTS_DIR.parent
    env = {**os.environ, "PYTHONPATH": python_path(root / "src"), "SYNTHPIPE_CACHE_DIR": str(tmp_path),
           "SYNTHPIPE_PROGRESS": "0"}
    done = subprocess.run([sys.executable, str(root / "examples" / "staged_pipeline.py")], capture_output=True,
                          text=True, timeout=280, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "load stage 3 of 3: review" in done.stderr
    assert "8 rows; run directory:" in done.stdout
    windows = {}
    for line in done.stdout.splitlines():
        if "computed its batches from" in line:
            step, _, _, _, _, start, _, end = line.split()
            windows[step] = (start, end)
    assert set(windows) == {"write", "review"}
    assert windows["write"][1] < windows["review"][0]  # HH:MM:SS.mmm of one day: the review stage came after
