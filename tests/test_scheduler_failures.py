"""Unit tests of the pure scheduler, failure policy: failed batches, retries, crashes and
restarts, poison rows, the failure guard, graceful stops.

They run against ``fake_executor.FakeExecutor`` (see there), which plays every worker."""

from __future__ import annotations

from collections import defaultdict

import pytest

from fake_executor import (
    ISOLATION_CASES,
    FakeExecutor,
    Hook,
    after,
    aligned_join_specs,
    assert_inert,
    chain_specs,
    check_join,
    crashing,
    err,
    gen,
    glob,
    ids,
    join_dispatches,
    join_specs,
    merge,
    persist_of,
    raising,
    rows_of,
    run_isolation,
    started,
    step,
    tag,
)
from synthpipe.errors import ErrorRecord, WorkerDied
from synthpipe.runtime.scheduler import (
    MIN_ROWS_FOR_FAILURE_RATE,
    Dispatch,
    Drained,
    Emit,
    Fail,
    Finished,
    Generate,
    Persist,
    RestartWorker,
    RetryLater,
    RowsFailed,
    Scheduler,
)

# -- failures ---------------------------------------------------------------------------------








def test_batch_failed_with_fail_policy_stops_the_run():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5)]
    sched, dispatches = started(specs)
    assert len({d.ticket for d in dispatches}) == len(dispatches) == 2
    e = err()
    acts = sched.batch_failed("a", 0, dispatches[0].ticket, e)
    assert len(acts) == 1 and isinstance(acts[0], Fail) and acts[0].error is e
    assert sched.failed is e
    assert_inert(sched)


def test_failing_step_in_driver_fails_the_run():
    specs = [gen("gen", ("a",), batch_size=7), step("a", ("gen",), ("b",), batch_size=5), step("b", ("a",))]
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": raising({13})}).run()
    assert ex.finished == 0 and len(ex.fails) == 1
    assert ex.fails[0].error.message == "rows [13] are cursed" and ex.fails[0].error.batch == 2
    assert ex.retry_laters == []  # retries=0 by default
    assert 13 not in ex.emitted_i("b")
    assert ex.after_end == []


def test_batch_failed_with_skip_policy_drops_the_rows_and_continues():
    specs = [
        gen("gen", ("a",), batch_size=7),
        step("a", ("gen",), ("b",), batch_size=5, replicas=2, on_error="skip"),
        step("b", ("a",), (), batch_size=3),
    ]
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": raising({13})}, seed=1, fifo=False).run()
    assert ex.finished == 1 and not ex.fails
    (rf,) = ex.rows_failed
    assert rf.batch.step == "a" and rf.batch.seq == 2
    assert ids(rf.batch) == [10, 11, 12, 13, 14]
    assert rf.error.message == "rows [13] are cursed"
    assert ex.emitted_i("b") == [i for i in range(50) if not 10 <= i <= 14]
    stats = ex.sched.stats()["a"]
    assert (stats.rows_in, stats.rows_out, stats.rows_failed, stats.retries) == (50, 45, 5, 0)


def test_skip_in_a_join_branch_keeps_the_join_aligned():
    specs = join_specs(a_size=5, b_size=3)
    specs[2] = step("b", ("gen",), ("join",), batch_size=3, replicas=3, on_error="skip")
    ex = FakeExecutor(specs, {"gen": rows_of(60)}, {"b": raising({20, 41}), "join": merge}, seed=3, fifo=False).run()
    assert ex.finished == 1
    failed = sorted(i for batch_ids in ex.failed_i("b") for i in batch_ids)
    # b feeds a join, so its batches never straddle generator batches (of 7): 20 and 41 each
    # close a generator batch and are alone in their batch of b
    assert failed == [20, 41]
    check_join(ex, 60, 7, lambda i: True, lambda i: i not in failed)


def test_skip_policy_drops_a_whole_join_batch():
    specs = join_specs()
    specs[3] = step("join", ("a", "b"), (), replicas=2, on_error="skip")
    ex = FakeExecutor(specs, {"gen": rows_of(30)}, {"join": raising({8}, then=merge)}, seed=2).run()
    assert ex.finished == 1
    (rf,) = ex.rows_failed
    assert [[r["i"] for r in branch] for branch in rf.batch.inputs] == [list(range(7, 14))] * 2
    assert [e.rows[0]["branches"][0][0] for e in ex.emits["join"] if e.rows] == [0, 14, 21, 28]


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_generator_failure_always_fails(policy):
    specs = [gen("gen", ("a",), batch_size=7, on_error=policy, retries=3), step("a", ("gen",), on_error="skip")]
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, gen_fail_at={"gen": 2}).run()
    assert ex.finished == 0 and len(ex.fails) == 1 and ex.rows_failed == [] and ex.retry_laters == []
    assert ex.fails[0].error.type_name == "GeneratorBroke" and ex.fails[0].error.batch == 2
    assert_inert(ex.sched)


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_global_step_failure_always_fails(policy):
    specs = [gen("gen", ("g",), batch_size=7), glob("g", ("gen",), on_error=policy)]
    sched, dispatches = started(specs)
    (d,) = dispatches
    assert d.batch.step == "g" and d.batch.size == 10
    e = err("g")
    acts = sched.batch_failed("g", 0, d.ticket, e)
    assert [type(a) for a in acts] == [Fail] and acts[0].error is e


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_load_failed_fails(policy):
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5, replicas=2, on_error=policy)]
    sched = Scheduler(specs)
    sched.start()
    (g0, _) = sched.worker_ready("gen", 0)
    sched.worker_ready("a", 0)
    e = err()
    acts = sched.load_failed("a", 1, e)
    assert len(acts) == 1 and isinstance(acts[0], Fail) and acts[0].error is e
    assert sched.failed is e
    assert sched.batch_done("gen", 0, g0.ticket, rows_of(10), True) == []
    assert_inert(sched)


