"""Routing batch functions with real pipelines: each batch goes only where its routing
function says, the convergence step gets each routed batch whole and in order, decisions are
stored and replayed on resume (also after SIGKILL), and a routing function's failure stops
the run with its name and its own error."""

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

import routing_pipeline
from conftest import python_path
from routing_pipeline import Branch, build
from steps_lib import CountingGenerator
from synthpipe.errors import PipelineDefinitionError, PipelineFileError, PipelineValidationError, StepFailed
from synthpipe.pipeline import Pipeline, RoutingBatchFunction, routing_batch_function, sample_n_steps
from synthpipe.steps import GroupColumns
from synthpipe.store.signature import plan_signatures

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_leftover_workers")]

TESTS_DIR = Path(__file__).parent
SCRIPT = TESTS_DIR / "routing_pipeline.py"
BRANCHES = ("a", "b", "c")
ROWS, PRE_BATCH = 140, 7


# -- the definition ------------------------------------------------------------------------


def test_every_form_of_the_decorator_makes_a_routing_function():
    @routing_batch_function
    def bare(steps):
        return steps[:1]

    @routing_batch_function()
    def called(steps):
        return steps[1:]

    @routing_batch_function(description="the last one")
    def described(steps):
        return steps[-1:]

    @routing_batch_function("positional description")
    def positional(steps):
        return steps

    for fn in (bare, called, described, positional):
        assert isinstance(fn, RoutingBatchFunction)
    assert bare(["a", "b", "c"]) == ["a"] and called(["a", "b", "c"]) == ["b", "c"]
    assert described.description == "the last one" and positional.description == "positional description"
    assert bare.description is None and bare.name == "bare"
    picked = sample_n_steps(2)(["a", "b", "c"])
    assert len(picked) == 2 and set(picked) <= {"a", "b", "c"}
    with pytest.raises(PipelineDefinitionError, match="n must be a whole number"):
        sample_n_steps(0)


def test_the_distilabel_import_path_gives_the_same_objects():
    import synthpipe.pipeline as ours

    assert ours.routing_batch_function is routing_batch_function and ours.sample_n_steps is sample_n_steps
    from synthpipe.pipeline.routing import routing_batch_function as direct

    assert direct is routing_batch_function


def test_impossible_routing_is_refused_before_anything_runs(tmp_path):
    with Pipeline(name="too-many", cache_dir=str(tmp_path)) as pipeline:
        gen = CountingGenerator(name="gen", total=10)
        gen >> sample_n_steps(3) >> [Branch(name="a"), Branch(name="b")]
    with pytest.raises(PipelineValidationError, match=r"sample_n_steps\(3\) needs at least 3 steps"):
        pipeline.run()

    with Pipeline(name="nowhere", cache_dir=str(tmp_path)) as pipeline:
        gen = CountingGenerator(name="gen", total=10)
        gen >> routing_pipeline.route_two
    with pytest.raises(PipelineValidationError, match="routing function 'route_two' but no step after it"):
        pipeline.run()

    with Pipeline(name="mixed", cache_dir=str(tmp_path)) as pipeline:
        gen = CountingGenerator(name="gen", total=10)
        a, b, other = Branch(name="a"), Branch(name="b"), Branch(name="other")
        pre = Branch(name="pre")
        gen >> pre >> sample_n_steps(1) >> [a, b]
        gen >> other
        [a, other] >> GroupColumns(name="group", columns=["branch"])
    with pytest.raises(PipelineValidationError, match="start from different sources"):
        pipeline.run()

    with pytest.raises(PipelineDefinitionError, match="has no step before it"):
        sample_n_steps(1) >> [Branch(name="x")]


# -- running -------------------------------------------------------------------------------


def _routes(cache: Path) -> dict[int, list[str]]:
    """pre's stored decisions, per batch, from the journal."""
    decisions: dict[int, list[str]] = {}
    for record in _journal(cache):
        if record["t"] == "batch" and record["step"] == "pre":
            assert record["seq"] not in decisions, "a batch of pre was stored twice"
            decisions[record["seq"]] = record["route"]
    return decisions


def _journal(cache: Path) -> list[dict]:
    (store,) = cache.glob("routed-*")
    return [json.loads(line) for line in (store / "journal.jsonl").read_text().splitlines() if line.strip()]


def _calls(path: Path) -> collections.Counter:
    return collections.Counter(path.read_text().splitlines()) if path.exists() else collections.Counter()


