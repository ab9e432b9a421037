"""Unit tests of the pure scheduler, durability and resume: persist before use, replay of
stored batches, row keys, rows failing on their own.

They run against ``fake_executor.FakeExecutor`` (see there), which plays every worker."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fake_executor import (
    RESUME_SHAPES,
    FakeExecutor,
    _empty_fresh_output_case,
    after,
    all_late,
    check_resumed,
    crashing,
    emitted_keys,
    err,
    full_store,
    gen,
    ids,
    keep,
    persist_of,
    raising,
    resume_runs,
    rows_of,
    run_isolation,
    run_shape,
    started,
    step,
    tag,
    worker_answers,
)
from synthpipe.errors import ErrorRecord
from synthpipe.runtime.scheduler import (
    REPLAY,
    Dispatch,
    Emit,
    Fail,
    Finished,
    Generate,
    Persist,
    Replay,
    RestartWorker,
    RowsFailed,
    Scheduler,
    StoredOutput,
)

# -- durability: persist, replay, resume ------------------------------------------------------------




















@pytest.mark.parametrize("shape", list(RESUME_SHAPES))
def test_resume_after_an_interruption_gives_the_same_result_and_recomputes_nothing_stored(shape):
    s = RESUME_SHAPES[shape]
    rng = random.Random(shape)
    tried = Counter()
    for seed in (0, 1):
        full = run_shape(s, seed)
        total = full.completions
        points = sorted({1, total // 3, total // 2, 2 * total // 3, total - 2, rng.randrange(total), total + 3})
        for k, at in enumerate(points):
            for how in ("stop", "kill"):
                late, at_once = bool((k + seed) % 2), bool(k % 3 == 1)
                runs = resume_runs(s, seed, [(after(at), how)], late, at_once)
                check_resumed(s, full, runs, late)
                first = runs[0]
                tried["replayed" if any(runs[1].replays.values()) else "none-replayed"] += 1
                tried["recomputed" if any(runs[1].persisted.values()) else "nothing-left"] += 1
                tried["replayed-before-any-worker"] += bool(late and runs[1].replays_before_ready)
                tried["cut-mid-isolation"] += any(
                    p is not None and q not in first.persisted[n] for n, q, p in first.computed
                )
    # the interruptions did land in the middle of things
    assert tried["replayed"] >= 8 and tried["recomputed"] >= 8 and tried["nothing-left"] >= 2
    assert tried["replayed-before-any-worker"] >= 4
    if shape == "isolation":
        assert tried["cut-mid-isolation"] >= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_resume_after_two_interruptions(seed):
    for name in ("chain-7-5-3", "join-with-filtering-branch", "isolation"):
        s = RESUME_SHAPES[name]
        full = run_shape(s, seed)
        third = full.completions // 3
        # seed 0: the second run is cut short while it is still being given its stored batches back
        second = after(2) if seed == 0 else worker_answers(third)
        stops = [(after(third), "kill"), (second, "stop")] if seed % 2 else [(after(third), "stop"), (second, "kill")]
        runs = resume_runs(s, seed, stops, late=seed == 2, at_once=False)
        check_resumed(s, full, runs, late=seed == 2)
        if seed == 0:
            assert not any(runs[1].persisted.values())
            assert sum(map(len, runs[1].replayed.values())) < sum(map(len, runs[1].stored.values()))
        else:
            assert all(any(run.persisted.values()) for run in runs)






def test_every_finished_batch_is_persisted_once_before_it_is_used():
    """Checked action by action by the FakeExecutor; here the whole picture of uninterrupted runs."""
    for name, shape in RESUME_SHAPES.items():
        ex = run_shape(shape, 3)
        assert ex.finished == 1 and not any(ex.replays.values())
        for s in shape.specs:
            persisted = ex.persisted[s.name]
            assert sorted(persisted) == list(
                range(ex.sched.states[s.name].next_seq if s.kind != "generator" else max(persisted) + 1)
            ), (name, s.name)
            assert ex.sched.stats()[s.name].replayed == 0
            if s.kind == "generator":  # only the last batch is flagged last; every row generated is stored
                assert [seq for seq, p in persisted.items() if p.last] == [max(persisted)]
                assert [r["i"] for seq in sorted(persisted) for r in persisted[seq].rows] == list(range(shape.rows))
            else:
                assert sum(p.failed for p in persisted.values()) == ex.sched.stats()[s.name].rows_failed
            if s.predecessors == ("gen",):  # each row reached the step's function once, in a finished batch
                reached = [i for seq in persisted for i in ex.finished_inputs[s.name, seq]]
                assert sorted(reached) == list(range(shape.rows)), (name, s.name)
    # replicas finish out of order: batches are stored as they finish, yet released in order
    ex = run_shape(RESUME_SHAPES["replicas-out-of-order"], 0)
    order = [a.seq for a in ex.actions if isinstance(a, Persist) and a.step == "a"]
    assert order != sorted(order) and [e.seq for e in ex.emits["leaf"]] == list(range(len(ex.emits["leaf"])))


def test_persist_of_a_skipped_batch_and_of_an_isolated_one():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5, on_error="skip")]
    sched, (d0, d1) = started(specs)
    e = ErrorRecord.from_message("ValueError", "bad", step="a", retryable=False)
    acts = sched.batch_failed("a", 0, d0.ticket, e)
    assert [type(a) for a in acts] == [RowsFailed, Persist, Emit]  # stored, then released (empty)
    assert acts[1:] == [Persist("a", 0, [], None, failed=5, inputs=5, failed_at=(0, 1, 2, 3, 4)), Emit("a", 0, [])]
    acts = sched.batch_done("a", 0, d1.ticket, d1.batch.inputs[0])
    assert [type(a) for a in acts] == [Persist, Emit, Finished]
    assert (acts[0].seq, acts[0].ticket, acts[0].failed) == (1, d1.ticket, 0)
    # isolation: the parts are put together, the poison row counted as failed
    ex = run_isolation("two-poison-rows-in-one-batch", seed=0, replicas=2)
    assert ex.finished == 1
    p = ex.persisted["a"][2]
    assert (p.ticket, p.failed, [r["i"] for r in p.rows]) == (None, 2, [10, 12, 14])
    assert p.failed_at == (1, 3)  # the poison rows 11 and 13, by position in the batch
    assert {r["trail"] for r in p.rows} == {"a"}
    assert all(q.ticket is not None and q.failed == 0 for seq, q in ex.persisted["a"].items() if seq != 2)


def test_resume_replays_the_stored_generator_prefix_then_generates_from_its_offset():
    specs = [gen("gen", ("a",), batch_size=7), step("a", ("gen",), batch_size=5)]
    sched = Scheduler(specs, stored={"gen": {0: 7, 1: 7}})
    r0, r1 = sched.start()  # no worker is ready: the stored batches are given back anyway
    assert (r0, r1) == (Replay("gen", 0, r0.ticket), Replay("gen", 1, r1.ticket))
    assert sched.worker_ready("gen", 0) == []  # fresh batches only once the stored ones are back
    assert sched.worker_ready("a", 0) == []
    acts = sched.batch_done("gen", REPLAY, r1.ticket, rows_of(14)[7:])  # out of order: held back
    assert acts == []
    acts = sched.batch_done("gen", REPLAY, r0.ticket, rows_of(7))
    assert not any(isinstance(a, Persist) for a in acts)  # given back, not stored again
    assert [ids(a.batch) for a in acts if isinstance(a, Dispatch)] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    g2, g3 = [a for a in acts if isinstance(a, Generate)]
    assert (g2.seq, g2.offset, g3.seq, g3.offset) == (2, 14, 3, 14)
    acts = sched.batch_done("gen", 0, g2.ticket, rows_of(21)[14:])
    assert acts[0] == Persist("gen", 2, rows_of(21)[14:], g2.ticket)
    sched.check_invariants()
    assert (sched.stats()["gen"].replayed, sched.stats()["gen"].batches) == (2, 3)
    # the same through the FakeExecutor: the generator resumes at row 14, and the result is whole
    shape = RESUME_SHAPES["chain-7-5-3"]
    full, store = full_store(shape)
    for late in (False, True):
        ex = run_shape(
            shape,
            1,
            stored={"gen": {0: store["gen"][0], 1: store["gen"][1]}},
            late=all_late(shape.specs) if late else None,
        )
        assert ex.finished == 1 and ex.replays["gen"] == [0, 1]
        assert ex.generates["gen"][:1] == [2] and set(ex.gen_offsets["gen"]) == {14}
        assert sorted(ex.persisted["gen"]) == [2, 3, 4, 5]
        assert ex.emitted("b") == full.emitted("b")
        assert ex.replays_before_ready in (None, 2)


def test_a_gap_in_the_stored_generator_batches_ends_the_replay():
    specs = [gen("gen", ("a",), batch_size=7), step("a", ("gen",), batch_size=5)]
    sched = Scheduler(specs, stored={"gen": {0: 7, 1: 7, 3: 7}, "a": {0: 5, 1: 5, 2: 5, 3: 5}})
    r0, r1 = sched.start()
    assert [(type(a), a.seq) for a in (r0, r1)] == [(Replay, 0), (Replay, 1)]
    sched.worker_ready("gen", 0)
    sched.batch_done("gen", REPLAY, r0.ticket, rows_of(7))
    acts = sched.batch_done("gen", REPLAY, r1.ticket, rows_of(14)[7:])
    g2, g3 = [a for a in acts if isinstance(a, Generate)]
    assert (g2.seq, g2.offset, g3.seq, g3.offset) == (2, 14, 3, 14)  # seq 3 is stored, yet generated again
    # through the FakeExecutor: a's batches made of generator batches 0-1 are replayed, the rest computed
    shape = RESUME_SHAPES["chain-7-5-3"]
    full, store = full_store(shape)
    del store["gen"][2]
    ex = run_shape(shape, 2, stored=store)
    assert ex.finished == 1 and ex.emitted("b") == full.emitted("b")
    assert ex.replays["gen"] == [0, 1] and set(ex.gen_offsets["gen"]) == {14}
    assert sorted(ex.persisted["gen"]) == [2, 3, 4, 5]
    assert sorted(ex.replays["a"]) == [0, 1]  # rows 0-9; a's seq 2 holds row 14, the first fresh row
    assert sorted(b.seq for b in ex.dispatched["a"]) == list(range(2, 8))
    assert sorted(ex.replays["b"]) == [0, 1, 2]  # a's rows 0-8: those of a's seq 0 and 1 only
    assert sorted(ex.persisted["b"]) == list(range(3, 14))


def test_a_stored_batch_is_not_replayed_once_a_batch_it_depends_on_is_computed_again():
    shape = RESUME_SHAPES["chain-7-5-3"]
    full, store = full_store(shape)
    # a's seq 1 (rows 5-9) is missing: b's seq 1 (rows 3-5) holds row 5, and every later b batch follows it
    del store["a"][1]
    ex = run_shape(shape, 0, stored=store)
    assert ex.finished == 1 and ex.emitted("b") == full.emitted("b")
    assert sorted(ex.replays["gen"]) == list(range(6))
    assert sorted(ex.replays["a"]) == [0, 2, 3, 4, 5, 6, 7] and [b.seq for b in ex.dispatched["a"]] == [1]
    assert ex.replays["b"] == [0] and sorted(ex.persisted["b"]) == list(range(1, 14))
    # the first generator batch is missing: nothing downstream can be the stored batch any more
    full, store = full_store(shape)
    del store["gen"][0]
    ex = run_shape(shape, 0, stored=store)
    assert ex.finished == 1 and ex.emitted("b") == full.emitted("b")
    assert not any(ex.replays.values()) and ex.sched.stats()["b"].replayed == 0
    assert {name: len(seqs) for name, seqs in ex.persisted.items()} == {"gen": 6, "a": 8, "b": 14}
    # in a join, a branch computed again makes the join compute again from that origin on, not before
    shape = RESUME_SHAPES["join-with-filtering-branch"]
    full, store = full_store(shape)
    origin_1 = [b.seq for b in full.dispatched["b"] if b.origins[0][0] == 1]
    del store["b"][origin_1[-1]]
    ex = run_shape(shape, 0, stored=store)
    assert ex.finished == 1 and ex.emits["join"] == full.emits["join"]
    assert ex.replays["join"] == [0] and sorted(ex.persisted["join"]) == list(range(1, 7))
    assert sorted(ex.replays["a"]) == sorted(store["a"]) and [b.seq for b in ex.dispatched["b"]] == origin_1[-1:]


def test_replay_missing_computes_a_batch_again_and_fails_a_generator():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5)]
    sched = Scheduler(specs, stored={"gen": {0: 10}, "a": {0: 5, 1: 5}})
    (r,) = sched.start()
    ra0, ra1 = sched.batch_done("gen", REPLAY, r.ticket, rows_of(10), True)
    assert (ra0.step, ra0.seq, ra1.seq) == ("a", 0, 1)
    assert sched.replay_missing("a", ra1.ticket) == []  # no worker yet
    sched.check_invariants()
    (d,) = sched.worker_ready("a", 0)
    assert isinstance(d, Dispatch) and (d.batch.seq, ids(d.batch), d.batch.replay) == (1, [5, 6, 7, 8, 9], False)
    assert sched.replay_missing("a", ra1.ticket) == []  # an old ticket: nothing to do
    assert sched.batch_done("a", 0, d.ticket, d.batch.inputs[0]) == [persist_of(d)]
    acts = sched.batch_done("a", REPLAY, ra0.ticket, rows_of(5))
    assert [(type(a), getattr(a, "seq", None)) for a in acts] == [(Emit, 0), (Emit, 1), (Finished, None)]
    assert (sched.stats()["a"].replayed, sched.stats()["gen"].replayed) == (1, 1)
    # through the FakeExecutor: what follows the batch computed again is computed again too
    shape = RESUME_SHAPES["chain-7-5-3"]
    full, store = full_store(shape)
    ex = run_shape(shape, 0, stored=store, missing={("a", 2)})
    assert ex.finished == 1 and ex.emitted("b") == full.emitted("b")
    assert [b.seq for b in ex.dispatched["a"]] == [2] and sorted(ex.persisted["a"]) == [2]
    assert sorted(ex.replays["a"]) == list(range(8)) and ex.replayed["a"] == set(range(8)) - {2}
    assert sorted(ex.replayed["b"]) == [0, 1, 2] and sorted(ex.persisted["b"]) == list(range(3, 14))
    # a generator cannot be given its stored batch 1 back: the run fails, nothing is computed
    for at_once in (False, True):
        ex = run_shape(shape, 0, stored=store, missing={("gen", 1)}, replay_at_once=at_once)
        assert ex.finished == 0 and len(ex.fails) == 1
        error = ex.fails[0].error
        assert (error.step, error.batch) == ("gen", 1) and "stored batch 1 cannot be read" in error.message
        assert not ex.dispatched and not any(ex.persisted.values())
        assert set(ex.generates["gen"]) <= {6, 7}  # only past the stored batches, if at all


@pytest.mark.parametrize("late", [False, True], ids=["workers-ready", "workers-never-ready"])
def test_everything_stored_finishes_without_computing_anything(late):
    for name, shape in RESUME_SHAPES.items():
        full, store = full_store(shape)
        for at_once in (False, True):
            ex = run_shape(shape, 5, stored=store, late=all_late(shape.specs) if late else None, replay_at_once=at_once)
            assert ex.finished == 1 and not ex.fails, name
            assert not ex.dispatched and not any(ex.persisted.values()) and not ex.rows_failed, name
            if late:
                assert ex.queues == {} and not ex.generates  # no worker was ever needed
            leaves = [s.name for s in shape.specs if not s.successors]
            assert all(ex.emits[leaf] == full.emits[leaf] for leaf in leaves), name
            assert {s.name: ex.sched.stats()[s.name].replayed for s in shape.specs} == {
                s.name: len(store.get(s.name, {})) for s in shape.specs
            }


def test_replays_need_no_worker_and_take_no_worker_capacity():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5)]
    sched = Scheduler(specs, worker_capacity=1, stored={"gen": {0: 10}, "a": {0: 5, 1: 5}})
    (r,) = sched.start()
    ra0, ra1 = sched.batch_done("gen", REPLAY, r.ticket, rows_of(10))
    assert isinstance(ra0, Replay) and isinstance(ra1, Replay)
    assert sched.worker_ready("a", 0) == []
    (g,) = sched.worker_ready("gen", 0)
    assert (g.seq, g.offset) == (1, 10)
    # a has two replays in flight and capacity 1: a fresh batch still goes to its worker at once
    acts = sched.batch_done("gen", 0, g.ticket, rows_of(20)[10:], True)
    assert [type(a) for a in acts] == [Persist, Dispatch] and acts[1].batch.seq == 2
    (d,) = [a for a in acts if isinstance(a, Dispatch)]
    acts = sched.batch_done("a", 0, d.ticket, d.batch.inputs[0])
    assert [type(a) for a in acts] == [Persist, Dispatch]  # seq 3; seqs 0-2 wait for the replays
    sched.check_invariants()
    assert sched.batch_done("a", REPLAY, ra1.ticket, rows_of(10)[5:]) == []
    acts = sched.batch_done("a", REPLAY, ra0.ticket, rows_of(5))
    assert [(type(a), a.seq) for a in acts] == [(Emit, 0), (Emit, 1), (Emit, 2)]
    # a run whose workers are all late, under a tight bound on rows in flight: the replays go on alone
    shape = RESUME_SHAPES["global-step"]
    full, store = full_store(shape)
    del store["b"][5]
    ex = run_shape(shape, 0, stored=store, late=all_late(shape.specs), max_rows_in_flight=8)
    assert ex.finished == 1 and ex.emitted("b") == full.emitted("b")
    assert ex.replays_before_ready == sum(map(len, store.values())) and [b.seq for b in ex.dispatched["b"]] == [5]


def test_a_stop_while_replaying_waits_for_the_replays_in_flight():
    shape = RESUME_SHAPES["chain-7-5-3"]
    full, store = full_store(shape)
    ex = run_shape(shape, 0, stored=store, hooks=[(after(3), FakeExecutor.stop)])
    assert ex.drained == 1 and ex.finished == 0 and ex.work_after_stop == [] and ex.after_end == []
    assert not any(ex.persisted.values()) and not ex.dispatched
    assert ex.store_queue == [] and all(set(ex.replays[n]) == ex.replayed[n] for n in ex.replays)
    assert 0 < sum(map(len, ex.replayed.values())) < sum(map(len, store.values()))


# -- known scheduler bugs: durability ------------------------------------------------------------




@pytest.mark.parametrize("case", ["chain-stream-end", "join-branch", "global-branch"])
def test_a_stored_batch_cut_where_an_empty_fresh_output_was_is_not_replayed(case):
    full, ex, leaf = _empty_fresh_output_case(case)
    assert full.finished == 1 and ex.finished == 1
    # the result is made of this run's outputs: nothing of what the step dropped this time
    if case == "chain-stream-end":
        assert 11 not in ex.replays["b"] and ex.emitted_i("b") == list(range(35))
    elif case == "join-branch":
        assert 0 not in ex.replays["join"]
        assert ex.emits["join"][0].rows == [{"branches": [list(range(7)), []]}]
    else:
        assert ex.replays["g"] == []
        assert ex.emitted("g") == [{"branches": [list(range(21)), []]}]


def test_a_generator_asks_for_fresh_batches_only_once_its_stored_ones_are_given_back():
    """The stored batches may hold the last one: an answer past it must never be stored."""
    specs = [gen("gen", ("a",), batch_size=7), step("a", ("gen",), batch_size=5)]
    sched = Scheduler(specs, stored={"gen": {0: 7, 1: 3}})  # 10 rows: batch 1 was the last
    acts = sched.start()
    r0, r1 = acts
    acts += sched.worker_ready("a", 0)
    assert sched.worker_ready("gen", 0) == []  # replays outstanding: no fresh request yet
    acts += sched.batch_done("gen", REPLAY, r0.ticket, rows_of(7))
    acts += sched.batch_done("gen", REPLAY, r1.ticket, rows_of(10)[7:], True)
    assert not any(isinstance(a, Generate) for a in acts)
    for d in [a for a in acts if isinstance(a, Dispatch)]:
        acts += sched.batch_done("a", 0, d.ticket, d.batch.inputs[0])
    assert isinstance(acts[-1], Finished)
    # as in a run that was never interrupted (test_generate_past_the_end_is_ignored), nothing past the end is kept
    assert [a for a in acts if isinstance(a, Persist) and a.step == "gen"] == []
    assert sched.stats()["gen"].batches == 2


def test_failed_rows_of_replayed_batches_count_for_the_failure_guard():
    """A resumed run still knows the rows that failed in the batches it replays."""
    specs = [gen("gen", ("a",), batch_size=5), step("a", ("gen",), on_error="skip", max_failed_rows=3)]
    sched = Scheduler(specs, stored={"gen": {0: 5}, "a": {0: StoredOutput(0, inputs=5, failed=5)}})
    (r0,) = sched.start()
    acts = sched.batch_done("gen", REPLAY, r0.ticket, rows_of(5), True)
    (ra,) = [a for a in acts if isinstance(a, Replay)]
    acts = sched.batch_done("a", REPLAY, ra.ticket, [])
    assert isinstance(acts[-1], Fail)
    assert "5 rows failed, more than max_failed_rows=3" in acts[-1].error.message
    assert sched.stats()["a"].rows_failed == 5 and sched.stats()["a"].replayed == 1


def test_a_worker_killed_for_no_fault_of_its_jobs_blames_none_of_them():
    """The batch that overran its timeout finished just as its worker was killed: the batch
    queued behind it must not be counted as having crashed the worker."""
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5, max_restarts=0)]
    sched, (d0, d1) = started(specs)
    sched.batch_done("a", 0, d0.ticket, d0.batch.inputs[0])
    acts = sched.worker_died("a", 0, err("a"), blame=False)
    assert [type(a) for a in acts] == [RestartWorker]
    assert d1.batch.crashes == 0 and not sched.failed
    (again,) = sched.worker_ready("a", 0)
    assert isinstance(again, Dispatch) and again.batch.seq == d1.batch.seq


# -- row keys -------------------------------------------------------------------------------




@pytest.mark.parametrize("seed", range(4))
def test_keys_are_generator_row_numbers_through_one_to_one_steps_whatever_fails(seed):
    """Rows keep the number of the generator row they came from through batching, re-batching,
    replicas, skipped batches and isolated poison rows: that is what puts retried rows back in place."""
    specs = [gen("gen", ("a",), batch_size=7), step("a", ("gen",), ("b",), batch_size=4, on_error="skip", replicas=2),
             step("b", ("a",), batch_size=3, on_error="skip")]
    fns = {"a": crashing({5, 17}, then=tag("a")), "b": raising({9, 22}, retryable=False, then=tag("b"))}
    ex = FakeExecutor(specs, {"gen": rows_of(30)}, fns, seed=seed).run()
    assert ex.finished == 1
    assert emitted_keys(ex, "b") == ex.emitted_i("b")
    failed = [i for rf in ex.rows_failed for i in ids(rf.batch)]
    assert {5, 9, 17, 22} <= set(failed) and sorted(failed + ex.emitted_i("b")) == list(range(30))
    for rf in ex.rows_failed:  # failed rows carry their keys too
        assert rf.batch.keys[0] == ids(rf.batch)


def test_keys_of_a_step_that_changes_the_row_count_are_its_first_input_row():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), ("b",), batch_size=4), step("b", ("a",))]
    fns = {"a": keep(lambda r: r["i"] % 3 == 0)}
    ex = FakeExecutor(specs, {"gen": rows_of(10)}, fns).run()
    assert ex.emitted_i("b") == [0, 3, 6, 9]
    assert emitted_keys(ex, "b") == [0, 0, 4, 8]  # batches [0..3] -> 0, 3; [4..7] -> 6; [8, 9] -> 9


def test_keys_of_a_replayed_batch_with_failed_rows_are_those_of_its_first_run():
    specs = [gen("gen", ("a",), batch_size=5), step("a", ("gen",), ("b",), batch_size=5, on_error="skip"),
             step("b", ("a",))]
    sched = Scheduler(specs, stored={"gen": {0: 5}, "a": {0: StoredOutput(3, inputs=5, failed=2, failed_at=(1, 3))},
                                     "b": {0: 3}})
    acts = sched.start()
    (r,) = acts
    acts = sched.batch_done("gen", REPLAY, r.ticket, rows_of(5), True)
    (ra,) = [a for a in acts if isinstance(a, Replay)]
    acts = sched.batch_done("a", REPLAY, ra.ticket, [{"i": 0}, {"i": 2}, {"i": 4}])
    (rb,) = [a for a in acts if isinstance(a, Replay)]
    acts = sched.batch_done("b", REPLAY, rb.ticket, [{"i": 0}, {"i": 2}, {"i": 4}])
    (emit,) = [a for a in acts if isinstance(a, Emit)]
    assert emit.keys == [0, 2, 4]


# -- rows failing on their own (an LLM request that still failed) --------------------------


def test_rows_failed_alone_go_to_the_ledger_and_the_rest_of_the_batch_goes_on():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5, on_error="skip")]
    sched, (d0, d1) = started(specs)
    e1 = ErrorRecord.from_message("RequestFailed", "429 after 6 attempts", step="a")
    e3 = ErrorRecord.from_message("RequestFailed", "timed out", step="a")
    kept = [r for i, r in enumerate(d0.batch.inputs[0]) if i not in (1, 3)]
    acts = sched.batch_done("a", 0, d0.ticket, kept, False, [(1, e1), (3, e3)])
    sched.check_invariants()
    failed = [a for a in acts if isinstance(a, RowsFailed)]
    assert [(ids(f.batch), f.batch.keys, f.batch.row_start, f.error) for f in failed] == [
        ([1], [[1]], 1, e1), ([3], [[3]], 3, e3)]
    (persist,) = [a for a in acts if isinstance(a, Persist)]
    assert (persist.failed, persist.failed_at, persist.ticket) == (2, (1, 3), d0.ticket)
    (emit,) = [a for a in acts if isinstance(a, Emit)]
    assert ([r["i"] for r in emit.rows], emit.keys) == ([0, 2, 4], [0, 2, 4])
    assert sched.stats()["a"].rows_failed == 2


def test_a_row_failed_alone_stops_a_step_whose_policy_is_fail():
    specs = [gen("gen", ("a",), batch_size=10), step("a", ("gen",), batch_size=5)]
    sched, (d0, _) = started(specs)
    e = ErrorRecord.from_message("RequestFailed", "400 bad request", step="a")
    assert sched.batch_done("a", 0, d0.ticket, [], False, [(0, e)]) == [Fail(e)]


def test_a_step_can_hold_more_batches_per_worker_than_the_default():
    specs = [gen("gen", ("a",), batch_size=40), step("a", ("gen",), batch_size=5, capacity=6)]
    sched, dispatches = started(specs, rows=40)
    assert len(dispatches) == 6 and {d.replica for d in dispatches} == {0}
    sched.check_invariants()


def test_sources_of_isolated_parts_are_put_together_for_the_stored_batch():
    """A step that says where its rows came from (an LLM task with two generations per row),
    isolated after crashes: the stored batch keeps the sources of its parts, shifted."""
    specs = [gen("gen", ("a",), batch_size=4), step("a", ("gen",), batch_size=4, on_error="skip", max_restarts=0)]
    sched, (d0,) = started(specs, rows=4, worker_capacity=1)
    crash = ErrorRecord.from_message("synthpipe.errors.WorkerDied", "segfault", step="a")
    acts = sched.worker_died("a", 0, crash)  # max_restarts=0: split at once
    acts += sched.worker_ready("a", 0)
    (p0,) = [a for a in acts if isinstance(a, Dispatch)]
    assert p0.batch.part == (0, 2)
    two_each = [dict(r) for r in p0.batch.inputs[0] for _ in range(2)]
    acts = sched.batch_done("a", 0, p0.ticket, two_each, sources=[0, 0, 1, 1])
    (p1,) = [a for a in acts if isinstance(a, Dispatch)]
    assert p1.batch.part == (2, 4)
    acts = sched.batch_done("a", 0, p1.ticket, [dict(p1.batch.inputs[0][1])] * 2, sources=[1, 1])
    (persist,) = [a for a in acts if isinstance(a, Persist)]
    assert persist.sources == (0, 0, 1, 1, 3, 3)
    (emit,) = [a for a in acts if isinstance(a, Emit)]
    assert emit.keys == [0, 0, 1, 1, 3, 3]


def test_an_isolated_batch_of_a_filtering_step_replays_with_the_keys_it_got_live():
    """A step that drops rows (no sources), isolated after crashes: each part's rows take the
    key of that part's first row; the stored batch says so, so a replay gives the same keys."""
    specs = [gen("gen", ("a",), batch_size=4), step("a", ("gen",), batch_size=4, on_error="skip", max_restarts=0)]
    sched, (d0,) = started(specs, rows=4, worker_capacity=1)
    crash = ErrorRecord.from_message("synthpipe.errors.WorkerDied", "segfault", step="a")
    acts = sched.worker_died("a", 0, crash) + sched.worker_ready("a", 0)
    (p0,) = [a for a in acts if isinstance(a, Dispatch)]
    acts = sched.batch_done("a", 0, p0.ticket, [dict(p0.batch.inputs[0][1])])  # kept 1 of rows 0-1
    (p1,) = [a for a in acts if isinstance(a, Dispatch)]
    acts = sched.batch_done("a", 0, p1.ticket, [dict(p1.batch.inputs[0][1])])  # kept 1 of rows 2-3
    (persist,) = [a for a in acts if isinstance(a, Persist)]
    (emit,) = [a for a in acts if isinstance(a, Emit)]
    assert emit.keys == [0, 2]  # each part's first row

    replayed = Scheduler(specs, stored={"gen": {0: 4}, "a": {0: StoredOutput(2, inputs=4, sources=persist.sources)}})
    (r,) = replayed.start()
    acts = replayed.batch_done("gen", REPLAY, r.ticket, rows_of(4), True)
    (ra,) = [a for a in acts if isinstance(a, Replay)]
    acts = replayed.batch_done("a", REPLAY, ra.ticket, persist.rows)
    (emit_again,) = [a for a in acts if isinstance(a, Emit)]
    assert emit_again.keys == emit.keys