def test_job_on_names_the_oldest_job_of_a_replica():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=4, replicas=2)]
    sched, dispatches = started(specs)
    assert [(d.replica, d.batch.seq) for d in dispatches] == [(0, 0), (1, 1), (0, 2)]
    batch, gen_seq = sched.job_on("a", 0)
    assert batch is dispatches[0].batch and gen_seq is None and batch.rows == (0, 3)
    assert sched.job_on("a", 1) == (dispatches[1].batch, None) and dispatches[1].batch.rows == (4, 7)
    assert sched.job_on("gen", 0) == (None, 1)  # capacity 2: a second request is still out
    # once the oldest is done, the next one is named
    sched.batch_done("a", 0, dispatches[0].ticket, dispatches[0].batch.inputs[0])
    assert sched.job_on("a", 0) == (dispatches[2].batch, None)
    sched.batch_done("a", 0, dispatches[2].ticket, dispatches[2].batch.inputs[0])
    assert sched.job_on("a", 0) == (None, None)


def test_job_on_names_the_oldest_generator_request():
    sched = Scheduler([gen("gen", ("a",), batch_size=5), step("a", ("gen",))])
    sched.start()
    g0, g1 = sched.worker_ready("gen", 0)
    assert sched.job_on("gen", 0) == (None, 0)
    sched.batch_done("gen", 0, g0.ticket, rows_of(5), False)
    assert sched.job_on("gen", 0) == (None, 1)


def test_events_after_finished_return_nothing():
    sched = Scheduler([gen("gen", (), batch_size=5)], worker_capacity=1)
    sched.start()
    (g0,) = sched.worker_ready("gen", 0)
    acts = sched.batch_done("gen", 0, g0.ticket, rows_of(3), True)
    assert isinstance(acts[-1], Finished)
    assert sched.worker_ready("gen", 0) == []
    assert sched.load_failed("gen", 0, err("gen")) == []
    assert sched.worker_died("gen", 0, err("gen")) == []
    assert sched.retry_due("gen", 0) == []
    assert sched.request_stop() == []


# -- retries ------------------------------------------------------------------------------------




def test_retried_batch_waits_for_retry_due_and_gets_a_new_ticket():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5, retries=1, retry_delay=2.0)]
    sched, (d0, d1) = started(specs)
    assert (d0.replica, d1.replica, d0.batch.seq, d1.batch.seq) == (0, 0, 0, 1)
    e = err()
    acts = sched.batch_failed("a", 0, d0.ticket, e)
    assert acts == [RetryLater("a", acts[0].token, 2.0, e, attempt=1, attempts=2)]  # no dispatch yet
    assert acts[0].error is e
    token = acts[0].token
    sched.check_invariants()
    assert sched.job_on("a", 0) == (d1.batch, None)
    assert sched.batch_done("a", 0, d0.ticket, d0.batch.inputs[0]) == []  # a stale answer changes nothing
    # seq 1 is stored at once, but waits for seq 0 before it is released
    assert sched.batch_done("a", 0, d1.ticket, d1.batch.inputs[0]) == [persist_of(d1)]
    (d,) = sched.retry_due("a", token)
    assert isinstance(d, Dispatch) and d.batch is d0.batch and d.batch.attempts == 1
    assert d.ticket not in (d0.ticket, d1.ticket)
    assert sched.retry_due("a", token) == []  # a token is used once
    acts = sched.batch_done("a", 0, d.ticket, d.batch.inputs[0])
    assert [(type(a), getattr(a, "seq", None)) for a in acts] == [(Persist, 0), (Emit, 0), (Emit, 1), (Finished, None)]
    assert acts[0].ticket == d.ticket  # the retry's output, not the failed attempt's
    assert [r["i"] for a in acts if isinstance(a, Emit) for r in a.rows] == list(range(10))
    assert sched.stats()["a"].retries == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("replicas", [1, 3])