def _check_routed_result(rows: list[dict], decisions: dict[int, list[str]], calls: collections.Counter,
                         column: str = "branches", max_runs: int = 1) -> None:
    """Every row once, in order, grouped from exactly the branches its batch was routed to
    (in pipeline order); no branch ever saw a row routed elsewhere."""
    assert [r["n"] for r in rows] == list(range(ROWS))
    assert sorted(decisions) == list(range(ROWS // PRE_BATCH))
    for row in rows:
        chosen = decisions[row["n"] // PRE_BATCH]
        assert len(chosen) == 2 and chosen == [b for b in BRANCHES if b in chosen]
        assert row[column] == chosen, row
        for branch in BRANCHES:
            seen = calls[f"{branch}:q{row['n']}"]
            assert (1 <= seen <= max_runs) if branch in chosen else seen == 0, (branch, row, seen)


def test_each_batch_goes_only_where_it_is_routed_and_converges_whole_and_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(tmp_path / "cache"))
    calls = tmp_path / "calls"
    distiset = build(str(calls)).run()
    decisions = _routes(tmp_path / "cache")
    _check_routed_result(distiset["default"]["train"].to_list(), decisions, _calls(calls))
    counted = _calls(calls)
    assert counted["route"] == ROWS // PRE_BATCH  # once per routed batch
    used = collections.Counter(b for chosen in decisions.values() for b in chosen)
    assert len(used) == 3  # random.sample over 20 batches reached every branch


def test_a_resumed_run_routes_stored_batches_as_before_without_asking_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(tmp_path / "cache"))
    calls = tmp_path / "calls"
    first = build(str(calls)).run()["default"]["train"].to_list()
    before = _calls(calls)
    # the convergence step changed: it alone is computed again, from the stored routed batches
    second = build(str(calls), group_name="took").run()["default"]["train"].to_list()
    assert _calls(calls) == before  # no step before it ran again, and no batch was routed again
    assert [r["took"] for r in second] == [r["branches"] for r in first]
    _check_routed_result(second, _routes(tmp_path / "cache"), before, column="took")


def test_a_generator_can_route_straight_to_leaves(tmp_path):
    with Pipeline(name="to-leaves", cache_dir=str(tmp_path)) as pipeline:
        gen = CountingGenerator(name="gen", total=60, batch_size=10)
        gen >> sample_n_steps(1) >> [Branch(name="a", input_batch_size=4), Branch(name="b", input_batch_size=25)]
    distiset = pipeline.run()
    a, b = (distiset[name]["train"].to_list() for name in ("a", "b"))
    assert sorted(r["n"] for r in a + b) == list(range(60))  # each row in exactly one leaf
    for rows in (a, b):
        assert [r["n"] for r in rows] == sorted(r["n"] for r in rows)
        assert len({r["n"] // 10 for r in rows}) * 10 == len(rows)  # whole generator batches


def _failing_pipeline(tmp_path: Path, route: RoutingBatchFunction) -> Pipeline:
    with Pipeline(name="bad-route", cache_dir=str(tmp_path)) as pipeline:
        gen = CountingGenerator(name="gen", total=30, batch_size=10)
        gen >> Branch(name="pre") >> route >> [Branch(name="a"), Branch(name="b")]
    return pipeline


@routing_batch_function
def exploding(steps):
    if len(steps) > 1:
        raise KeyError("no route for this batch")
    return steps


def test_a_routing_function_that_raises_stops_the_run_with_its_name_and_its_error(tmp_path):
    with pytest.raises(StepFailed) as caught:
        _failing_pipeline(tmp_path, exploding).run()
    message = str(caught.value)
    assert "step 'pre'" in message and "routing function 'exploding'" in message
    assert "KeyError" in message and "no route for this batch" in message
    record = caught.value.record
    assert 'raise KeyError("no route for this batch")' in record.traceback  # the user's own line
    assert record.traceback.index("in exploding") < len(record.traceback)
    assert isinstance(caught.value.__cause__, KeyError)


def test_a_routing_function_naming_unknown_steps_stops_the_run(tmp_path):
    @routing_batch_function
    def misspelt(steps):
        return ["a", "bee"]

    with pytest.raises(StepFailed, match=r"routing function 'misspelt'.*unknown step\(s\) 'bee'.*among a, b"):
        _failing_pipeline(tmp_path, misspelt).run()

    @routing_batch_function
    def nowhere(steps):
        return []

    with pytest.raises(StepFailed, match="routing function 'nowhere' chose no step"):
        _failing_pipeline(tmp_path, nowhere).run()


# -- kill and resume -----------------------------------------------------------------------


def _stored_batches(cache: Path) -> int:
    journals = list(cache.glob("routed-*/journal.jsonl"))
    return journals[0].read_text().count('"t":"batch"') if journals else 0


def _run_program(cache: Path, calls: Path, kill_at_batches: int | None,
                 signum: int = signal.SIGKILL) -> tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": python_path(TESTS_DIR), "SYNTHPIPE_CACHE_DIR": str(cache),
           "SYNTHPIPE_PROGRESS": "0"}
    before = _stored_batches(cache)
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(calls)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    if kill_at_batches is not None:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if _stored_batches(cache) - before >= kill_at_batches:
                proc.send_signal(signum)
                break
            time.sleep(0.01)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the run did not end (hang):\n{err}") from None
    return "RUN FINISHED" in out, err


@pytest.mark.parametrize("signum, kills", [(signal.SIGKILL, (5, 30, 20)), (signal.SIGKILL, (0, 12, 45)),
                                           (signal.SIGINT, (8, 25))], ids=["SIGKILL-early-and-late",
                                                                          "SIGKILL-at-start", "SIGINT"])
def test_kill_and_resume_routes_every_stored_batch_as_before(tmp_path, monkeypatch, signum, kills):
    cache, calls = tmp_path / "cache", tmp_path / "calls"
    interruptions = 0
    for kill_at in [*kills, None, None]:
        finished, err = _run_program(cache, calls, kill_at, signum)
        if finished:
            break
        interruptions += 1
        if signum == signal.SIGINT and "already finished" not in err:
            assert "kept what finished" in err and "Run the same pipeline again to resume" in err, err
    else:
        raise AssertionError("the pipeline never finished")
    assert interruptions >= 2, "the kills came too late to test anything; adjust them"
    batches = collections.Counter((r["step"], r["sig"], r["seq"]) for r in _journal(cache) if r["t"] == "batch")
    assert max(batches.values()) == 1, [k for k, v in batches.items() if v > 1]  # nothing computed twice
    decisions = _routes(cache)
    counted = _calls(calls)
    # a routing call is repeated only for a batch whose decision was not yet durable at a kill
    assert ROWS // PRE_BATCH <= counted["route"] <= ROWS // PRE_BATCH + interruptions
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(cache))
    rows = build(str(calls)).run()["default"]["train"].to_list()  # finished: read back, nothing runs
    assert _calls(calls) == counted
    _check_routed_result(rows, decisions, counted, max_runs=1 + interruptions)


# -- pipeline files ------------------------------------------------------------------------


def _signatures(pipeline: Pipeline) -> dict[str, str]:
    dag = pipeline.dag
    return plan_signatures(dag.topological_order(), dag.nodes, {n: dag.predecessors(n) for n in dag},
                           {n: r.signature_form() for n, r in pipeline.routing.items()})


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_routing_functions_round_trip_in_pipeline_files(tmp_path, monkeypatch, fmt):
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(tmp_path / "cache"))
    pipeline = build(str(tmp_path / "calls"))
    path = pipeline.save(tmp_path / f"routed.{fmt}")
    text = path.read_text()
    assert "routing_pipeline:route_two" in text
    other = path.with_name(f"other.{fmt}")  # a routing function from a module the caller did not allow
    other.write_text(text.replace("routing_pipeline:route_two", "test_routing:exploding"))
    with pytest.raises(PipelineFileError, match="routing function of step 'pre': test_routing:exploding comes "
                                                "from outside synthpipe.*allow_custom=\\['test_routing'\\]"):
        Pipeline.from_file(other, allow_custom=["routing_pipeline", "steps_lib"])
    loaded = Pipeline.from_file(path, allow_custom=["routing_pipeline", "steps_lib"])
    assert loaded.dump() == pipeline.dump()
    assert loaded.routing["pre"].routing_function is routing_pipeline.route_two.routing_function
    assert _signatures(loaded) == _signatures(pipeline)
    # the same signatures: the loaded pipeline finds the original's result
    first = pipeline.run()["default"]["train"].to_list()
    before = _calls(tmp_path / "calls")
    assert loaded.run()["default"]["train"].to_list() == first
    assert _calls(tmp_path / "calls") == before

    with Pipeline(name="sampled") as sampled:
        gen = CountingGenerator(name="gen", total=10)
        gen >> sample_n_steps(2) >> [Branch(name="a"), Branch(name="b"), Branch(name="c")]
    again = Pipeline.from_dict(json.loads(json.dumps(sampled.dump())), allow_custom=["routing_pipeline", "steps_lib"])
    assert again.routing["gen"].routing_function.n == 2
    assert {"step": "gen", "sample_n_steps": 2} == {k: v for k, v in sampled.dump()["pipeline"]["routing"][0].items()
                                                  if k != "description"}
    assert _signatures(again) == _signatures(sampled)
    assert _signatures(again) != _signatures(build(""))


