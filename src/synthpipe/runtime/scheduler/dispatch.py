"""Dispatch and backpressure: outputs completed and released in seq order, batches sent to free
replicas, generators asked for more while the rows in flight allow it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from synthpipe.runtime.contract import (
    REPLAY,
    Action,
    Batch,
    Dispatch,
    Drained,
    Emit,
    Finished,
    Generate,
    Persist,
    Replay,
    Row,
)
from synthpipe.runtime.scheduler.routing import RoutingFailed
from synthpipe.runtime.scheduler.state import (
    _Job,
    _Output,
    _StepState,
)

QUEUED_SECONDS = 0.02
"""A quick step's worker holds batches for about this much of its own work at a time."""
MAX_QUICK_CAPACITY = 16
"""The most batches a quick step's worker holds at once (a stop waits for them)."""


class Dispatching:
    """Moves completed outputs on and work out (mixed into Scheduler)."""

    def _complete(self, st: _StepState, batch: Batch, rows: list[Row], ticket: int | None,
                  failed: bool = False, failed_at: tuple[int, ...] = (),
                  sources: tuple[int, ...] | None = None) -> list[Action]:
        """A batch (or part of one) is through; a whole seq becomes releasable, and is stored
        first if it was computed in this run.

        ``failed_at``: positions, among the batch's inputs, of rows that failed (all of them
        when ``failed``)."""
        st.held += len(rows) - batch.size
        st.stats.rows_in += batch.size
        st.stats.rows_out += len(rows)
        if failed:
            failed_at = tuple(range(batch.size))
        keys_in = batch.keys[0] if batch.keys else []
        keys = _output_keys(keys_in, len(rows), failed_at, sources)
        inputs = batch.size
        if batch.part is not None:
            iso = st.isolating[batch.seq]
            iso.outputs[batch.part[0]] = rows
            iso.keys[batch.part[0]] = keys
            # explicit, so that a replay of the stored batch gives each row the key it got here
            iso.sources[batch.part[0]] = _output_sources(batch.size, len(rows), failed_at, sources)
            iso.failed_at.extend(batch.part[0] + i for i in failed_at)
            iso.pending -= 1
            if iso.pending:
                return []
            del st.isolating[batch.seq]
            rows = [row for start in sorted(iso.outputs) for row in iso.outputs[start]]
            keys = [key for start in sorted(iso.keys) for key in iso.keys[start]]
            sources = tuple(start + i for start in sorted(iso.sources) for i in iso.sources[start])
            failed_at, ticket, inputs = tuple(sorted(iso.failed_at)), None, iso.size
        try:
            routed_to = self._route(st, batch.seq, rows, batch.replay)
        except RoutingFailed as failure:
            return self._routing_failed(failure)
        origin = 0 if st.spec.kind == "global" else int(batch.min_origin) if batch.size else 0
        if routed_to is not None:
            origin = batch.seq  # a routing step's rows are counted by its batches (see scheduler.routing)
        st.completed[batch.seq] = _Output(rows, [origin] * len(rows), batch.min_origin, fresh=not batch.replay,
                                          keys=keys, routed_to=routed_to)
        st.stats.batches += 1
        if batch.replay:
            return []
        return [Persist(st.spec.name, batch.seq, rows, None if failed else ticket, failed=len(failed_at),
                        inputs=inputs, failed_at=failed_at, sources=sources, routed_to=routed_to)]

    def _advance(self) -> list[Action]:
        """Move everything forward as far as it can go; return what to do.

        Only the steps an event can have changed are looked at (``_touched``), in topological
        order: a step's release, batch forming and finish depend only on its own state and on
        the steps above it, so one sweep reaches what a rescan of every step would."""
        actions: list[Action] = []
        if self.failed is not None:  # e.g. a routing function raised while a batch completed
            return actions
        touched, order = self._touched, self.order
        depends = self._watermark_dependents()
        swept: set[str] = set()
        while touched:
            for name in order:
                if name not in touched:
                    continue
                touched.discard(name)
                swept.add(name)
                st = self.states[name]
                was_finished = st.finished
                self._release(st, actions)  # touches the successors it gives rows to
                self._form_batches(st)
                self._check_finished(st)
                if st.finished and not was_finished:
                    touched.update(st.spec.successors)
                if depends[name]:
                    touched.update(depends[name])
        if all(st.finished for st in self.states.values()):
            self.done = True
            actions.append(Finished())
            return actions
        if self.stopping:
            if not self.drained and not self.jobs_in_flight():
                self.drained = True
                actions.append(Drained())
            return actions
        for name in self.order:
            if name not in swept:
                continue  # unchanged since it was last dispatched
            st = self.states[name]
            while st.replays:
                batch = st.replays.popleft()
                ticket = next(self._tickets)
                st.in_flight[ticket] = _Job(ticket, REPLAY, batch)
                actions.append(Replay(name, batch.seq, ticket))
            self._dispatch(st, actions)
        self._request_generation(actions)
        return actions

    def _release(self, st: _StepState, actions: list[Action]) -> bool:
        released = False
        while st.next_release in st.completed:
            seq = st.next_release
            out = st.completed.pop(seq)
            st.next_release += 1
            st.held -= len(out.rows)
            released = True
            if st.spec.kind == "generator":
                out.keys = list(range(st.rows_released, st.rows_released + len(out.rows)))
                st.rows_released += len(out.rows)
            if not st.spec.successors:
                actions.append(Emit(st.spec.name, seq, out.rows, out.keys))
            self._record_decision(st.spec.name, seq, out.routed_to)
            for succ in st.spec.successors:
                if out.routed_to is not None and succ not in out.routed_to:
                    continue  # routed elsewhere
                target = self.states[succ]
                self._touched.add(succ)
                index = target.spec.predecessors.index(st.spec.name)
                if out.fresh and target.fresh_at[index] == math.inf:
                    target.fresh_at[index] = target.consumed[index] + len(target.buffers[index])
                target.buffers[index].extend(out.rows)
                target.buffer_origins[index].extend(out.origins)
                target.buffer_keys[index].extend(out.keys)
                target.held += len(out.rows)
        return released

    def _touch(self, step: str) -> None:
        """An event changed ``step``: the next ``_advance`` looks at it."""
        self._touched.add(step)

    def _watermark_dependents(self) -> dict[str, frozenset[str]]:
        """Per step, the steps below it whose batch forming reads watermarks (joins, and steps
        on the way to one): any change to the step can let them form a batch."""
        split = self.split_at_origin  # set again by a staged run after the scheduler is made
        if self._depends is not None and self._depends[0] is split:
            return self._depends[1]
        readers = {name for name, spec in self.specs.items() if spec.kind == "normal"
                   and (len(spec.predecessors) > 1 or name in split)}
        below: dict[str, set[str]] = {name: set() for name in self.order}
        for name in reversed(self.order):
            for succ in self.specs[name].successors:
                below[name] |= {succ} | below[succ]
        depends = {name: frozenset(below[name] & readers) for name in self.order}
        self._depends = (split, depends)
        return depends

    def _preds_finished(self, st: _StepState) -> bool:
        return all(self.states[p].finished for p in st.spec.predecessors)

    def _check_finished(self, st: _StepState) -> bool:
        if st.finished:
            return False
        if st.spec.kind == "generator":
            done = st.last_seq is not None and st.next_release > st.last_seq
        else:
            # the step's own state first: cheap, and while it runs it says no at once
            done = not st.busy() and not st.completed and not any(st.buffers) and self._preds_finished(st)
        if done:
            st.finished = True
        return done

    def _capacity(self, st: _StepState) -> int:
        """Batches one worker of the step holds at once: a global step one, a step that says how
        many that many; otherwise the scheduler's ``worker_capacity``, and more for a quick step
        (its batches take little time each, going by what its workers said): enough for about
        ``QUEUED_SECONDS`` of its work, so that its worker never waits for the coordinator,
        and the coordinator reads a worker's answers many at a time."""
        if st.spec.kind == "global":
            return 1
        if st.spec.capacity:
            return st.spec.capacity
        if st.pace is None:
            return self.worker_capacity
        return max(self.worker_capacity, min(MAX_QUICK_CAPACITY, int(QUEUED_SECONDS / max(st.pace, 1e-6))))

    def _dispatch(self, st: _StepState, actions: list[Action]) -> None:
        capacity = self._capacity(st)
        while st.ready and st.workers:
            replica = min(st.workers, key=lambda r: (st.workers[r], r))
            if st.workers[replica] >= capacity:
                return
            batch = st.ready.popleft()
            st.workers[replica] += 1
            ticket = next(self._tickets)
            st.in_flight[ticket] = _Job(ticket, replica, batch)
            actions.append(Dispatch(replica, batch, ticket))

    def _request_generation(self, actions: list[Action]) -> None:
        held: int | None = None  # counted when first needed, before anything here changes them
        stalled = False
        for name in self.order:
            st = self.states[name]
            spec = st.spec
            if spec.kind != "generator" or st.finished:
                continue
            capacity = self._capacity(st)
            while st.last_seq is None and (spec.max_batches is None or st.next_seq < spec.max_batches):
                if not st.diverged and st.next_seq not in st.stored:
                    st.diverged = True  # from here on the generator runs
                    st.fresh_offset = sum(st.stored[seq].rows for seq in range(st.next_seq) if seq in st.stored)
                replay = not st.diverged
                if not replay and (0 not in st.workers or st.workers[0] >= capacity):
                    break
                if not replay and any(job.replica == REPLAY for job in st.in_flight.values()):
                    break  # the stored batches may hold the last one: know that before asking for more
                if held is None:
                    stalled = not any(other.busy() for other in self.states.values())
                    held = self.rows_held()
                    for other in self.states.values():  # rows already asked of every generator
                        if other.spec.kind == "generator":
                            held += other.spec.batch_size * len(other.in_flight)
                if held + spec.batch_size > self.max_rows_in_flight and not stalled:
                    break
                stalled = False  # one batch is enough to get moving again
                held += spec.batch_size
                seq = st.next_seq
                st.next_seq += 1
                ticket = next(self._tickets)
                if replay:
                    st.in_flight[ticket] = _Job(ticket, REPLAY, None, seq)
                    actions.append(Replay(name, seq, ticket))
                    continue
                st.workers[0] += 1
                st.in_flight[ticket] = _Job(ticket, 0, None, seq)
                actions.append(Generate(name, 0, seq, ticket, st.fresh_offset))


def _output_sources(inputs: int, rows_out: int, failed_at: tuple[int, ...],
                    sources: Sequence[int] | None = None) -> tuple[int, ...]:
    """For each output row of a batch, the position of the input whose key it takes."""
    if sources is not None and len(sources) == rows_out and all(0 <= i < inputs for i in sources):
        return tuple(sources)
    if not failed_at and rows_out == inputs:
        return tuple(range(inputs))
    if failed_at:
        failed = set(failed_at)
        kept = tuple(i for i in range(inputs) if i not in failed)
        if len(kept) == rows_out:
            return kept
    return (0,) * rows_out


def _output_keys(keys_in: list[int], rows_out: int, failed_at: tuple[int, ...],
                 sources: tuple[int, ...] | None = None) -> list[int]:
    """The keys of a batch's output (see *key* above)."""
    if sources is None and not failed_at and rows_out == len(keys_in):
        return keys_in  # the common case, without a copy
    if not keys_in:
        return [0] * rows_out
    return [keys_in[i] for i in _output_sources(len(keys_in), rows_out, failed_at, sources)]
