"""Unit tests of the pure scheduler, batch forming, ordering, fan-out, joins, global steps,
finishing, backpressure and capacity.

They run against ``fake_executor.FakeExecutor`` (see there), which plays every worker."""

from __future__ import annotations

import pytest

from fake_executor import (
    FakeExecutor,
    Row,
    _finish_cases,
    check_join,
    gen,
    glob,
    join_specs,
    keep,
    merge,
    rows_of,
    slow_chain,
    step,
    tag,
)
from synthpipe.runtime.scheduler import (
    Dispatch,
    Emit,
    Finished,
    Generate,
    Persist,
    Scheduler,
)

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
    assert len({a.ticket for a in gen_actions}) == 2
    for r in range(3):
        assert sched.worker_ready("a", r) == []
    actions = sched.batch_done("gen", 0, gen_actions[0].ticket, rows_of(12), False)
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
    g0, g1 = sched.worker_ready("gen", 0)
    assert isinstance(g0, Generate) and isinstance(g1, Generate) and (g0.seq, g1.seq) == (0, 1)
    acts = sched.batch_done("gen", 0, g0.ticket, rows_of(2), True)
    assert [type(a) for a in acts] == [Persist, Emit, Finished]
    assert sched.batch_done("gen", 0, g1.ticket, [], True) == []


def test_generator_last_then_empty_past_end_before_downstream_finishes():
    specs = [gen("gen", ("a",), batch_size=2), step("a", ("gen",), batch_size=3)]
    sched = Scheduler(specs, worker_capacity=2)
    sched.start()
    sched.worker_ready("a", 0)
    g0, g1 = sched.worker_ready("gen", 0)
    assert isinstance(g0, Generate) and isinstance(g1, Generate) and (g0.seq, g1.seq) == (0, 1)
    acts = sched.batch_done("gen", 0, g0.ticket, rows_of(2), True)
    assert acts[0] == Persist("gen", 0, rows_of(2), g0.ticket, last=True)
    (d,) = [a for a in acts if isinstance(a, Dispatch)]
    assert d.batch.size == 2
    assert not any(isinstance(a, (Generate, Finished)) for a in acts)
    assert sched.batch_done("gen", 0, g1.ticket, [], True) == []  # the request past the end: nothing stored
    acts = sched.batch_done("a", 0, d.ticket, d.batch.inputs[0], False)
    assert [type(a) for a in acts] == [Persist, Emit, Finished]
    assert (acts[0].step, acts[0].seq, acts[0].ticket, acts[0].last) == ("a", 0, d.ticket, False)


# -- backpressure -----------------------------------------------------------------------------




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


def test_a_withdrawn_batch_waits_for_a_worker_again_and_a_stop_drains():
    """A job the executor did not send after all (a budget held it back) goes back unsent:
    the next round hands out the same batch, and a stop then drains once nothing runs."""
    from synthpipe.runtime.scheduler import Drained

    sched = Scheduler([gen("gen", ("a",), batch_size=4), step("a", ("gen",), (), batch_size=2, capacity=1)])
    sched.start()
    sched.worker_ready("a", 0)
    asks = [x for x in sched.worker_ready("gen", 0) if isinstance(x, Generate)]
    actions = []
    for i, ask in enumerate(asks):  # the first holds every row and is the generator's last
        actions += sched.batch_done("gen", 0, ask.ticket, rows_of(4) if i == 0 else [], last=True)
    [first] = [x for x in actions if isinstance(x, Dispatch)]
    sched.withdraw("a", first.ticket)
    assert first.ticket not in sched.in_flight_tickets()
    sched.check_invariants()
    again = [x for x in sched.worker_ready("a", 0) if isinstance(x, Dispatch)]  # the next round, whatever starts it
    assert [(x.batch.seq, x.batch.size) for x in again] == [(first.batch.seq, 2)]
    sched.withdraw("a", again[0].ticket)
    assert sched.in_flight_tickets() == set(), {n: st.in_flight for n, st in sched.states.items()}
    assert any(isinstance(x, Drained) for x in sched.request_stop())


# -- a quick step's workers hold more ----------------------------------------------------------


def _outstanding(sched: Scheduler, name: str) -> int:
    return len(sched.states[name].in_flight)


def test_a_step_whose_batches_take_its_workers_no_time_gets_more_at_once_up_to_a_bound():
    from synthpipe.runtime.scheduler.dispatch import MAX_QUICK_CAPACITY

    specs = [gen("gen", ("quick", "slow"), batch_size=5), step("quick", ("gen",), (), batch_size=5),
             step("slow", ("gen",), (), batch_size=5), glob("all", ("gen",))]
    specs[0] = gen("gen", ("quick", "slow", "all"), batch_size=5)
    sched = Scheduler(specs, worker_capacity=2, max_rows_in_flight=100_000)
    sched.start()
    for name in ("quick", "slow", "all"):
        sched.worker_ready(name, 0)
    actions = sched.worker_ready("gen", 0)
    assert _outstanding(sched, "gen") == 2  # nothing known of its pace yet
    seq = 0
    for _ in range(40):  # the generator answers at once, and says it took no time
        request = next(a for a in actions if isinstance(a, Generate))
        actions = [a for a in actions if a is not request] + sched.batch_done(
            "gen", 0, request.ticket, rows_of(5 * (seq + 1))[5 * seq:], False, seconds=1e-5)
        seq += 1
        sched.check_invariants()
        assert _outstanding(sched, "gen") <= MAX_QUICK_CAPACITY
    assert _outstanding(sched, "gen") == MAX_QUICK_CAPACITY
    assert _outstanding(sched, "quick") == _outstanding(sched, "slow") == 2  # not answered yet: default
    quick = [a for a in actions if isinstance(a, Dispatch) and a.batch.step == "quick"]
    slow = [a for a in actions if isinstance(a, Dispatch) and a.batch.step == "slow"]
    more = sched.batch_done("quick", 0, quick[0].ticket, quick[0].batch.inputs[0], seconds=1e-5)
    more += sched.batch_done("slow", 0, slow[0].ticket, slow[0].batch.inputs[0], seconds=2.0)
    sched.check_invariants()
    assert _outstanding(sched, "quick") == MAX_QUICK_CAPACITY
    assert _outstanding(sched, "slow") == 2  # a batch takes seconds: no more than the default
    assert _outstanding(sched, "all") == 0  # a global step: one batch, once everything is in


def test_a_step_that_says_how_many_batches_it_holds_keeps_that_however_quick():
    specs = [gen("gen", ("a",), batch_size=5), step("a", ("gen",), (), batch_size=5, capacity=3)]
    sched = Scheduler(specs, worker_capacity=2, max_rows_in_flight=100_000)
    sched.start()
    sched.worker_ready("a", 0)
    actions = sched.worker_ready("gen", 0)
    for seq in range(30):
        request = next(a for a in actions if isinstance(a, Generate))
        actions = [a for a in actions if a is not request] + sched.batch_done(
            "gen", 0, request.ticket, rows_of(5 * (seq + 1))[5 * seq:], False, seconds=1e-5)
    dispatched = [a for a in actions if isinstance(a, Dispatch)]
    sched.batch_done("a", 0, dispatched[0].ticket, dispatched[0].batch.inputs[0], seconds=1e-6)
    assert _outstanding(sched, "a") == 3