def test_retry_succeeds_on_the_second_attempt(seed, replicas):
    specs = chain_specs(replicas=replicas, retries=2, retry_delay=0.5)
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": raising({13}, times=1, then=tag("a"))}, seed=seed).run()
    assert ex.finished == 1 and not ex.fails and not ex.rows_failed and ex.after_end == []
    ((asked_at, rl),) = ex.retry_laters
    assert (rl.step, rl.delay, rl.error.message, rl.error.batch) == ("a", 0.5, "rows [13] are cursed", 2)
    ((fired_at, name, token),) = ex.retries_fired
    assert (name, token) == ("a", rl.token) and fired_at >= asked_at + 0.5
    first, second = ex.dispatches_of("a", 2)
    assert first is second and first.attempts == 1 and ids(first) == [10, 11, 12, 13, 14]
    tickets = [a.ticket for a in ex.actions if isinstance(a, Dispatch) and a.batch is first]
    assert len(set(tickets)) == 2
    # every row reached the leaf once, in order, through a (the retry did not duplicate or drop any)
    assert ex.emitted_i("b") == list(range(50))
    assert {r["trail"] for r in ex.emitted("b")} == {"a"}
    assert sorted(ex.processed["a"]) == list(range(50))
    stats = ex.sched.stats()["a"]
    assert (stats.retries, stats.rows_in, stats.rows_out, stats.rows_failed, stats.batches) == (1, 50, 50, 0, 10)
    if replicas == 1:  # the retry went through after later batches had completed, yet its rows are in place
        order = ex.completion_order["a"]
        last = len(order) - 1 - order[::-1].index(2)
        assert any(s > 2 for s in order[:last])


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_retries_exhausted(policy):
    specs = chain_specs(replicas=2, retries=2, retry_delay=0.25, on_error=policy)
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": raising({13})}, seed=3).run()
    assert [(rl.step, rl.delay, rl.attempt, rl.attempts) for _, rl in ex.retry_laters] == [
        ("a", 0.25, 1, 3),
        ("a", 0.5, 2, 3),
    ]
    attempts = ex.dispatches_of("a", 2)
    assert len(attempts) == 3 and attempts[0].attempts == 3
    assert ex.sched.stats()["a"].retries == 2
    assert ex.after_end == []
    if policy == "skip":
        assert ex.finished == 1 and not ex.fails
        (rf,) = ex.rows_failed
        assert rf.batch.seq == 2 and ids(rf.batch) == [10, 11, 12, 13, 14] and rf.batch.attempts == 3
        assert rf.error.message == "rows [13] are cursed"
        assert ex.emitted_i("b") == [i for i in range(50) if not 10 <= i <= 14]
        stats = ex.sched.stats()["a"]
        assert (stats.rows_in, stats.rows_out, stats.rows_failed) == (50, 45, 5)
    else:
        assert ex.finished == 0 and len(ex.fails) == 1 and not ex.rows_failed
        assert (ex.fails[0].error.message, ex.fails[0].error.batch) == ("rows [13] are cursed", 2)
        assert 13 not in ex.emitted_i("b")


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_non_retryable_error_is_never_retried(policy):
    specs = chain_specs(replicas=2, retries=3, on_error=policy)
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": raising({13}, retryable=False)}, seed=4).run()
    assert ex.retry_laters == [] and ex.sched.stats()["a"].retries == 0
    assert len(ex.dispatches_of("a", 2)) == 1
    if policy == "skip":
        assert ex.finished == 1
        (rf,) = ex.rows_failed
        assert ids(rf.batch) == [10, 11, 12, 13, 14] and rf.batch.attempts == 1 and rf.error.retryable is False
        assert ex.emitted_i("b") == [i for i in range(50) if not 10 <= i <= 14]
    else:
        assert ex.finished == 0 and len(ex.fails) == 1 and ex.fails[0].error.retryable is False


def test_retry_delays_double_and_are_honoured():
    specs = chain_specs(replicas=2, retries=4, retry_delay=0.5, on_error="skip")
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": raising({13, 31})}, seed=5).run()
    assert ex.finished == 1
    by_batch: dict[int, list[tuple[float, int, int]]] = defaultdict(list)
    for _, rl in ex.retry_laters:
        by_batch[rl.error.batch].append((rl.delay, rl.attempt, rl.attempts))
    expected = [(0.5, 1, 5), (1.0, 2, 5), (2.0, 3, 5), (4.0, 4, 5)]
    assert by_batch == {2: expected, 6: expected}
    asked = {rl.token: at + rl.delay for at, rl in ex.retry_laters}
    fired = {token: at for at, _, token in ex.retries_fired}
    assert fired.keys() == asked.keys() and all(fired[t] >= asked[t] for t in asked)
    assert sorted(ex.failed_i("a")) == [[10, 11, 12, 13, 14], [30, 31, 32, 33, 34]]
    assert all(rf.batch.attempts == 5 for rf in ex.rows_failed)
    assert ex.sched.stats()["a"].retries == 8


@pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
def test_global_step_is_retried_but_never_skipped(times):
    specs = [
        gen("gen", ("g",), batch_size=7),
        glob("g", ("gen",), ("b",), retries=1, retry_delay=3.0, on_error="skip"),
        step("b", ("g",), batch_size=4),
    ]
    ex = FakeExecutor(specs, {"gen": rows_of(30)}, {"g": raising({0}, times=times)}, seed=1).run()
    assert [rl.delay for _, rl in ex.retry_laters] == [3.0]
    assert len(ex.dispatched["g"]) == 2 and ex.rows_failed == []
    if times == 1:
        assert ex.finished == 1 and ex.emitted_i("b") == list(range(30))
    else:
        assert ex.finished == 0 and len(ex.fails) == 1 and ex.fails[0].error.step == "g"


# -- crashes, restarts and poison rows ------------------------------------------------------------


def test_worker_died_when_idle_is_restarted():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5)]
    sched = Scheduler(specs)
    sched.start()
    sched.worker_ready("a", 0)
    e = ErrorRecord.from_diagnosis(WorkerDied("gone"), step="a", replica=0)
    assert sched.worker_died("a", 0, e) == [RestartWorker("a", 0, e)]
    sched.check_invariants()
    assert sched.stats()["a"].restarts == 1
    (g0, _) = sched.worker_ready("gen", 0)
    acts = sched.batch_done("gen", 0, g0.ticket, rows_of(10), True)
    assert not any(isinstance(a, Dispatch) for a in acts)  # replica 0 is not back yet
    acts = sched.worker_ready("a", 0)
    assert [(a.replica, a.batch.seq) for a in acts if isinstance(a, Dispatch)] == [(0, 0), (0, 1)]


