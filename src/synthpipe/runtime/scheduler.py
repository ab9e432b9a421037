"""The scheduler: pure logic that turns events into actions.

It owns batching, re-batching between steps of different batch sizes, fan-out, joins of
branches (aligned by the generator batch the rows came from), global steps, ordering and
backpressure. It starts no process, opens no pipe and reads no clock: the executor feeds
it events (a worker is ready, a batch is done, a batch failed, a worker died) and carries
out the actions it returns. That keeps every routing case a fast unit test.

Terms:
- *seq*: the number of a batch within one step, 0, 1, 2... in the order batches were formed.
  Outputs are released downstream strictly in seq order, whatever order workers finish in.
- *origin*: for each row, the seq of the generator (or global step) batch it descends from.
  Streams are ordered by origin, so a step can tell when a branch has delivered every row of
  an origin (its *watermark*) and a join can align its branches origin by origin. Steps on the
  way to a join never put rows of two origins in one batch, so whatever rows a step returns
  (filtered, rebuilt, expanded) their origin is exact.
- *finished*: a step is finished once its predecessors are and it holds nothing more; that is
  the whole last-batch protocol (a generator reports its last batch itself).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from synthpipe.errors import ErrorRecord

Row = dict[str, Any]
StepKind = Literal["generator", "normal", "global"]


@dataclass(frozen=True)
class StepSpec:
    """What the scheduler needs to know of a step (no user code)."""

    name: str
    kind: StepKind
    predecessors: tuple[str, ...] = ()
    successors: tuple[str, ...] = ()
    batch_size: int = 50
    replicas: int = 1
    on_error: Literal["fail", "skip"] = "fail"
    max_batches: int | None = None  # generators only: stop after this many (dry runs)


@dataclass
class Batch:
    """Rows sent to one step in one go: one list per predecessor (none for generators)."""

    step: str
    seq: int
    inputs: list[list[Row]]
    origins: list[list[int]]
    row_start: int = 0

    @property
    def size(self) -> int:
        return sum(len(rows) for rows in self.inputs)

    @property
    def rows(self) -> tuple[int, int] | None:
        """First and last row number, in the step's input stream, of the first input."""
        n = len(self.inputs[0]) if self.inputs else 0
        return (self.row_start, self.row_start + n - 1) if n else None

    @property
    def min_origin(self) -> float:
        return min((o[0] for o in self.origins if o), default=math.inf)


# -- actions ------------------------------------------------------------------------------


@dataclass
class Dispatch:
    """Send ``batch`` to ``replica`` of its step."""

    replica: int
    batch: Batch


@dataclass
class Generate:
    """Ask generator ``step`` for its next batch, numbered ``seq``."""

    step: str
    replica: int
    seq: int


@dataclass
class Emit:
    """Rows a leaf step produced, in order: part of the result."""

    step: str
    seq: int
    rows: list[Row]


@dataclass
class RowsFailed:
    """A batch failed under the ``skip`` policy: its rows go to the failed-rows ledger."""

    batch: Batch
    error: ErrorRecord


@dataclass
class Fail:
    """Stop the run: ``error`` says why."""

    error: ErrorRecord


@dataclass
class Finished:
    """Every step is done."""


Action = Union[Dispatch, Generate, Emit, RowsFailed, Fail, Finished]


@dataclass
class StepStats:
    rows_in: int = 0
    rows_out: int = 0
    rows_failed: int = 0
    batches: int = 0


@dataclass
class _Output:
    rows: list[Row]
    origins: list[int]
    min_origin: float


@dataclass
class _StepState:
    spec: StepSpec
    buffers: list[list[Row]] = field(default_factory=list)
    buffer_origins: list[list[int]] = field(default_factory=list)
    next_seq: int = 0
    rows_batched: int = 0
    ready: deque[Batch] = field(default_factory=deque)
    in_flight: dict[int, tuple[Batch | None, int]] = field(default_factory=dict)
    completed: dict[int, _Output] = field(default_factory=dict)
    next_release: int = 0
    finished: bool = False
    last_seq: int | None = None  # generators: seq of the final batch, once known
    workers: dict[int, int] = field(default_factory=dict)  # ready replica -> outstanding
    held: int = 0  # rows this step holds: buffered, queued, running or unreleased
    stats: StepStats = field(default_factory=StepStats)

    def pending_origin(self) -> float:
        """Smallest origin of any row this step holds (buffered, queued, running, unreleased)."""
        low = min((o[0] for o in self.buffer_origins if o), default=math.inf)
        if self.ready:  # formed in order from ordered streams: the first holds the lowest
            low = min(low, self.ready[0].min_origin)
        for batch, _ in self.in_flight.values():
            if batch is not None:
                low = min(low, batch.min_origin)
        for out in self.completed.values():
            low = min(low, out.min_origin)
        return low