def test_a_routing_function_without_an_import_path_is_refused_at_save_time(tmp_path):
    def in_main(steps):
        return steps

    in_main.__module__ = "__main__"
    in_main.__qualname__ = "in_main"
    for fn, why in ((in_main, "defined in __main__"), (lambda steps: steps, "a lambda or is defined inside")):
        with Pipeline(name="unsaveable") as pipeline:
            gen = CountingGenerator(name="gen", total=10)
            gen >> routing_batch_function(fn) >> [Branch(name="a"), Branch(name="b")]
        with pytest.raises(PipelineFileError, match=f"routing function of step 'gen'.*{why}.*sample_n_steps"):
            pipeline.save(tmp_path / "p.yaml")
        assert not (tmp_path / "p.yaml").exists()


def test_the_routed_example_runs_offline_from_a_shell(tmp_path):
    root = TESTS_DIR.parent
    env = {**os.environ, "PYTHONPATH": python_path(root / "src"), "SYNTHPIPE_CACHE_DIR": str(tmp_path),
           "SYNTHPIPE_PROGRESS": "0"}
    done = subprocess.run([sys.executable, str(root / "examples" / "routed_pipeline.py")], capture_output=True,
                          text=True, timeout=200, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    answered = [line for line in done.stdout.splitlines() if "answered by" in line]
    assert len(answered) == 12
    for line in answered:  # two different generators per instruction, in pipeline order
        models = line.split("answered by ")[1]
        assert models in ("['offline-a', 'offline-b']", "['offline-a', 'offline-c']", "['offline-b', 'offline-c']")
    assert "answers per model:" in done.stdout


# -- the scheduler alone (pure: every routing case is a fast unit test) ---------------------


class _SeededRouter:
    """Two of the steps, from a seeded generator; counts its calls."""

    name = "seeded"

    def __init__(self, seed: int) -> None:
        import random

        self.rng, self.calls = random.Random(seed), 0

    def choose(self, steps):
        self.calls += 1
        picked = self.rng.sample(list(steps), self.rng.choice([1, 2, 2, 3]))
        return [s for s in steps if s in picked]


def _routed_specs():
    from fake_executor import gen, step

    return [
        gen("gen", ("pre",), batch_size=7),
        step("pre", ("gen",), ("a", "b", "c"), batch_size=5, replicas=2),
        step("a", ("pre",), ("conv",), batch_size=3, replicas=2),
        step("b", ("pre",), ("conv",), batch_size=4),
        step("c", ("pre",), ("conv",), batch_size=11, replicas=3),
        step("conv", ("a", "b", "c"), (), batch_size=2),
    ]


def _check_convergence(ex, n: int, resumed: bool = False) -> None:
    """Each conv batch is one routed batch of pre: one input per chosen branch, rows in order;
    a branch sees exactly the rows routed to it (after a resume: no others)."""
    decided = {seq: p.routed_to for seq, p in ex.persisted["pre"].items()}
    pre_rows = {seq: [r["i"] for r in p.rows] for seq, p in ex.persisted["pre"].items()}
    conv = sorted(ex.dispatched["conv"], key=lambda b: b.seq)
    assert len(conv) + len(ex.replayed["conv"]) == len(pre_rows)
    for batch in conv:
        seq = batch.origins[0][0]
        assert len(batch.inputs) == len(decided[seq])
        for rows in batch.inputs:
            assert [r["i"] for r in rows] == pre_rows[seq]
    for branch in ("a", "b", "c"):
        routed = [i for seq in sorted(pre_rows) if branch in decided[seq] for i in pre_rows[seq]]
        if resumed:
            assert set(ex.processed[branch]) <= set(routed)
        else:
            assert sorted(ex.processed[branch]) == routed
    assert ex.emitted_i("conv") == list(range(n))


@pytest.mark.parametrize("seed", range(8))
def test_scheduler_routes_and_converges_whatever_order_workers_finish_in(seed):
    from fake_executor import FakeExecutor, rows_of

    router = _SeededRouter(seed)
    ex = FakeExecutor(_routed_specs(), {"gen": rows_of(61)}, seed=seed, fifo=seed % 2 == 0,
                      routers={"pre": router}).run()
    assert ex.finished == 1 and not ex.fails
    assert router.calls == len(ex.persisted["pre"]) == 13
    _check_convergence(ex, 61)


@pytest.mark.parametrize("seed", range(6))
def test_scheduler_resume_replays_stored_decisions_without_asking_the_router(seed):
    from fake_executor import FakeExecutor, after, rows_of

    first = FakeExecutor(_routed_specs(), {"gen": rows_of(61)}, seed=seed, routers={"pre": _SeededRouter(seed)},
                         hooks=[(after(20 + 3 * seed), FakeExecutor.abandon)]).run()
    stored = first.persisted_store()
    router = _SeededRouter(seed + 100)
    second = FakeExecutor(_routed_specs(), {"gen": rows_of(61)}, seed=seed, stored=stored,
                          routers={"pre": router}).run()
    assert second.finished == 1 and not second.fails
    kept = stored.get("pre", {})
    assert 0 < len(kept) < 13  # killed midway
    assert router.calls == 13 - len(kept)  # only batches never stored are routed
    for seq in kept:
        assert second.persisted["pre"].get(seq) is None  # replayed, not stored again
        second.persisted["pre"][seq] = first.persisted["pre"][seq]  # for the check below
    _check_convergence(second, 61, resumed=True)


def test_scheduler_routes_a_global_steps_single_batch_and_a_chain_inside_a_branch():
    from fake_executor import FakeExecutor, gen, glob, rows_of, step

    class Second:
        name = "second"
        calls = 0

        def choose(self, steps):
            Second.calls += 1
            return [steps[1], steps[2]]

    specs = [
        gen("gen", ("all",), batch_size=4),
        glob("all", ("gen",), ("a", "b", "c")),
        step("a", ("all",), ("conv",), batch_size=3),
        step("b", ("all",), ("b2",), batch_size=3),
        step("b2", ("b",), ("conv",), batch_size=7),
        step("c", ("all",), ("conv",), batch_size=5),
        step("conv", ("a", "b2", "c"), (), batch_size=2),
    ]
    ex = FakeExecutor(specs, {"gen": rows_of(10)}, routers={"all": Second()}).run()
    assert ex.finished == 1 and not ex.fails and Second.calls == 1
    assert not ex.processed["a"] and sorted(ex.processed["b2"]) == list(range(10))
    (batch,) = ex.dispatched["conv"]
    assert [[r["i"] for r in rows] for rows in batch.inputs] == [list(range(10))] * 2  # b's chain, then c
    assert ex.emitted_i("conv") == list(range(10))


# -- routing with load stages ----------------------------------------------------------------


@pytest.mark.parametrize("groups", [[["group"]], [["a", "b", "c"], ["group"]], "sequential_step_execution"],
                         ids=["convergence-alone", "branches-then-convergence", "sequential"])
def test_routed_batches_converge_across_load_stages_without_hanging(tmp_path, monkeypatch, groups):
    """The convergence step in a stage of its own gets every routed batch from the store, whole
    and in order (distilabel can wait forever here)."""
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(tmp_path / "cache"))
    calls = tmp_path / "calls"
    distiset = build(str(calls), delay=0.0).run(load_groups=groups)
    decisions = _routes(tmp_path / "cache")
    _check_routed_result(distiset["default"]["train"].to_list(), decisions, _calls(calls))
    assert _calls(calls)["route"] == ROWS // PRE_BATCH  # routed once, in its own stage; replayed after