def test_crash_of_an_idle_worker_mid_run_and_the_run_still_finishes():
    def idle_b(ex: FakeExecutor) -> list[int]:
        return [r for (name, r), q in ex.queues.items() if name == "b" and not q]

    specs = chain_specs(replicas=2, n_b=3)
    hooks: list[Hook] = [
        (lambda ex: True, lambda ex: ex.kill("b", 2)),  # before it ever got work
        (lambda ex: ex.completions >= 20 and bool(idle_b(ex)), lambda ex: ex.kill("b", idle_b(ex)[0])),
    ]
    ex = FakeExecutor(specs, {"gen": rows_of(100)}, seed=6, restart_delay=3.0, hooks=hooks).run()
    assert ex.finished == 1 and not ex.fails and ex.after_end == []
    assert [(d.step, d.batch, d.gen_seq) for d in ex.deaths] == [("b", None, None)] * 2
    assert [(r.step, r.replica) for r in ex.restarts] == [("b", d.replica) for d in ex.deaths]
    assert ex.sched.stats()["b"].restarts == 2
    assert ex.emitted_i("b") == list(range(100))
    assert all(b.crashes == 0 for batches in ex.dispatched.values() for b in batches)
    assert ("b", 2) in ex.queues  # restarted, and it got work afterwards
    assert any(a.replica == 2 for a in ex.actions if isinstance(a, Dispatch) and a.batch.step == "b")


def test_crash_puts_the_jobs_back_and_only_the_oldest_is_the_culprit():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=4, replicas=2)]
    sched, dispatches = started(specs)
    d0, d1, d2 = dispatches
    assert [(d.replica, d.batch.seq) for d in dispatches] == [(0, 0), (1, 1), (0, 2)]
    e = ErrorRecord.from_diagnosis(WorkerDied("segfault"), step="a", replica=0)
    restart, again = sched.worker_died("a", 0, e)
    sched.check_invariants()
    assert restart == RestartWorker("a", 0, e)
    assert (d0.batch.crashes, d2.batch.crashes, d1.batch.crashes) == (1, 0, 0)
    # the culprit goes first, to the replica with room; the innocent waits for replica 0 to be back
    assert isinstance(again, Dispatch) and (again.replica, again.batch) == (1, d0.batch)
    assert sched.job_on("a", 0) == (None, None)
    assert sched.batch_done("a", 0, d0.ticket, d0.batch.inputs[0]) == []  # the dead worker's late answer
    (innocent,) = sched.worker_ready("a", 0)
    assert isinstance(innocent, Dispatch) and (innocent.replica, innocent.batch) == (0, d2.batch)
    assert {again.ticket, innocent.ticket}.isdisjoint({d.ticket for d in dispatches})
    # replica 1 finishes its own older job, then dies on the culprit: max_restarts=1, on_error="fail"
    assert sched.batch_done("a", 1, d1.ticket, d1.batch.inputs[0]) == [persist_of(d1)]
    assert sched.job_on("a", 1) == (d0.batch, None)
    acts = sched.worker_died("a", 1, e)
    assert [type(a) for a in acts] == [Fail] and acts[0].error is e
    assert (d0.batch.crashes, d2.batch.crashes, d1.batch.crashes) == (2, 0, 0)