class Scheduler:
    """Decides what runs where and when, from events alone."""

    def __init__(
        self,
        specs: list[StepSpec],
        *,
        max_rows_in_flight: int = 20_000,
        worker_capacity: int = 2,
    ) -> None:
        self.specs = {s.name: s for s in specs}
        self.order = [s.name for s in specs]  # topological
        self.states = {
            s.name: _StepState(
                spec=s,
                buffers=[[] for _ in s.predecessors],
                buffer_origins=[[] for _ in s.predecessors],
            )
            for s in specs
        }
        self.max_rows_in_flight = max_rows_in_flight
        self.worker_capacity = worker_capacity
        self.split_at_origin = _feeders_of_joins(self.specs)
        self.failed: ErrorRecord | None = None
        self.done = False

    # -- queries --------------------------------------------------------------------------

    def stats(self) -> dict[str, StepStats]:
        return {name: st.stats for name, st in self.states.items()}

    def batch_on(self, step: str, replica: int) -> Batch | None:
        """The oldest batch outstanding on a replica (to name it when the worker dies)."""
        for batch, rep in self.states[step].in_flight.values():
            if rep == replica and batch is not None:
                return batch
        return None

    def generate_seq_on(self, step: str, replica: int) -> int | None:
        for seq, (batch, rep) in sorted(self.states[step].in_flight.items()):
            if rep == replica and batch is None:
                return seq
        return None

    def rows_held(self) -> int:
        """Rows held in memory anywhere, except those gathered by global steps (all, by design)."""
        return sum(st.held for st in self.states.values() if st.spec.kind != "global")

    def check_invariants(self) -> None:
        """Raise AssertionError if the running counts disagree with a recount (for tests)."""
        for name, st in self.states.items():
            recount = sum(len(b) for b in st.buffers) + sum(b.size for b in st.ready)
            recount += sum(b.size for b, _ in st.in_flight.values() if b is not None)
            recount += sum(len(o.rows) for o in st.completed.values())
            assert st.held == recount, f"{name}: held {st.held} != {recount}"
            capacity = 1 if st.spec.kind == "global" else self.worker_capacity
            assert all(0 <= n <= capacity for n in st.workers.values()), f"{name}: {st.workers}"

    # -- events ---------------------------------------------------------------------------

    def start(self) -> list[Action]:
        return self._advance()

    def worker_ready(self, step: str, replica: int) -> list[Action]:
        if self._stopped():
            return []
        self.states[step].workers[replica] = 0
        return self._advance()

    def batch_done(
        self,
        step: str,
        replica: int,
        seq: int,
        rows: list[Row],
        last: bool = False,
    ) -> list[Action]:
        if self._stopped():
            return []
        st = self.states[step]
        batch, _ = st.in_flight.pop(seq)
        self._free_slot(st, replica)
        if st.spec.kind == "generator":
            if st.last_seq is not None and seq > st.last_seq:
                return self._advance()  # asked for past the end: nothing there
            if last or (st.spec.max_batches is not None and seq + 1 >= st.spec.max_batches):
                st.last_seq = seq
            st.completed[seq] = _Output(rows, [seq] * len(rows), seq)
            st.held += len(rows)
            st.stats.rows_out += len(rows)
            st.stats.batches += 1
            return self._advance()
        assert batch is not None
        origin = 0 if st.spec.kind == "global" else int(batch.min_origin) if batch.size else 0
        st.completed[seq] = _Output(rows, [origin] * len(rows), batch.min_origin)
        st.held += len(rows) - batch.size
        st.stats.rows_in += batch.size
        st.stats.rows_out += len(rows)
        st.stats.batches += 1
        return self._advance()

    def batch_failed(self, step: str, replica: int, seq: int, error: ErrorRecord) -> list[Action]:
        if self._stopped():
            return []
        st = self.states[step]
        batch, _ = st.in_flight.pop(seq)
        self._free_slot(st, replica)
        if batch is None or st.spec.kind != "normal" or st.spec.on_error == "fail":
            return self._fail(error)
        st.completed[seq] = _Output([], [], batch.min_origin)
        st.held -= batch.size
        st.stats.rows_in += batch.size
        st.stats.rows_failed += batch.size
        st.stats.batches += 1
        return [RowsFailed(batch, error), *self._advance()]

    def load_failed(self, step: str, replica: int, error: ErrorRecord) -> list[Action]:
        if self._stopped():
            return []
        return self._fail(error)

    def worker_died(self, step: str, replica: int, error: ErrorRecord) -> list[Action]:
        if self._stopped():
            return []
        return self._fail(error)

    # -- the engine room ------------------------------------------------------------------

    def _stopped(self) -> bool:
        return self.failed is not None or self.done

    def _fail(self, error: ErrorRecord) -> list[Action]:
        self.failed = error
        return [Fail(error)]

    @staticmethod
    def _free_slot(st: _StepState, replica: int) -> None:
        if replica in st.workers:
            st.workers[replica] = max(0, st.workers[replica] - 1)

    def _advance(self) -> list[Action]:
        """Move everything forward as far as it can go; return what to do."""
        actions: list[Action] = []
        progressed = True
        while progressed:
            progressed = False
            for name in self.order:
                st = self.states[name]
                progressed |= self._release(st, actions)
                progressed |= self._form_batches(st)
                progressed |= self._check_finished(st)
        for name in self.order:
            self._dispatch(self.states[name], actions)
        self._request_generation(actions)
        if all(st.finished for st in self.states.values()):
            self.done = True
            actions.append(Finished())
        return actions

    def _release(self, st: _StepState, actions: list[Action]) -> bool:
        released = False
        while st.next_release in st.completed:
            seq = st.next_release
            out = st.completed.pop(seq)
            st.next_release += 1
            st.held -= len(out.rows)
            released = True
            if not st.spec.successors:
                actions.append(Emit(st.spec.name, seq, out.rows))
            for succ in st.spec.successors:
                target = self.states[succ]
                index = target.spec.predecessors.index(st.spec.name)
                target.buffers[index].extend(out.rows)
                target.buffer_origins[index].extend(out.origins)
                target.held += len(out.rows)
        return released

    def _preds_finished(self, st: _StepState) -> bool:
        return all(self.states[p].finished for p in st.spec.predecessors)

    def _check_finished(self, st: _StepState) -> bool:
        if st.finished:
            return False
        if st.spec.kind == "generator":
            done = st.last_seq is not None and st.next_release > st.last_seq
        else:
            done = (
                self._preds_finished(st)
                and not any(st.buffers)
                and not st.ready
                and not st.in_flight
                and not st.completed
            )
        if done:
            st.finished = True
        return done

    def _watermark(self, name: str, memo: dict[str, float]) -> float:
        """Highest origin whose rows this step has all released downstream (-1: none yet)."""
        if name in memo:
            return memo[name]
        st = self.states[name]
        if st.finished:
            mark = math.inf
        elif st.spec.kind == "generator":
            mark = st.next_release - 1
        elif st.spec.kind == "global":
            mark = -1
        else:
            upstream = min(self._watermark(p, memo) for p in st.spec.predecessors)
            mark = min(upstream, st.pending_origin() - 1)
        memo[name] = mark
        return mark

    def _form_batches(self, st: _StepState) -> bool:
        spec = st.spec
        if spec.kind == "generator" or st.finished:
            return False
        if spec.kind == "global":
            if st.next_seq > 0 or not self._preds_finished(st):
                return False
            if not any(st.buffers):
                st.buffers = [[] for _ in spec.predecessors]
                st.buffer_origins = [[] for _ in spec.predecessors]
                return False
            self._queue(st, st.buffers, st.buffer_origins)
            st.buffers = [[] for _ in spec.predecessors]
            st.buffer_origins = [[] for _ in spec.predecessors]
            return True
        if len(spec.predecessors) == 1:
            return self._form_sequential(st)
        return self._form_joined(st)

    def _form_sequential(self, st: _StepState) -> bool:
        size = st.spec.batch_size
        rows, origins = st.buffers[0], st.buffer_origins[0]
        upstream_done = self._preds_finished(st)
        split = st.spec.name in self.split_at_origin
        formed = False
        start = 0
        while True:
            end = min(start + size, len(rows))
            if split and end > start and origins[end - 1] != origins[start]:
                end = bisect.bisect_right(origins, origins[start], start, end)
            elif end - start < size and not upstream_done:
                # A short group can go once upstream has delivered all of its origin.
                if not (split and end > start and self._upstream_complete(st, origins[start])):
                    break
            if end <= start:
                break
            self._queue(st, [rows[start:end]], [origins[start:end]])
            start = end
            formed = True
        if start:
            del rows[:start]
            del origins[:start]
        return formed

    def _upstream_complete(self, st: _StepState, origin: int) -> bool:
        memo: dict[str, float] = {}
        return min(self._watermark(p, memo) for p in st.spec.predecessors) >= origin

    def _form_joined(self, st: _StepState) -> bool:
        """One batch per origin, once every branch has delivered all of that origin's rows."""
        memo: dict[str, float] = {}
        complete = min(self._watermark(p, memo) for p in st.spec.predecessors)
        formed = False
        while True:
            heads = [o[0] for o in st.buffer_origins if o]
            if not heads or min(heads) > complete:
                break
            origin = min(heads)
            inputs: list[list[Row]] = []
            origins: list[list[int]] = []
            for rows, orig in zip(st.buffers, st.buffer_origins, strict=True):
                n = 0
                while n < len(orig) and orig[n] == origin:
                    n += 1
                inputs.append(rows[:n])
                origins.append(orig[:n])
                del rows[:n]
                del orig[:n]
            self._queue(st, inputs, origins)
            formed = True
        return formed

    def _queue(self, st: _StepState, inputs: list[list[Row]], origins: list[list[int]]) -> None:
        batch = Batch(st.spec.name, st.next_seq, inputs, origins, st.rows_batched)
        st.next_seq += 1
        st.rows_batched += len(inputs[0]) if inputs else 0
        st.ready.append(batch)

    def _dispatch(self, st: _StepState, actions: list[Action]) -> None:
        capacity = 1 if st.spec.kind == "global" else self.worker_capacity
        while st.ready and st.workers:
            replica = min(st.workers, key=lambda r: (st.workers[r], r))
            if st.workers[replica] >= capacity:
                return
            batch = st.ready.popleft()
            st.workers[replica] += 1
            st.in_flight[batch.seq] = (batch, replica)
            actions.append(Dispatch(replica, batch))

    def _request_generation(self, actions: list[Action]) -> None:
        stalled = not any(st.in_flight or st.ready for st in self.states.values())
        held = self.rows_held()
        for st in self.states.values():  # rows already asked of every generator
            if st.spec.kind == "generator":
                held += st.spec.batch_size * sum(1 for b, _ in st.in_flight.values() if b is None)
        for name in self.order:
            st = self.states[name]
            spec = st.spec
            if spec.kind != "generator" or st.finished or 0 not in st.workers:
                continue
            while st.workers[0] < self.worker_capacity:
                if st.last_seq is not None:
                    break
                if spec.max_batches is not None and st.next_seq >= spec.max_batches:
                    break
                if held + spec.batch_size > self.max_rows_in_flight and not stalled:
                    break
                stalled = False  # one batch is enough to get moving again
                held += spec.batch_size
                seq = st.next_seq
                st.next_seq += 1
                st.workers[0] += 1
                st.in_flight[seq] = (None, 0)
                actions.append(Generate(name, 0, seq))


def _feeders_of_joins(specs: dict[str, StepSpec]) -> set[str]:
    """Steps whose rows reach a join without passing a global step: they must keep origins exact."""
    feeders: set[str] = set()
    todo = [p for s in specs.values() if s.kind == "normal" and len(s.predecessors) > 1 for p in s.predecessors]
    while todo:
        name = todo.pop()
        spec = specs[name]
        if name in feeders or spec.kind != "normal":
            continue
        feeders.add(name)
        todo.extend(spec.predecessors)
    return feeders