def test_a_staged_routed_run_resumed_after_sigkill_routes_as_before(tmp_path, monkeypatch):
    """SIGKILL of the coordinator while the branches' stage runs (the routing step's stage has
    finished); the resumed run reuses the finished stage and every stored routing decision."""
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(tmp_path / "cache"))
    calls = tmp_path / "calls"
    groups = [["a", "b", "c"], ["group"]]
    env = {**os.environ, "PYTHONPATH": python_path(), "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache")}
    code = ("import sys, routing_pipeline; p = routing_pipeline.build(sys.argv[1], delay=0.1); "
            f"p.run(load_groups={groups!r}); print('RUN FINISHED')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(calls)], cwd=TESTS_DIR, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if any(line.split(":")[0] in BRANCHES for line in _calls(calls)):
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stdout.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    before = _routes(tmp_path / "cache")
    assert len(before) == ROWS // PRE_BATCH  # the routing stage had finished: every decision stored
    seen = _calls(calls)
    distiset = build(str(calls), delay=0.1).run(load_groups=groups)  # the same steps: same signatures
    after = _calls(calls)
    assert after["route"] == seen["route"] and _routes(tmp_path / "cache") == before  # nothing routed again
    assert all(after[k] == seen[k] for k in after if k.startswith(("gen:", "pre:")))  # first stage reused
    _check_routed_result(distiset["default"]["train"].to_list(), before, after, max_runs=2)