@pytest.mark.parametrize(("replicas", "seed"), [(1, 0), (3, 0), (3, 1)])
@pytest.mark.parametrize("case", list(ISOLATION_CASES))
def test_crashing_batch_is_retried_whole_then_its_poison_rows_are_isolated(case, replicas, seed):
    size, poison, n = ISOLATION_CASES[case]
    ex = run_isolation(case, seed, replicas=replicas)
    assert ex.finished == 1 and not ex.fails and ex.after_end == []
    good = [i for i in range(n) if i not in poison]
    # each poison row failed alone, under its own row number, with the crash as its error
    assert sorted(ex.failed_i("a")) == [[p] for p in sorted(poison)]
    for rf in ex.rows_failed:
        (p,) = ids(rf.batch)
        assert rf.batch.rows == (p, p) and rf.batch.seq == p // size
        assert rf.batch.part == (None if size == 1 else (p % size, p % size + 1))
        assert rf.error.type_name == "synthpipe.errors.WorkerDied"
    # every other row reached the leaf exactly once, in the original order, through a
    assert ex.emitted_i("b") == good
    assert {r["trail"] for r in ex.emitted("b")} == {"a"}
    assert sorted(ex.processed["a"]) == good
    # each crashing batch was first retried whole (max_restarts=1), then split
    for seq in {p // size for p in poison}:
        whole = [d for d in ex.deaths if d.batch is not None and d.batch.seq == seq and d.part is None]
        assert [d.crashes_before for d in whole] == [0, 1]
    parts = [d for d in ex.deaths if d.part is not None]
    assert len(parts) <= len(poison) * max(1, (size - 1).bit_length())  # halving: log2(size) crashes per row
    # every death named a job (batch and rows) holding a poison row; nothing else was blamed
    for d in ex.deaths:
        assert d.step == "a" and d.batch is not None and d.rows is not None
        assert any(d.rows[0] <= p <= d.rows[1] for p in poison)
    assert all(b.crashes == 0 for b in ex.dispatched["a"] if b.part is None and not set(ids(b)) & poison)
    assert ex.innocent_crash_bumps == []
    # every dead worker was restarted, the last one included
    assert [(r.step, r.replica) for r in ex.restarts] == [(d.step, d.replica) for d in ex.deaths]
    stats = ex.sched.stats()["a"]
    assert (stats.rows_in, stats.rows_out, stats.rows_failed) == (n, n - len(poison), len(poison))
    assert stats.batches == -(-n // size) and stats.restarts == len(ex.deaths)


def test_the_worker_that_died_on_a_lone_poison_row_is_restarted():
    specs = [gen("gen", ("a",), batch_size=2), step("a", ("gen",), batch_size=1, on_error="skip", max_restarts=1)]
    sched, (d0,) = started(specs, rows=2, worker_capacity=1)
    e = ErrorRecord.from_diagnosis(WorkerDied("segfault"), step="a", replica=0)
    assert sched.worker_died("a", 0, e) == [RestartWorker("a", 0, e)]  # retried whole once
    (again,) = sched.worker_ready("a", 0)
    assert isinstance(again, Dispatch) and again.batch is d0.batch
    acts = sched.worker_died("a", 0, e)  # the lone row crashes again: it is a failed row...
    assert [ids(a.batch) for a in acts if isinstance(a, RowsFailed)] == [[0]]
    # ...and the worker that died comes back, or nothing would be left to run row 1
    assert [a for a in acts if isinstance(a, RestartWorker)] == [RestartWorker("a", 0, e)]
    assert sched.stats()["a"].restarts == 2
    (last,) = sched.worker_ready("a", 0)
    assert isinstance(last, Dispatch) and ids(last.batch) == [1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_innocent_jobs_queued_behind_a_crash_are_not_counted(seed):
    # one replica, capacity 2: every crash loses the job queued behind the culprit
    specs = chain_specs(replicas=1, on_error="skip")
    poison = {3, 13, 27, 44}
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": crashing(poison, times=1)}, seed=seed).run()
    assert ex.finished == 1 and not ex.fails and not ex.rows_failed
    assert ex.emitted_i("b") == list(range(50))
    assert len(ex.deaths) == len(ex.restarts) == 4 and ex.sched.stats()["a"].restarts == 4
    assert ex.innocents_seen >= 2 and ex.innocent_crash_bumps == []
    for batch in ex.dispatched["a"]:
        assert batch.crashes == (1 if set(ids(batch)) & poison else 0), ids(batch)


@pytest.mark.parametrize("max_restarts", [0, 1, 2])
def test_crash_with_fail_policy_fails_after_max_restarts(max_restarts):
    specs = chain_specs(replicas=2, max_restarts=max_restarts)
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": crashing({13})}, seed=7).run()
    assert ex.finished == 0 and len(ex.fails) == 1 and not ex.rows_failed
    assert [(d.batch.seq if d.batch else None, d.crashes_before) for d in ex.deaths] == [
        (2, k) for k in range(max_restarts + 1)
    ]
    assert len(ex.restarts) == max_restarts  # the last crash fails the run instead
    error = ex.fails[0].error
    assert error.type_name == "synthpipe.errors.WorkerDied"
    assert (error.step, error.batch, error.rows) == ("a", 2, (10, 14))
    assert len(ex.dispatches_of("a", 2)) == max_restarts + 1
    assert 13 not in ex.emitted_i("b")


def test_max_restarts_zero_isolates_at_the_first_crash():
    specs = chain_specs(replicas=3, on_error="skip", max_restarts=0)
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": crashing({13})}, seed=8).run()
    assert ex.finished == 1
    whole = [b for b in ex.dispatches_of("a", 2) if b.part is None]
    assert len(whole) == 1  # never retried whole
    assert [d.part for d in ex.deaths] == [None, (2, 5), (3, 5), (3, 4)]
    assert ex.failed_i("a") == [[13]]
    assert ex.emitted_i("b") == [i for i in range(50) if i != 13]


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_generator_crash_always_fails(policy):
    specs = [gen("gen", ("a",), batch_size=7, on_error=policy, max_restarts=3), step("a", ("gen",))]
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, gen_crash_at={"gen": 2}).run()
    assert ex.finished == 0 and len(ex.fails) == 1 and ex.restarts == [] and ex.rows_failed == []
    (death,) = ex.deaths
    assert (death.step, death.batch, death.gen_seq) == ("gen", None, 2)
    assert ex.fails[0].error.type_name == "synthpipe.errors.WorkerDied" and ex.fails[0].error.batch == 2
    assert_inert(ex.sched)


@pytest.mark.parametrize("times", [1, None], ids=["once", "always"])
def test_global_step_crash_is_retried_then_fails(times):
    specs = [
        gen("gen", ("a",), batch_size=7),
        step("a", ("gen",), ("g",), batch_size=5),
        glob("g", ("a",), ("b",), on_error="skip", max_restarts=1),
        step("b", ("g",), batch_size=4),
    ]
    ex = FakeExecutor(specs, {"gen": rows_of(40)}, {"g": crashing({0}, times=times)}, seed=2).run()
    assert [d.step for d in ex.deaths] == ["g"] * (1 if times == 1 else 2)
    assert [(r.step, r.replica) for r in ex.restarts] == [("g", 0)]
    assert ex.rows_failed == []  # a global step's rows cannot be skipped, nor split
    assert all(b.part is None and b.size == 40 for b in ex.dispatched["g"])
    if times == 1:
        assert ex.finished == 1 and ex.emitted_i("b") == list(range(40))
    else:
        assert ex.finished == 0 and len(ex.fails) == 1 and ex.fails[0].error.step == "g"
        assert len(ex.dispatched["g"]) == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isolation_inside_a_join_feeder_keeps_the_join_aligned(seed):
    n, poison = 60, {8, 30}
    specs = join_specs(a_size=5, b_size=3)
    specs[2] = step("b", ("gen",), ("join",), batch_size=3, replicas=3, on_error="skip")
    fns = {"a": tag("a"), "b": crashing(poison), "join": merge}
    ex = FakeExecutor(specs, {"gen": rows_of(n)}, fns, seed=seed).run()
    assert ex.finished == 1 and not ex.fails
    assert sorted(ex.failed_i("b")) == [[8], [30]]
    check_join(ex, n, 7, lambda i: True, lambda i: i not in poison)
    assert any(d.part is not None for d in ex.deaths)  # isolation did run


# -- the failure guard ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_failed", [0, 2, 4])
def test_failure_guard_by_count(max_failed):
    bad = {3, 17, 31, 45}
    specs = chain_specs(a_size=1, on_error="skip", max_failed_rows=max_failed)
    ex = FakeExecutor(specs, {"gen": rows_of(50)}, {"a": raising(bad)}, seed=9).run()
    assert ex.failed_i("a") == [[i] for i in sorted(bad)][: max_failed + 1]
    if max_failed >= len(bad):
        assert ex.finished == 1 and not ex.fails
        assert ex.emitted_i("b") == [i for i in range(50) if i not in bad]
        return
    assert ex.finished == 0 and len(ex.fails) == 1
    error = ex.fails[0].error
    assert error.type_name == "synthpipe.errors.TooManyFailedRows" and error.step == "a"
    assert f"max_failed_rows={max_failed}" in error.message and "rows [" in error.message
    # the last failed row is recorded, then the run stops at once
    assert [type(a) for a in ex.actions[-3:]] == [RowsFailed, Persist, Fail]
    assert ex.sched.stats()["a"].rows_failed == max_failed + 1


@pytest.mark.parametrize(
    ("rate", "n", "fails"),
    [(0.1, 100, True), (0.25, 100, False), (0.1, MIN_ROWS_FOR_FAILURE_RATE - 1, False)],
    ids=["over-the-rate", "under-the-rate", "too-few-rows-to-judge"],
)
def test_failure_guard_by_rate(rate, n, fails):
    specs = chain_specs(a_size=1, on_error="skip", max_failure_rate=rate)
    bad = {i for i in range(n) if i % 5 == 4}  # 20% of the rows, the 50th among them
    ex = FakeExecutor(specs, {"gen": rows_of(n)}, {"a": raising(bad)}, seed=10).run()
    failed = [i for (i,) in ex.failed_i("a")]
    stats = ex.sched.stats()["a"]
    if not fails:
        assert ex.finished == 1 and not ex.fails and failed == sorted(bad)
        return
    assert ex.finished == 0 and len(ex.fails) == 1
    error = ex.fails[0].error
    assert error.type_name == "synthpipe.errors.TooManyFailedRows" and f"max_failure_rate={rate:g}" in error.message
    # one replica working in order: the rate is first judged at the first failure once 50 rows were seen
    first_judged = min(i for i in bad if i + 1 >= MIN_ROWS_FOR_FAILURE_RATE)
    assert failed == sorted(i for i in bad if i <= first_judged)
    assert stats.rows_in == first_judged + 1 >= MIN_ROWS_FOR_FAILURE_RATE
    assert [type(a) for a in ex.actions[-3:]] == [RowsFailed, Persist, Fail]


# -- graceful stop ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("at", [0, 15, 60])
def test_stop_lets_running_jobs_finish_and_hands_out_nothing_more(at, seed):
    specs = [
        gen("gen", ("a",), batch_size=7),
        step("a", ("gen",), ("b",), batch_size=5, replicas=2),
        step("b", ("a",), (), batch_size=3, replicas=2),
    ]
    fns = {"a": tag("a"), "b": tag("b")}
    ex = FakeExecutor(specs, {"gen": rows_of(300)}, fns, seed=seed, hooks=[(after(at), FakeExecutor.stop)]).run()
    assert ex.stop_requested and ex.drained == 1 and ex.finished == 0 and not ex.fails
    assert isinstance(ex.actions[-1], Drained)
    assert ex.work_after_stop == [] and ex.after_end == []
    # every job running at the stop was answered, and nothing is left running
    assert ex.running_at_stop and {t for _, t in ex.running_at_stop} <= ex.answered
    assert ex.sched.jobs_in_flight() == 0
    # what reached the leaf is the start of the input, in order, with no gap
    out = ex.emitted_i("b")
    assert out == list(range(len(out))) and len(out) < 300
    assert {r["trail"] for r in ex.emitted("b")} <= {"ab"}
    # the leaf's jobs that were running at the stop had their rows emitted
    b_tickets = {t for name, t in ex.running_at_stop if name == "b"}
    b_running = {a.batch.seq for a in ex.actions if isinstance(a, Dispatch) and a.ticket in b_tickets}
    assert b_running <= {e.seq for e in ex.emits["b"]}
    # every batch of a ever dispatched was completed and passed on
    assert ex.sched.stats()["a"].batches == len({b.seq for b in ex.dispatched["a"]})


def test_stop_when_nothing_is_running_drains_at_once():
    sched = Scheduler([gen("gen", ("a",), batch_size=7), step("a", ("gen",))])
    assert sched.start() == []
    assert sched.request_stop() == [Drained()]
    assert sched.worker_ready("gen", 0) == [] and sched.worker_ready("a", 0) == []
    assert sched.request_stop() == []  # Drained only once
    assert not sched.done and sched.failed is None


def test_stop_with_rows_held_but_no_job_running_drains_at_once():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5)]
    sched = Scheduler(specs, max_rows_in_flight=10)
    sched.start()
    (g0,) = sched.worker_ready("gen", 0)  # the bound allows one request
    # a has no worker yet: the batch is only stored
    assert sched.batch_done("gen", 0, g0.ticket, rows_of(10), False) == [Persist("gen", 0, rows_of(10), g0.ticket)]
    assert sched.rows_held() == 10 and sched.jobs_in_flight() == 0
    assert sched.request_stop() == [Drained()]
    assert sched.worker_ready("a", 0) == []
    sched.check_invariants()


