"""Unit tests of the pure scheduler (``synthpipe.runtime.scheduler``).

No processes: ``FakeExecutor`` plays every worker. It answers ``Generate`` with slices of a
list of rows (the final one flagged ``last``), answers ``Dispatch`` by applying a plain
function to copies of the batch inputs (as a worker would after unpickling), and completes
outstanding work in a seeded random order: each replica works through its own queue in
order (as a real worker does), replicas finish in any order, and ``weights`` make a step
slow. Every loop is bounded, so a scheduler that stalls fails the test instead of hanging.
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import pytest

from synthpipe.errors import ErrorRecord
from synthpipe.runtime.scheduler import (
    Action,
    Batch,
    Dispatch,
    Emit,
    Fail,
    Finished,
    Generate,
    RowsFailed,
    Scheduler,
    StepSpec,
)

Row = dict[str, Any]
StepFn = Callable[[list[list[Row]]], list[Row]]


class StepError(Exception):
    """Raised by a fake step function: the driver reports it as ``batch_failed``."""


def rows_of(n: int) -> list[Row]:
    return [{"i": k} for k in range(n)]


def gen(name: str = "gen", successors: tuple[str, ...] = (), batch_size: int = 7, **kw: Any) -> StepSpec:
    return StepSpec(name, "generator", (), successors, batch_size=batch_size, **kw)


def step(name: str, preds: tuple[str, ...], succs: tuple[str, ...] = (), batch_size: int = 5, **kw: Any) -> StepSpec:
    return StepSpec(name, "normal", preds, succs, batch_size=batch_size, **kw)


def glob(name: str, preds: tuple[str, ...], succs: tuple[str, ...] = (), **kw: Any) -> StepSpec:
    return StepSpec(name, "global", preds, succs, batch_size=50, **kw)


def identity(inputs: list[list[Row]]) -> list[Row]:
    return inputs[0]


def tag(label: str) -> StepFn:
    """A 1:1 step that returns new dicts (no identity with its inputs) carrying a trail."""

    def fn(inputs: list[list[Row]]) -> list[Row]:
        return [{**r, "trail": r.get("trail", "") + label} for r in inputs[0]]

    return fn


def keep(pred: Callable[[Row], bool]) -> StepFn:
    """A filter that keeps the surviving input rows themselves (so an index map exists)."""

    def fn(inputs: list[list[Row]]) -> list[Row]:
        return [r for r in inputs[0] if pred(r)]

    return fn


def merge(inputs: list[list[Row]]) -> list[Row]:
    """A join step: one output row per origin group, listing what each branch delivered."""
    return [{"branches": [[r["i"] for r in branch] for branch in inputs]}]


class FakeExecutor:
    """Plays every worker of a pipeline against a real ``Scheduler``."""

    def __init__(
        self,
        specs: list[StepSpec],
        data: dict[str, list[Row]] | None = None,
        fns: dict[str, StepFn] | None = None,
        *,
        seed: int = 0,
        max_rows_in_flight: int = 20_000,
        worker_capacity: int = 2,
        weights: dict[str, float] | None = None,
        fifo: bool = True,
        empty_last: bool = False,
        gen_fail_at: dict[str, int] | None = None,
        late: dict[str, int] | None = None,
    ) -> None:
        self.specs = {s.name: s for s in specs}
        self.sched = Scheduler(specs, max_rows_in_flight=max_rows_in_flight, worker_capacity=worker_capacity)
        self.data = data or {}
        self.fns = fns or {}
        self.rng = random.Random(seed)
        self.weights = weights or {}
        self.fifo = fifo
        self.empty_last = empty_last  # generators: flag `last` only on an extra, empty batch
        self.gen_fail_at = gen_fail_at or {}
        self.late = late or {}  # step -> number of completions before its workers become ready
        self.cursor: dict[str, int] = defaultdict(int)
        self.exhausted: set[str] = set()
        self.queues: dict[tuple[str, int], deque[Dispatch | Generate]] = {}
        # what happened
        self.actions: list[Action] = []
        self.dispatched: dict[str, list[Batch]] = defaultdict(list)
        self.generates: dict[str, list[int]] = defaultdict(list)
        self.completion_order: dict[str, list[int]] = defaultdict(list)
        self.emits: dict[str, list[Emit]] = defaultdict(list)
        self.rows_failed: list[RowsFailed] = []
        self.fails: list[Fail] = []
        self.finished = 0
        self.after_end: list[Action] = []
        self.peak_outstanding: dict[tuple[str, int], int] = defaultdict(int)
        self.peak_held = 0  # rows_held() plus rows asked of generators, at their highest
        self.generated_rows = 0
        self.emitted_rows = 0
        self.held_mismatch: list[tuple[int, int]] = []  # (rows_held(), generated - emitted), linear chains

    # -- bookkeeping ------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return bool(self.finished or self.fails)

    def emitted(self, leaf: str) -> list[Row]:
        return [r for e in self.emits[leaf] for r in e.rows]

    def emitted_i(self, leaf: str) -> list[int]:
        return [r["i"] for r in self.emitted(leaf)]

    def apply(self, actions: list[Action]) -> None:
        if self.stopped:
            self.after_end.extend(actions)
            return
        for action in actions:
            self.actions.append(action)
            if isinstance(action, Dispatch):
                assert action.batch.step in self.specs
                key = (action.batch.step, action.replica)
                assert key in self.queues, f"dispatch to a replica that never said ready: {key}"
                self.dispatched[action.batch.step].append(action.batch)
                self.queues[key].append(action)
            elif isinstance(action, Generate):
                key = (action.step, action.replica)
                assert key in self.queues, f"generate on a replica that never said ready: {key}"
                self.generates[action.step].append(action.seq)
                self.queues[key].append(action)
            elif isinstance(action, Emit):
                self.emits[action.step].append(action)
                self.emitted_rows += len(action.rows)
            elif isinstance(action, RowsFailed):
                self.rows_failed.append(action)
            elif isinstance(action, Fail):
                self.fails.append(action)
            elif isinstance(action, Finished):
                self.finished += 1
            else:  # pragma: no cover
                raise AssertionError(f"unknown action {action!r}")
        self.observe()

    def observe(self) -> None:
        for key, q in self.queues.items():
            self.peak_outstanding[key] = max(self.peak_outstanding[key], len(q))
        asked = sum(
            len(q) * self.specs[name].batch_size
            for (name, _), q in self.queues.items()
            if self.specs[name].kind == "generator"
        )
        self.peak_held = max(self.peak_held, self.sched.rows_held() + asked)

    def ready(self, name: str) -> None:
        for replica in range(self.specs[name].replicas):
            self.queues[(name, replica)] = deque()
            self.apply(self.sched.worker_ready(name, replica))

    # -- the workers ------------------------------------------------------------------------

    def _generate(self, name: str, seq: int) -> list[Action]:
        if self.gen_fail_at.get(name) == seq:
            err = ErrorRecord.from_message("GeneratorBroke", "boom", step=name, batch=seq, phase="generate")
            return self.sched.batch_failed(name, 0, seq, err)
        rows = self.data.get(name, [])
        size = self.specs[name].batch_size
        if name in self.exhausted:
            chunk, last = [], True
        else:
            start = self.cursor[name]
            chunk = [dict(r) for r in rows[start : start + size]]
            self.cursor[name] = start + len(chunk)
            done = self.cursor[name] >= len(rows)
            last = done and (not self.empty_last or not chunk)
            if last:
                self.exhausted.add(name)
        self.generated_rows += len(chunk)
        return self.sched.batch_done(name, 0, seq, chunk, last)

    def _process(self, replica: int, batch: Batch) -> list[Action]:
        inputs = [[dict(r) for r in branch] for branch in batch.inputs]  # what unpickling gives
        fn = self.fns.get(batch.step, identity)
        try:
            out = fn(inputs)
        except StepError as exc:
            err = ErrorRecord.from_message("StepError", str(exc), step=batch.step, replica=replica, batch=batch.seq)
            return self.sched.batch_failed(batch.step, replica, batch.seq, err)
        return self.sched.batch_done(batch.step, replica, batch.seq, out, False)

    def complete_one(self) -> bool:
        keys = [k for k, q in self.queues.items() if q]
        if not keys:
            return False
        key = self.rng.choices(keys, weights=[self.weights.get(k[0], 1.0) for k in keys])[0]
        q = self.queues[key]
        if self.fifo or self.specs[key[0]].kind == "generator":
            action = q.popleft()
        else:
            action = q[self.rng.randrange(len(q))]
            q.remove(action)
        if isinstance(action, Generate):
            self.completion_order[action.step].append(action.seq)
            self.apply(self._generate(action.step, action.seq))
        else:
            self.completion_order[action.batch.step].append(action.batch.seq)
            self.apply(self._process(key[1], action.batch))
        return True

    def run(self, max_steps: int = 100_000, check_linear_held: bool = False) -> FakeExecutor:
        self.apply(self.sched.start())
        names = [n for n in self.specs if n not in self.late]
        self.rng.shuffle(names)
        for name in names:
            self.ready(name)
        late = dict(self.late)
        for n_done in range(max_steps):
            for name, when in list(late.items()):
                if n_done >= when:
                    del late[name]
                    self.ready(name)
            if self.stopped:
                break
            if not self.complete_one():
                if not late:
                    raise AssertionError("deadlock: nothing outstanding but the run is not over")
                name = min(late, key=late.__getitem__)  # nothing to do until that worker is ready
                del late[name]
                self.ready(name)
                continue
            if check_linear_held:
                expected = self.generated_rows - self.emitted_rows
                if self.sched.rows_held() != expected:
                    self.held_mismatch.append((self.sched.rows_held(), expected))
        else:
            raise AssertionError(f"no Finished/Fail after {max_steps} completions")
        # Answer whatever is still outstanding: the scheduler must not act any more.
        for _ in range(max_steps):
            if not self.complete_one():
                break
        return self


# -- batching -------------------------------------------------------------------------------


def test_rebatching_7_to_5_to_3_keeps_order_and_sizes():
    specs = [
        gen("gen", ("a",), batch_size=7),
        step("a", ("gen",), ("b",), batch_size=5, replicas=2),
        step("b", ("a",), (), batch_size=3, replicas=2),
    ]
    ex = FakeExecutor(specs, {"gen": rows_of(23)}, {"a": tag("a"), "b": tag("b")}, seed=1).run()

    assert ex.finished == 1 and not ex.fails and ex.after_end == []
    assert ex.generates["gen"][:4] == [0, 1, 2, 3]
    a = sorted(ex.dispatched["a"], key=lambda b: b.seq)
    b = sorted(ex.dispatched["b"], key=lambda b: b.seq)
    assert [x.size for x in a] == [5, 5, 5, 5, 3]
    assert [x.size for x in b] == [3, 3, 3, 3, 3, 3, 3, 2]
    # row numbers within the step's input stream, and origins = generator batch of each row
    assert [x.row_start for x in a] == [0, 5, 10, 15, 20]
    assert [x.rows for x in b] == [(0, 2), (3, 5), (6, 8), (9, 11), (12, 14), (15, 17), (18, 20), (21, 22)]
    for x in a:
        assert len(x.inputs) == 1
        assert x.origins == [[r["i"] // 7 for r in x.inputs[0]]]
    # past the first step, origins only need to stay ordered (no join needs them exact)
    b_origins = [o for x in b for o in x.origins[0]]
    assert b_origins == sorted(b_origins)
    assert [r["i"] for x in a for r in x.inputs[0]] == list(range(23))
    # leaf output: every row once, in order, through both steps
    assert ex.emitted_i("b") == list(range(23))
    assert {r["trail"] for r in ex.emitted("b")} == {"ab"}
    assert [e.seq for e in ex.emits["b"]] == list(range(8))
    stats = ex.sched.stats()
    assert (stats["gen"].rows_out, stats["gen"].batches) == (23, 4)
    assert (stats["a"].rows_in, stats["a"].rows_out, stats["a"].batches) == (23, 23, 5)
    assert (stats["b"].rows_in, stats["b"].rows_out, stats["b"].batches) == (23, 23, 8)


def test_batch_sizes_when_generator_batch_is_a_multiple_of_step_batch():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5)]
    ex = FakeExecutor(specs, {"gen": rows_of(30)}).run()
    a = sorted(ex.dispatched["a"], key=lambda b: b.seq)
    assert [x.size for x in a] == [5] * 6
    assert ex.emitted_i("a") == list(range(30))


# -- ordering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fifo", [True, False], ids=["replica-fifo", "any-order"])
def test_ordered_release_with_three_replicas_finishing_out_of_order(fifo):
    specs = [
        gen("gen", ("a",), batch_size=10),
        step("a", ("gen",), ("leaf",), batch_size=4, replicas=3),
        step("leaf", ("a",), (), batch_size=6, replicas=3),
    ]
    ex = FakeExecutor(
        specs, {"gen": rows_of(200)}, {"a": tag("a"), "leaf": tag("l")}, seed=7, fifo=fifo, worker_capacity=3
    ).run()
    assert ex.finished == 1
    # the workers really did finish out of order, on every replica
    assert ex.completion_order["a"] != sorted(ex.completion_order["a"])
    assert ex.completion_order["leaf"] != sorted(ex.completion_order["leaf"])
    assert {d.replica for d in ex.actions if isinstance(d, Dispatch) and d.batch.step == "a"} == {0, 1, 2}
    # yet the leaf sees, and emits, rows in the original order
    leaf_in = [r["i"] for b in sorted(ex.dispatched["leaf"], key=lambda b: b.seq) for r in b.inputs[0]]
    assert leaf_in == list(range(200))
    assert ex.emitted_i("leaf") == list(range(200))
    assert [e.seq for e in ex.emits["leaf"]] == list(range(len(ex.emits["leaf"])))


def test_dispatch_goes_to_least_loaded_replica():
    specs = [gen("gen", ("a",), batch_size=12), step("a", ("gen",), batch_size=4, replicas=3)]
    sched = Scheduler(specs, worker_capacity=2)
    assert sched.start() == []  # no worker is ready yet
    gen_actions = sched.worker_ready("gen", 0)
    assert [type(a) for a in gen_actions] == [Generate, Generate]
    assert [(a.step, a.replica, a.seq) for a in gen_actions] == [("gen", 0, 0), ("gen", 0, 1)]
    for r in range(3):
        assert sched.worker_ready("a", r) == []
    actions = sched.batch_done("gen", 0, 0, rows_of(12), False)
    dispatches = [a for a in actions if isinstance(a, Dispatch)]
    assert [(d.replica, d.batch.seq, d.batch.size) for d in dispatches] == [(0, 0, 4), (1, 1, 4), (2, 2, 4)]
    assert [a.seq for a in actions if isinstance(a, Generate)] == [2]


# -- fan-out ----------------------------------------------------------------------------------


def test_fan_out_gives_both_leaves_every_row():
    specs = [
        gen("gen", ("a",), batch_size=7),
        step("a", ("gen",), ("left", "right"), batch_size=5, replicas=2),
        step("left", ("a",), (), batch_size=3, replicas=2),
        step("right", ("a",), (), batch_size=8),
    ]
    fns = {"a": tag("a"), "left": tag("L"), "right": tag("R")}
    ex = FakeExecutor(specs, {"gen": rows_of(61)}, fns, seed=3).run()
    assert ex.finished == 1
    assert ex.emitted_i("left") == list(range(61))
    assert ex.emitted_i("right") == list(range(61))
    assert {r["trail"] for r in ex.emitted("left")} == {"aL"}
    assert {r["trail"] for r in ex.emitted("right")} == {"aR"}
    assert [b.size for b in sorted(ex.dispatched["right"], key=lambda b: b.seq)] == [8] * 7 + [5]
    assert [b.size for b in sorted(ex.dispatched["left"], key=lambda b: b.seq)] == [3] * 20 + [1]


def test_fan_out_from_generator_to_two_leaves():
    specs = [gen("gen", ("x", "y"), batch_size=4), step("x", ("gen",), batch_size=3), step("y", ("gen",), batch_size=9)]
    ex = FakeExecutor(specs, {"gen": rows_of(30)}, seed=5).run()
    assert ex.emitted_i("x") == list(range(30))
    assert ex.emitted_i("y") == list(range(30))


# -- fan-in (joins) -----------------------------------------------------------------------------


def check_join(ex: FakeExecutor, n: int, gen_size: int, keep_a: Callable[[int], bool], keep_b: Callable[[int], bool]):
    """Each join batch: one origin (generator batch), each branch's rows of it in order."""
    batches = sorted(ex.dispatched["join"], key=lambda b: b.seq)
    seen_origins = []
    for batch in batches:
        assert len(batch.inputs) == 2 and len(batch.origins) == 2
        flat = {o for origins in batch.origins for o in origins}
        assert len(flat) == 1, f"join batch {batch.seq} mixes origins {flat}"
        origin = flat.pop()
        seen_origins.append(origin)
        in_origin = [i for i in range(n) if i // gen_size == origin]
        assert [r["i"] for r in batch.inputs[0]] == [i for i in in_origin if keep_a(i)]
        assert [r["i"] for r in batch.inputs[1]] == [i for i in in_origin if keep_b(i)]
        assert batch.origins == [[origin] * len(batch.inputs[0]), [origin] * len(batch.inputs[1])]
    expected_origins = sorted({i // gen_size for i in range(n) if keep_a(i) or keep_b(i)})
    assert seen_origins == expected_origins
    # the join's output is released in origin order
    emitted = [e.rows[0]["branches"] for e in ex.emits["join"] if e.rows]
    assert emitted == [[[r["i"] for r in b.inputs[0]], [r["i"] for r in b.inputs[1]]] for b in batches]


def join_specs(a_size: int = 5, b_size: int = 3, a_reps: int = 2, b_reps: int = 3, gen_size: int = 7):
    return [
        gen("gen", ("a", "b"), batch_size=gen_size),
        step("a", ("gen",), ("join",), batch_size=a_size, replicas=a_reps),
        step("b", ("gen",), ("join",), batch_size=b_size, replicas=b_reps),
        step("join", ("a", "b"), (), batch_size=4, replicas=2),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_join_aligns_branches_by_origin(seed):
    n = 100
    ex = FakeExecutor(
        join_specs(), {"gen": rows_of(n)}, {"a": tag("a"), "b": tag("b"), "join": merge}, seed=seed, fifo=False
    ).run()
    assert ex.finished == 1
    assert ex.completion_order["a"] != sorted(ex.completion_order["a"])
    assert ex.completion_order["b"] != sorted(ex.completion_order["b"])
    check_join(ex, n, 7, lambda i: True, lambda i: True)
    assert len(ex.dispatched["join"]) == 15  # ceil(100 / 7) origins


@pytest.mark.parametrize("seed", [0, 1])
def test_join_aligns_by_origin_when_a_branch_filters_rows(seed):
    n = 100
    fns = {"a": tag("a"), "b": keep(lambda r: r["i"] % 3 != 0), "join": merge}
    ex = FakeExecutor(join_specs(), {"gen": rows_of(n)}, fns, seed=seed, fifo=False).run()
    assert ex.finished == 1
    check_join(ex, n, 7, lambda i: True, lambda i: i % 3 != 0)


def test_join_when_a_branch_drops_whole_origins():
    # generator batches of 3; branch b drops every row of even-numbered generator batches
    n = 60
    fns = {"b": keep(lambda r: (r["i"] // 3) % 2 == 1), "join": merge}
    ex = FakeExecutor(join_specs(a_size=4, b_size=2, gen_size=3), {"gen": rows_of(n)}, fns, seed=4, fifo=False).run()
    assert ex.finished == 1
    check_join(ex, n, 3, lambda i: True, lambda i: (i // 3) % 2 == 1)
    empties = [b for b in ex.dispatched["join"] if not b.inputs[1]]
    assert len(empties) == 10 and all(b.inputs[0] for b in empties)


def test_join_when_both_branches_drop_an_origin():
    n = 30
    drop = {1, 4}  # generator batches of 5 dropped by both branches
    fns = {
        "a": keep(lambda r: r["i"] // 5 not in drop),
        "b": keep(lambda r: r["i"] // 5 not in drop and r["i"] % 2 == 0),
        "join": merge,
    }
    ex = FakeExecutor(join_specs(a_size=3, b_size=4, gen_size=5), {"gen": rows_of(n)}, fns, seed=9).run()
    assert ex.finished == 1
    check_join(ex, n, 5, lambda i: i // 5 not in drop, lambda i: i // 5 not in drop and i % 2 == 0)
    assert len(ex.dispatched["join"]) == 4


def test_join_of_generator_and_a_branch_then_a_step_after():
    specs = [
        gen("gen", ("a", "join"), batch_size=6),
        step("a", ("gen",), ("join",), batch_size=4, replicas=2),
        step("join", ("gen", "a"), ("after",)),
        step("after", ("join",), (), batch_size=2),
    ]
    n = 40
    ex = FakeExecutor(specs, {"gen": rows_of(n)}, {"join": merge}, seed=2, fifo=False).run()
    assert ex.finished == 1
    batches = sorted(ex.dispatched["join"], key=lambda b: b.seq)
    assert [[r["i"] for r in b.inputs[0]] for b in batches] == [list(range(k, min(k + 6, n))) for k in range(0, n, 6)]
    assert all(b.inputs[0] == b.inputs[1] for b in batches)
    assert [i for r in ex.emitted("after") for i in r["branches"][0]] == list(range(n))


def test_join_stays_aligned_when_a_branch_filters_into_new_dicts():
    def rebuild(inputs: list[list[Row]]) -> list[Row]:
        return [{"i": r["i"]} for r in inputs[0] if r["i"] % 3 != 0]

    n = 30
    ex = FakeExecutor(join_specs(), {"gen": rows_of(n)}, {"b": rebuild, "join": merge}, seed=0).run()
    assert ex.finished == 1 and not ex.fails
    for batch in ex.dispatched["join"]:
        origin = batch.origins[0][0] if batch.origins[0] else batch.origins[1][0]
        assert {r["i"] // 7 for branch in batch.inputs for r in branch} == {origin}, batch
    # feeders of a join never mix generator batches in one batch
    for name in ("a", "b"):
        assert all(len({r["i"] // 7 for r in x.inputs[0]}) == 1 for x in ex.dispatched[name])


# -- global steps -------------------------------------------------------------------------------


def test_global_step_gets_all_rows_at_once_after_predecessors_finish():
    specs = [
        gen("gen", ("a",), batch_size=7),
        step("a", ("gen",), ("g",), batch_size=5, replicas=2),
        glob("g", ("a",), ("b",)),
        step("b", ("g",), (), batch_size=4, replicas=2),
    ]
    states_at_dispatch: list[tuple[bool, bool, int]] = []

    def g_fn(inputs: list[list[Row]]) -> list[Row]:
        st = ex.sched.states
        outstanding_a = sum(len(q) for (name, _), q in ex.queues.items() if name == "a")
        states_at_dispatch.append((st["gen"].finished, st["a"].finished, outstanding_a))
        rows = inputs[0]
        return [{"i": r["i"], "total": len(rows)} for r in reversed(rows)]

    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"g": g_fn}, seed=11, fifo=False, weights={"g": 0.1})
    ex.run()
    assert ex.finished == 1
    (gb,) = ex.dispatched["g"]
    assert gb.seq == 0 and len(gb.inputs) == 1
    assert [r["i"] for r in gb.inputs[0]] == list(range(50))
    assert states_at_dispatch == [(True, True, 0)]
    b = sorted(ex.dispatched["b"], key=lambda x: x.seq)
    assert [x.size for x in b] == [4] * 12 + [2]
    assert ex.emitted_i("b") == list(range(49, -1, -1))
    assert {r["total"] for r in ex.emitted("b")} == {50}


def test_global_step_with_two_predecessors_and_as_a_leaf():
    specs = [
        gen("gen", ("a", "b"), batch_size=7),
        step("a", ("gen",), ("g",), batch_size=5, replicas=2),
        step("b", ("gen",), ("g",), batch_size=3, replicas=2),
        glob("g", ("a", "b")),
    ]
    fns = {"b": keep(lambda r: r["i"] % 2 == 0), "g": merge}
    ex = FakeExecutor(specs, {"gen": rows_of(40)}, fns, seed=6, fifo=False).run()
    assert ex.finished == 1
    (gb,) = ex.dispatched["g"]
    assert [[r["i"] for r in branch] for branch in gb.inputs] == [list(range(40)), list(range(0, 40, 2))]
    assert [e.rows for e in ex.emits["g"]] == [[{"branches": [list(range(40)), list(range(0, 40, 2))]}]]


def test_global_step_runs_one_batch_at_a_time_and_is_not_counted_as_held():
    specs = [gen("gen", ("g",), batch_size=10), glob("g", ("gen",))]
    ex = FakeExecutor(specs, {"gen": rows_of(95)}, max_rows_in_flight=20).run()
    assert ex.finished == 1
    assert len(ex.dispatched["g"]) == 1 and ex.dispatched["g"][0].size == 95
    assert ex.emitted_i("g") == list(range(95))
    assert ex.peak_held <= 30  # rows gathered by the global step are not held against the bound


# -- finish propagation -------------------------------------------------------------------------


def _finish_cases() -> dict[str, tuple[list[StepSpec], dict[str, list[Row]], dict[str, StepFn], bool]]:
    chain = [
        gen("gen", ("a",), batch_size=7),
        step("a", ("gen",), ("b",), batch_size=5),
        step("b", ("a",), (), batch_size=3),
    ]
    drop_all = keep(lambda r: False)
    return {
        "step-filters-everything": (chain, {"gen": rows_of(30)}, {"a": drop_all}, False),
        "empty-last-generator-batch": (chain, {"gen": rows_of(21)}, {}, True),
        "empty-last-uneven": (chain, {"gen": rows_of(23)}, {}, True),
        "generator-yields-nothing": (chain, {"gen": []}, {}, False),
        "generator-only": ([gen("gen", (), batch_size=7)], {"gen": rows_of(30)}, {}, False),
        "generator-only-empty-last": ([gen("gen", (), batch_size=5)], {"gen": rows_of(10)}, {}, True),
        "global-gets-nothing": (
            [
                gen("gen", ("a",), batch_size=7),
                step("a", ("gen",), ("g",)),
                glob("g", ("a",), ("b",)),
                step("b", ("g",)),
            ],
            {"gen": rows_of(30)},
            {"a": drop_all},
            False,
        ),
        "join-with-one-branch-empty": (join_specs(), {"gen": rows_of(30)}, {"b": drop_all, "join": merge}, False),
        "join-with-both-branches-empty": (
            join_specs(),
            {"gen": rows_of(30)},
            {"a": drop_all, "b": drop_all, "join": merge},
            True,
        ),
    }


@pytest.mark.parametrize("case", list(_finish_cases()))
@pytest.mark.parametrize("seed", [0, 1])
def test_finished_exactly_once(case, seed):
    specs, data, fns, empty_last = _finish_cases()[case]
    ex = FakeExecutor(specs, data, fns, seed=seed, empty_last=empty_last, fifo=False).run()
    assert ex.finished == 1
    assert not ex.fails
    assert isinstance(ex.actions[-1], Finished)
    assert ex.after_end == []  # late answers (e.g. a generate past the end) start nothing
    assert ex.sched.done and all(st.finished for st in ex.sched.states.values())
    assert ex.sched.rows_held() == 0
    # every step that got work had it all answered before Finished
    for name, batches in ex.dispatched.items():
        assert sorted(ex.completion_order[name]) == sorted(b.seq for b in batches)
    n = len(data["gen"])
    leaves = [s.name for s in specs if not s.successors]
    if case in ("empty-last-generator-batch", "empty-last-uneven", "generator-only", "generator-only-empty-last"):
        assert all(ex.emitted_i(leaf) == list(range(n)) for leaf in leaves)
    elif case == "join-with-one-branch-empty":
        check_join(ex, n, 7, lambda i: True, lambda i: False)
    else:
        assert all(ex.emitted(leaf) == [] for leaf in leaves)
        idle = {
            "step-filters-everything": ["b"],
            "generator-yields-nothing": ["a", "b"],
            "global-gets-nothing": ["g", "b"],
            "join-with-both-branches-empty": ["join"],
        }[case]
        assert [name for name in idle if ex.dispatched[name]] == []


def test_generator_only_pipeline_emits_each_batch_in_order():
    ex = FakeExecutor([gen("gen", (), batch_size=7)], {"gen": rows_of(30)}).run()
    assert [(e.seq, len(e.rows)) for e in ex.emits["gen"]] == [(0, 7), (1, 7), (2, 7), (3, 7), (4, 2)]
    assert ex.finished == 1


def test_generate_past_the_end_is_ignored():
    sched = Scheduler([gen("gen", (), batch_size=2)], worker_capacity=2)
    sched.start()
    acts = sched.worker_ready("gen", 0)
    assert [a.seq for a in acts if isinstance(a, Generate)] == [0, 1]
    acts = sched.batch_done("gen", 0, 0, rows_of(2), True)
    assert [type(a) for a in acts] == [Emit, Finished]
    assert sched.batch_done("gen", 0, 1, [], True) == []


def test_generator_last_then_empty_past_end_before_downstream_finishes():
    specs = [gen("gen", ("a",), batch_size=2), step("a", ("gen",), batch_size=3)]
    sched = Scheduler(specs, worker_capacity=2)
    sched.start()
    sched.worker_ready("a", 0)
    assert [a.seq for a in sched.worker_ready("gen", 0) if isinstance(a, Generate)] == [0, 1]
    acts = sched.batch_done("gen", 0, 0, rows_of(2), True)
    (d,) = [a for a in acts if isinstance(a, Dispatch)]
    assert d.batch.size == 2
    assert not any(isinstance(a, (Generate, Finished)) for a in acts)
    assert sched.batch_done("gen", 0, 1, [], True) == []  # the request past the end
    acts = sched.batch_done("a", 0, 0, d.batch.inputs[0], False)
    assert [type(a) for a in acts] == [Emit, Finished]


# -- backpressure -----------------------------------------------------------------------------


def slow_chain(max_rows: int, n: int = 10_000, slow_weight: float = 0.05, **kw: Any) -> FakeExecutor:
    specs = [
        gen("gen", ("slow",), batch_size=7),
        step("slow", ("gen",), ("b",), batch_size=5),
        step("b", ("slow",), (), batch_size=3),
    ]
    return FakeExecutor(
        specs, {"gen": rows_of(n)}, seed=13, max_rows_in_flight=max_rows, weights={"slow": slow_weight}, **kw
    )


def test_backpressure_bounds_rows_in_flight_with_a_slow_step():
    ex = slow_chain(20).run(max_steps=50_000, check_linear_held=True)
    assert ex.finished == 1
    assert ex.emitted_i("b") == list(range(10_000))
    assert ex.held_mismatch == []  # rows_held() counts each row exactly once
    assert 14 <= ex.peak_held <= 20 + 7  # the slow step did hold work, and never more than one batch over


def test_without_backpressure_the_slow_step_would_hold_far_more():
    ex = slow_chain(20_000, n=3_000).run(max_steps=50_000)
    assert ex.finished == 1
    assert ex.peak_held > 200  # the scenario really builds a backlog: the bound is what stops it


def test_backpressure_bound_smaller_than_a_batch_still_finishes():
    specs = [
        gen("gen", ("a",), batch_size=7),
        step("a", ("gen",), ("b",), batch_size=5),
        step("b", ("a",), (), batch_size=50),
    ]
    ex = FakeExecutor(specs, {"gen": rows_of(500)}, seed=2, max_rows_in_flight=3, weights={"a": 0.2}).run()
    assert ex.finished == 1
    assert ex.emitted_i("b") == list(range(500))
    assert ex.peak_held <= 50 + 5 + 7  # a batch of the largest step, plus a little


def test_backpressure_with_a_join_whose_branches_hold_rows():
    n = 2_000
    ex = FakeExecutor(
        join_specs(a_size=50, b_size=3, a_reps=1, b_reps=2),
        {"gen": rows_of(n)},
        {"join": merge},
        seed=8,
        max_rows_in_flight=20,
        weights={"b": 0.1},
        fifo=False,
    ).run(max_steps=50_000)
    assert ex.finished == 1
    check_join(ex, n, 7, lambda i: True, lambda i: True)
    assert ex.peak_held <= 2 * 50 + 2 * 7 + 20


def test_backpressure_when_a_worker_becomes_ready_late():
    ex = slow_chain(20, n=500, slow_weight=1.0, late={"slow": 200}).run()
    assert ex.finished == 1
    assert ex.emitted_i("b") == list(range(500))
    assert ex.peak_held <= 27
    assert len(ex.generates["gen"]) >= 72  # ceil(500 / 7)


def test_backpressure_bound_counts_requests_of_every_generator():
    specs = [
        gen("g1", ("s1",), batch_size=7),
        gen("g2", ("s2",), batch_size=7),
        step("s1", ("g1",), batch_size=5),
        step("s2", ("g2",), batch_size=5),
    ]
    sched = Scheduler(specs, max_rows_in_flight=14, worker_capacity=2)
    actions = sched.start()
    for name in ("s1", "s2", "g1", "g2"):
        actions += sched.worker_ready(name, 0)
    asked = [(a.step, a.seq) for a in actions if isinstance(a, Generate)]
    assert len(asked) * 7 <= 14 + 7, f"asked for {asked} with a bound of 14 rows"


def test_two_independent_generators_both_finish_under_backpressure():
    specs = [
        gen("g1", ("s1",), batch_size=7),
        gen("g2", ("s2",), batch_size=5),
        step("s1", ("g1",), batch_size=5),
        step("s2", ("g2",), batch_size=3, replicas=2),
    ]
    ex = FakeExecutor(
        specs,
        {"g1": rows_of(700), "g2": rows_of(500)},
        seed=3,
        max_rows_in_flight=20,
        weights={"s1": 0.05, "s2": 0.05},
        fifo=False,
    ).run(max_steps=50_000)
    assert ex.finished == 1
    assert ex.emitted_i("s1") == list(range(700)) and ex.emitted_i("s2") == list(range(500))
    assert ex.peak_held <= 20 + 7


# -- failures ---------------------------------------------------------------------------------


def err(step_name: str = "a", msg: str = "bad row") -> ErrorRecord:
    return ErrorRecord.from_message("ValueError", msg, step=step_name)


def started(specs: list[StepSpec], rows: int = 10, worker_capacity: int = 2) -> tuple[Scheduler, list[Dispatch]]:
    """A scheduler with every worker ready and the first generator batch delivered."""
    sched = Scheduler(specs, worker_capacity=worker_capacity)
    sched.start()
    for s in specs:
        for r in range(s.replicas):
            sched.worker_ready(s.name, r)
    acts = sched.batch_done("gen", 0, 0, rows_of(rows), True)
    return sched, [a for a in acts if isinstance(a, Dispatch)]


def assert_inert(sched: Scheduler) -> None:
    e = err()
    assert sched.worker_ready("a", 0) == []
    assert sched.batch_done("a", 0, 99, [], False) == []
    assert sched.batch_failed("a", 0, 99, e) == []
    assert sched.load_failed("a", 0, e) == []
    assert sched.worker_died("a", 0, e) == []


def test_batch_failed_with_fail_policy_stops_the_run():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5)]
    sched, dispatches = started(specs)
    e = err()
    acts = sched.batch_failed("a", 0, dispatches[0].batch.seq, e)
    assert len(acts) == 1 and isinstance(acts[0], Fail) and acts[0].error is e
    assert sched.failed is e
    assert_inert(sched)


def test_failing_step_in_driver_fails_the_run():
    def boom(inputs: list[list[Row]]) -> list[Row]:
        if any(r["i"] == 13 for r in inputs[0]):
            raise StepError("row 13 is cursed")
        return inputs[0]

    specs = [gen("gen", ("a",), batch_size=7), step("a", ("gen",), ("b",), batch_size=5), step("b", ("a",))]
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": boom}).run()
    assert ex.finished == 0 and len(ex.fails) == 1
    assert ex.fails[0].error.message == "row 13 is cursed" and ex.fails[0].error.batch == 2
    assert 13 not in ex.emitted_i("b")
    assert ex.after_end == []


def test_batch_failed_with_skip_policy_drops_the_rows_and_continues():
    def boom(inputs: list[list[Row]]) -> list[Row]:
        if any(r["i"] == 13 for r in inputs[0]):
            raise StepError("row 13 is cursed")
        return inputs[0]

    specs = [
        gen("gen", ("a",), batch_size=7),
        step("a", ("gen",), ("b",), batch_size=5, replicas=2, on_error="skip"),
        step("b", ("a",), (), batch_size=3),
    ]
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": boom}, seed=1, fifo=False).run()
    assert ex.finished == 1 and not ex.fails
    (rf,) = ex.rows_failed
    assert rf.batch.step == "a" and rf.batch.seq == 2
    assert [r["i"] for r in rf.batch.inputs[0]] == [10, 11, 12, 13, 14]
    assert rf.error.message == "row 13 is cursed"
    assert ex.emitted_i("b") == [i for i in range(50) if not 10 <= i <= 14]
    stats = ex.sched.stats()["a"]
    assert (stats.rows_in, stats.rows_out, stats.rows_failed) == (50, 45, 5)


def test_skip_in_a_join_branch_keeps_the_join_aligned():
    def boom(inputs: list[list[Row]]) -> list[Row]:
        if any(r["i"] in (20, 41) for r in inputs[0]):
            raise StepError("nope")
        return inputs[0]

    specs = join_specs(a_size=5, b_size=3)
    specs[2] = step("b", ("gen",), ("join",), batch_size=3, replicas=3, on_error="skip")
    ex = FakeExecutor(specs, {"gen": rows_of(60)}, {"b": boom, "join": merge}, seed=3, fifo=False).run()
    assert ex.finished == 1
    failed = sorted(r["i"] for rf in ex.rows_failed for r in rf.batch.inputs[0])
    # b feeds a join, so its batches never straddle generator batches (of 7): 20 and 41 each
    # close a generator batch and are alone in their batch of b
    assert failed == [20, 41]
    check_join(ex, 60, 7, lambda i: True, lambda i: i not in failed)


def test_skip_policy_drops_a_whole_join_batch():
    def boom(inputs: list[list[Row]]) -> list[Row]:
        if any(r["i"] == 8 for r in inputs[0]):
            raise StepError("nope")
        return merge(inputs)

    specs = join_specs()
    specs[3] = step("join", ("a", "b"), (), replicas=2, on_error="skip")
    ex = FakeExecutor(specs, {"gen": rows_of(30)}, {"join": boom}, seed=2).run()
    assert ex.finished == 1
    (rf,) = ex.rows_failed
    assert [[r["i"] for r in branch] for branch in rf.batch.inputs] == [list(range(7, 14))] * 2
    assert [e.rows[0]["branches"][0][0] for e in ex.emits["join"] if e.rows] == [0, 14, 21, 28]


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_generator_failure_always_fails(policy):
    specs = [gen("gen", ("a",), batch_size=7, on_error=policy), step("a", ("gen",), on_error="skip")]
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, gen_fail_at={"gen": 2}).run()
    assert ex.finished == 0 and len(ex.fails) == 1 and ex.rows_failed == []
    assert ex.fails[0].error.type_name == "GeneratorBroke" and ex.fails[0].error.batch == 2
    assert_inert(ex.sched)


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_global_step_failure_always_fails(policy):
    specs = [gen("gen", ("g",), batch_size=7), glob("g", ("gen",), on_error=policy)]
    sched, dispatches = started(specs)
    (d,) = dispatches
    assert d.batch.step == "g" and d.batch.size == 10
    e = err("g")
    acts = sched.batch_failed("g", 0, d.batch.seq, e)
    assert [type(a) for a in acts] == [Fail] and acts[0].error is e


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_load_failed_and_worker_died_fail(policy):
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5, replicas=2, on_error=policy)]
    for event in ("load_failed", "worker_died"):
        sched = Scheduler(specs)
        sched.start()
        sched.worker_ready("gen", 0)
        sched.worker_ready("a", 0)
        e = err()
        acts = getattr(sched, event)("a", 1, e)
        assert len(acts) == 1 and isinstance(acts[0], Fail) and acts[0].error is e
        assert sched.failed is e
        assert sched.batch_done("gen", 0, 0, rows_of(10), True) == []
        assert_inert(sched)


def test_worker_died_mid_batch_names_the_batch():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=4, replicas=2)]
    sched, dispatches = started(specs)
    assert [(d.replica, d.batch.seq) for d in dispatches] == [(0, 0), (1, 1), (0, 2)]
    batch = sched.batch_on("a", 0)
    assert batch is not None and batch.seq == 0 and batch.rows == (0, 3)
    assert sched.batch_on("a", 1).rows == (4, 7)
    assert sched.generate_seq_on("gen", 0) == 1  # capacity 2: a second request is still out
    e = err()
    assert [type(a) for a in sched.worker_died("a", 0, e)] == [Fail]


def test_generate_seq_on_names_the_oldest_request():
    sched = Scheduler([gen("gen", ("a",), batch_size=5), step("a", ("gen",))])
    sched.start()
    sched.worker_ready("gen", 0)
    assert sched.generate_seq_on("gen", 0) == 0
    sched.batch_done("gen", 0, 0, rows_of(5), False)
    assert sched.generate_seq_on("gen", 0) == 1


def test_events_after_finished_return_nothing():
    sched = Scheduler([gen("gen", (), batch_size=5)], worker_capacity=1)
    sched.start()
    sched.worker_ready("gen", 0)
    acts = sched.batch_done("gen", 0, 0, rows_of(3), True)
    assert isinstance(acts[-1], Finished)
    assert sched.worker_ready("gen", 0) == []
    assert sched.load_failed("gen", 0, err("gen")) == []
    assert sched.worker_died("gen", 0, err("gen")) == []


# -- dry runs and capacity -----------------------------------------------------------------------


@pytest.mark.parametrize("max_batches", [1, 3])
def test_max_batches_limits_generation(max_batches):
    specs = [gen("gen", ("a",), batch_size=7, max_batches=max_batches), step("a", ("gen",), batch_size=5)]
    ex = FakeExecutor(specs, {"gen": rows_of(100)}, worker_capacity=2).run()
    assert ex.finished == 1
    assert ex.generates["gen"] == list(range(max_batches))
    assert ex.emitted_i("a") == list(range(7 * max_batches))
    assert ex.sched.stats()["gen"].batches == max_batches


@pytest.mark.parametrize("capacity", [1, 2, 3])
def test_worker_capacity_is_never_exceeded(capacity):
    specs = [
        gen("gen", ("a",), batch_size=6),
        step("a", ("gen",), ("g",), batch_size=2, replicas=2),
        glob("g", ("a",), ("b",)),
        step("b", ("g",), (), batch_size=1, replicas=3),
    ]
    ex = FakeExecutor(
        specs, {"gen": rows_of(120)}, seed=4, worker_capacity=capacity, weights={"a": 0.05, "b": 0.05}, fifo=False
    ).run()
    assert ex.finished == 1
    assert ex.emitted_i("b") == list(range(120))
    peaks = ex.peak_outstanding
    for (name, replica), peak in peaks.items():
        limit = 1 if name == "g" else capacity
        assert peak <= limit, f"{name}/{replica} had {peak} outstanding (capacity {limit})"
    # every replica of the slow steps was kept full
    assert [peaks[("a", r)] for r in range(2)] == [capacity] * 2
    assert [peaks[("b", r)] for r in range(3)] == [capacity] * 3
    assert peaks[("gen", 0)] == capacity