def test_finished_wins_over_drained():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5)]
    sched, (d0, d1) = started(specs)
    assert sched.request_stop() == []  # two jobs are running
    assert [type(a) for a in sched.batch_done("a", 0, d1.ticket, d1.batch.inputs[0])] == [Persist]
    acts = sched.batch_done("a", 0, d0.ticket, d0.batch.inputs[0])
    assert [type(a) for a in acts] == [Persist, Emit, Emit, Finished]


@pytest.mark.parametrize("delay", [0.5, 50.0], ids=["due-while-draining", "due-after-drained"])
def test_stop_while_a_retry_waits_does_not_dispatch_it(delay):
    specs = chain_specs(replicas=2, retries=2, retry_delay=delay, n_b=2)
    hooks: list[Hook] = [(lambda ex: bool(ex.retry_laters), FakeExecutor.stop)]
    ex = FakeExecutor(specs, {"gen": rows_of(100)}, {"a": raising({13}, times=1)}, seed=11, hooks=hooks).run()
    assert ex.drained == 1 and ex.finished == 0 and not ex.fails
    ((_, rl),) = ex.retry_laters
    assert [(name, token) for _, name, token in ex.retries_fired] == [("a", rl.token)]  # it did come due
    assert ex.work_after_stop == [] and ex.after_end == []
    assert len(ex.dispatches_of("a", 2)) == 1  # never sent again
    assert ex.rows_failed == []  # not given up either: it is simply not finished
    out = ex.emitted_i("b")
    assert out == list(range(len(out))) and len(out) <= 10


def test_worker_died_while_stopping_is_not_restarted():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5, on_error="skip")]
    sched = Scheduler(specs)
    sched.start()
    sched.worker_ready("a", 0)
    g0, g1 = sched.worker_ready("gen", 0)
    p, d0, d1 = sched.batch_done("gen", 0, g0.ticket, rows_of(10), True)
    assert p == Persist("gen", 0, rows_of(10), g0.ticket, last=True)
    assert isinstance(d0, Dispatch) and isinstance(d1, Dispatch) and d1.replica == 0
    assert sched.request_stop() == []
    assert sched.batch_done("gen", 0, g1.ticket, [], True) == []  # the request past the end: two jobs left
    e = ErrorRecord.from_diagnosis(WorkerDied("killed"), step="a", replica=0)
    assert sched.worker_died("a", 0, e) == [Drained()]
    sched.check_invariants()
    assert (d0.batch.crashes, d1.batch.crashes, sched.stats()["a"].restarts) == (0, 0, 0)
    assert sched.worker_ready("a", 0) == []
    assert sched.request_stop() == []


def test_crash_while_stopping_in_a_run():
    def holds_13(ex: FakeExecutor) -> bool:
        return any(13 in ids(a.batch) for (name, _), q in ex.queues.items() if name == "a" for a in q)

    specs = chain_specs(replicas=2, on_error="skip", n_b=2)
    hooks: list[Hook] = [(holds_13, FakeExecutor.stop)]
    ex = FakeExecutor(specs, {"gen": rows_of(100)}, {"a": crashing({13})}, seed=12, hooks=hooks).run()
    assert ex.drained == 1 and ex.finished == 0 and not ex.fails and not ex.rows_failed
    (death,) = ex.deaths
    assert death.stopping and death.batch is not None and death.batch.seq == 2
    assert ex.restarts == [] and ex.sched.stats()["a"].restarts == 0
    assert death.batch.crashes == 0  # the stop may have caused it: not held against the batch
    assert ex.work_after_stop == [] and ex.after_end == []
    out = ex.emitted_i("b")
    assert out == list(range(len(out))) and len(out) <= 10


# -- known scheduler bugs -----------------------------------------------------------------------






def test_join_waits_for_a_branch_whose_batches_crashed_out_of_order():
    sched = Scheduler(aligned_join_specs(b_replicas=2), worker_capacity=1)
    acts = sched.start()
    for name, replica in [("a", 0), ("b", 0), ("b", 1), ("join", 0), ("gen", 0)]:
        acts += sched.worker_ready(name, replica)
    (g0,) = [a for a in acts if isinstance(a, Generate)]
    acts = sched.batch_done("gen", 0, g0.ticket, rows_of(7))
    (a0,) = [a for a in acts if isinstance(a, Dispatch) and a.batch.step == "a"]
    (g1,) = [a for a in acts if isinstance(a, Generate)]
    acts += sched.batch_done("gen", 0, g1.ticket, rows_of(14)[7:], True)
    b_jobs = {a.replica: a.batch.seq for a in acts if isinstance(a, Dispatch) and a.batch.step == "b"}
    assert b_jobs == {0: 0, 1: 1}
    acts = sched.batch_done("a", 0, a0.ticket, a0.batch.inputs[0])  # a delivers origin 0
    e = ErrorRecord.from_diagnosis(WorkerDied("segfault"), step="b")
    acts += sched.worker_died("b", 0, e)  # b's origin 0 goes back to `ready`...
    acts += sched.worker_died("b", 1, e)  # ...and b's origin 1 in front of it
    sched.check_invariants()
    # b has not delivered origin 0 yet: the join must not run origin 0 without it
    assert [d.batch.inputs for d in join_dispatches(acts) if not d.batch.inputs[1]] == []


def test_join_waits_for_a_branch_whose_retries_came_due_in_order():
    sched = Scheduler(aligned_join_specs(b_replicas=1, retries=1), worker_capacity=2)
    acts = sched.start()
    for name in ("a", "b", "join", "gen"):
        acts += sched.worker_ready(name, 0)
    gens = [a for a in acts if isinstance(a, Generate)]
    dispatched: dict[tuple[str, int], Dispatch] = {}
    k = 0
    while gens:  # the generator delivers 4 batches of 7
        g = gens.pop(0)
        acts = sched.batch_done("gen", 0, g.ticket, rows_of(28)[7 * k : 7 * k + 7], k >= 3)
        k += 1
        gens += [a for a in acts if isinstance(a, Generate)]
        dispatched |= {(a.batch.step, a.batch.seq): a for a in acts if isinstance(a, Dispatch)}
    assert sorted(dispatched) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]  # capacity 2: seqs 2, 3 wait
    a0 = dispatched["a", 0]
    acts = sched.batch_done("a", 0, a0.ticket, a0.batch.inputs[0])  # a delivers origin 0
    e = err("b")
    tokens = []
    for seq in (0, 1):  # b's origins 0 and 1 fail; seqs 2 and 3 take their places on the worker
        d = dispatched["b", seq]
        acts += (failed := sched.batch_failed("b", 0, d.ticket, e))
        tokens += [a.token for a in failed if isinstance(a, RetryLater)]
    for token in tokens:  # both come due, in order, while the worker is still busy
        acts += sched.retry_due("b", token)
    sched.check_invariants()
    assert [d.batch.inputs for d in join_dispatches(acts) if not d.batch.inputs[1]] == []


@pytest.mark.parametrize("trouble", ["retries", "crashes"])
def test_join_stays_aligned_when_a_feeder_retries_or_crashes(trouble):
    n, bad = 200, set(range(0, 200, 5))
    specs = aligned_join_specs(b_replicas=1 if trouble == "retries" else 3, retries=2, retry_delay=0.5)
    fns = {"b": raising(bad, times=1) if trouble == "retries" else crashing(bad, times=1), "join": merge}
    ex = FakeExecutor(specs, {"gen": rows_of(n)}, fns, seed=0, restart_delay=2.5).run()
    assert ex.finished == 1 and not ex.rows_failed
    assert len(ex.retry_laters if trouble == "retries" else ex.deaths) >= 20
    check_join(ex, n, 7, lambda i: True, lambda i: True)


def test_failure_rate_is_judged_once_the_step_has_seen_enough_rows():
    specs = chain_specs(on_error="skip", max_failure_rate=0.5)
    ex = FakeExecutor(specs, {"gen": rows_of(60)}, {"a": raising(set(range(40)))}, seed=0).run()
    assert ex.sched.stats()["a"].rows_failed == 40  # 40 of the first 50 rows: 80%
    assert ex.finished == 0 and len(ex.fails) == 1
    assert ex.fails[0].error.type_name == "synthpipe.errors.TooManyFailedRows"


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_a_batch_that_raises_while_stopping_is_left_unfinished(policy):
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5, retries=2, on_error=policy)]
    sched = Scheduler(specs)
    sched.start()
    sched.worker_ready("a", 0)
    g0, g1 = sched.worker_ready("gen", 0)
    p, d0, d1 = sched.batch_done("gen", 0, g0.ticket, rows_of(10), True)
    assert p == Persist("gen", 0, rows_of(10), g0.ticket, last=True)
    assert isinstance(d0, Dispatch) and isinstance(d1, Dispatch)
    assert sched.batch_done("gen", 0, g1.ticket, [], True) == []  # the request past the end
    assert sched.request_stop() == []
    assert sched.batch_done("a", 0, d1.ticket, d1.batch.inputs[0]) == [persist_of(d1)]
    acts = sched.batch_failed("a", 0, d0.ticket, err())  # a transient error, 2 retries left
    assert [a for a in acts if isinstance(a, (Fail, RowsFailed, Persist))] == []  # not given up, not stored
    assert Drained() in acts
