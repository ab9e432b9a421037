"""The scheduler: pure logic that turns events into actions.

It owns batching, re-batching between steps of different batch sizes, fan-out, joins of
branches (aligned by the generator batch the rows came from), global steps, ordering,
backpressure, retries, restarts after crashes, poison-row isolation and graceful stops.
It starts no process, opens no pipe and reads no clock: the executor feeds it events (a
worker is ready, a job is done, a job failed, a worker died, a retry is due, stop) and
carries out the actions it returns. That keeps every routing and failure case a fast unit
test.

Terms:
- *seq*: the number of a batch within one step, 0, 1, 2... in the order batches were formed.
  Outputs are released downstream strictly in seq order, whatever order workers finish in.
- *ticket*: the number of one dispatch of a batch (or of a part of one, or of a generator
  request) to a worker. A batch retried or split gets new tickets; its seq stays.
- *origin*: for each row, the seq of the generator (or global step) batch it descends from.
  Streams are ordered by origin, so a step can tell when a branch has delivered every row of
  an origin (its *watermark*) and a join can align its branches origin by origin. Steps on the
  way to a join never put rows of two origins in one batch, so whatever rows a step returns
  (filtered, rebuilt, expanded) their origin is exact.
- *finished*: a step is finished once its predecessors are and it holds nothing more; that is
  the whole last-batch protocol (a generator reports its last batch itself).
- *isolation*: a batch that keeps killing its worker is split in halves, and halves again,
  until the crashing rows are alone; they are failed rows, the rest goes on.
- *key*: for each row, the number of the generator row it descends from (0, 1, 2...). A step
  that returns one row per input row (less the rows that failed) passes the keys through; other
  outputs take the key of their batch's first row. Keys put rows retried later back in order.
- *replay*: a batch finished by an earlier run is not run again: its stored output is given
  back (``Replay``). That is only right while the batch is the very batch that was stored,
  i.e. while every row in it came from stored outputs upstream; from the first row that was
  computed afresh upstream (*fresh*), a step computes afresh too. Fresh outputs are stored
  (``Persist``) before anything downstream sees them.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Union

from synthpipe.errors import ErrorRecord, TooManyFailedRows

Row = dict[str, Any]
StepKind = Literal["generator", "normal", "global"]

MIN_ROWS_FOR_FAILURE_RATE = 50
"""A step's failure rate is only judged once it has seen this many rows."""

REPLAY = -1
"""The replica number of a replayed job: no worker runs it."""


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
    retries: int = 0  # new attempts for a batch that raised
    retry_delay: float = 1.0  # seconds before the first retry; doubles each time
    max_restarts: int = 1  # new attempts for a batch whose worker died, before isolating rows
    max_failed_rows: int | None = None
    max_failure_rate: float | None = None
    capacity: int = 0  # batches one worker holds at a time (0: the scheduler's worker_capacity)


@dataclass
class Batch:
    """Rows sent to one step in one go: one list per predecessor (none for generators)."""

    step: str
    seq: int
    inputs: list[list[Row]]
    origins: list[list[int]]
    row_start: int = 0
    attempts: int = 0  # times it raised
    crashes: int = 0  # times it killed its worker (a crash or a timeout)
    part: tuple[int, int] | None = None  # rows [a, b) of its seq's batch, while isolating
    replay: bool = False  # its output is stored from an earlier run
    keys: list[list[int]] = field(default_factory=list)  # per input, per row: see *key*

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
    """Send ``batch`` to ``replica`` of its step; the worker answers with ``ticket``."""

    replica: int
    batch: Batch
    ticket: int


@dataclass
class Generate:
    """Ask generator ``step`` for its batch number ``seq``; the worker answers with ``ticket``."""

    step: str
    replica: int
    seq: int
    ticket: int
    offset: int = 0  # rows the generator yielded before its first fresh batch (resume)


@dataclass
class Replay:
    """Give back the stored output of ``step``'s batch ``seq`` instead of running it, by
    calling ``batch_done(step, REPLAY, ticket, rows, last)`` (or ``replay_missing``)."""

    step: str
    seq: int
    ticket: int


@dataclass
class Persist:
    """Store a freshly finished batch's output; it comes before anything that uses it.

    ``ticket`` names the job whose output this is exactly (its bytes can be stored as
    received), or is None when the output was put together (isolated parts, failed rows).
    """

    step: str
    seq: int
    rows: list[Row]
    ticket: int | None
    last: bool = False
    failed: int = 0
    inputs: int = 0  # rows that went into the batch (none for a generator)
    failed_at: tuple[int, ...] = ()  # positions of the failed rows among the batch's inputs
    sources: tuple[int, ...] | None = None  # per output row, the input it came from (when the step said)


@dataclass
class Emit:
    """Rows a leaf step produced, in order: part of the result."""

    step: str
    seq: int
    rows: list[Row]
    keys: list[int] = field(default_factory=list)


@dataclass
class RowsFailed:
    """Rows given up on (``skip`` policy, or a poison row): they go to the failed-rows ledger."""

    batch: Batch
    error: ErrorRecord


@dataclass
class RetryLater:
    """Call ``retry_due(step, token)`` after ``delay`` seconds."""

    step: str
    token: int
    delay: float
    error: ErrorRecord
    attempt: int = 1  # the attempt that just failed
    attempts: int = 1  # how many attempts the step allows in all


@dataclass
class RestartWorker:
    """Start a new worker process for ``replica`` of ``step`` (the old one died)."""

    step: str
    replica: int
    error: ErrorRecord


@dataclass
class Fail:
    """Stop the run: ``error`` says why."""

    error: ErrorRecord


@dataclass
class Drained:
    """A stop was requested and no job is running any more."""


@dataclass
class Finished:
    """Every step is done."""


Action = Union[
    Dispatch, Generate, Replay, Persist, Emit, RowsFailed, RetryLater, RestartWorker, Fail, Drained, Finished
]


@dataclass
class StepStats:
    rows_in: int = 0
    rows_out: int = 0
    rows_failed: int = 0
    batches: int = 0
    retries: int = 0
    restarts: int = 0
    replayed: int = 0  # batches given back from the store


@dataclass
class _Output:
    rows: list[Row]
    origins: list[int]
    min_origin: float
    fresh: bool = True  # computed in this run (not replayed)
    keys: list[int] = field(default_factory=list)


@dataclass
class _Job:
    ticket: int
    replica: int
    batch: Batch | None  # None: a generator request
    gen_seq: int = -1


@dataclass
class _Isolation:
    """A batch split into parts after it kept crashing its worker."""

    min_origin: float
    pending: int
    size: int
    outputs: dict[int, list[Row]] = field(default_factory=dict)  # part start -> rows
    keys: dict[int, list[int]] = field(default_factory=dict)  # part start -> keys of its rows
    sources: dict[int, tuple[int, ...]] = field(default_factory=dict)  # part start -> its rows' inputs
    failed_at: list[int] = field(default_factory=list)


@dataclass
class _StepState:
    spec: StepSpec
    buffers: list[list[Row]] = field(default_factory=list)
    buffer_origins: list[list[int]] = field(default_factory=list)
    buffer_keys: list[list[int]] = field(default_factory=list)
    next_seq: int = 0
    rows_batched: int = 0
    ready: deque[Batch] = field(default_factory=deque)
    replays: deque[Batch] = field(default_factory=deque)  # formed, to give back from the store
    in_flight: dict[int, _Job] = field(default_factory=dict)  # ticket -> job
    waiting: dict[int, Batch] = field(default_factory=dict)  # token -> batch waiting to retry
    isolating: dict[int, _Isolation] = field(default_factory=dict)  # seq -> parts
    completed: dict[int, _Output] = field(default_factory=dict)
    next_release: int = 0
    finished: bool = False
    last_seq: int | None = None  # generators: seq of the final batch, once known
    workers: dict[int, int] = field(default_factory=dict)  # ready replica -> outstanding
    held: int = 0  # rows this step holds, in any of the places above
    stats: StepStats = field(default_factory=StepStats)
    last_error: ErrorRecord | None = None  # of the last rows given up on
    stored: dict[int, int] = field(default_factory=dict)  # seq -> rows, finished by an earlier run
    stored_inputs: dict[int, int] = field(default_factory=dict)  # seq -> rows that went in
    stored_failed: dict[int, int] = field(default_factory=dict)  # seq -> rows that failed in it
    stored_failed_at: dict[int, tuple[int, ...]] = field(default_factory=dict)  # seq -> their positions
    stored_sources: dict[int, tuple[int, ...]] = field(default_factory=dict)  # seq -> input of each output row
    rows_released: int = 0  # generators: rows released so far (the next row's key)
    consumed: list[int] = field(default_factory=list)  # per predecessor: rows taken into batches
    fresh_at: list[float] = field(default_factory=list)  # per predecessor: first fresh row (inf: none)
    diverged: bool = False  # generators: producing fresh batches now
    fresh_offset: int = 0  # generators: rows before the first fresh batch

    def pending_origin(self) -> float:
        """Smallest origin of any row this step holds and has not released."""
        low = min((o[0] for o in self.buffer_origins if o), default=math.inf)
        if self.ready:  # kept in seq order (see Scheduler._requeue): the first is the lowest
            low = min(low, self.ready[0].min_origin)
        if self.replays:
            low = min(low, self.replays[0].min_origin)
        for job in self.in_flight.values():
            if job.batch is not None:
                low = min(low, job.batch.min_origin)
        for batch in self.waiting.values():
            low = min(low, batch.min_origin)
        for iso in self.isolating.values():
            low = min(low, iso.min_origin)
        for out in self.completed.values():
            low = min(low, out.min_origin)
        return low

    def busy(self) -> bool:
        return bool(self.in_flight or self.ready or self.replays or self.waiting or self.isolating)


class Scheduler:
    """Decides what runs where and when, from events alone."""

    def __init__(
        self,
        specs: list[StepSpec],
        *,
        max_rows_in_flight: int = 20_000,
        worker_capacity: int = 2,
        stored: dict[str, dict[int, int]] | None = None,
        stored_inputs: dict[str, dict[int, int]] | None = None,
        stored_failed: dict[str, dict[int, int]] | None = None,
        stored_failed_at: dict[str, dict[int, tuple[int, ...]]] | None = None,
        stored_sources: dict[str, dict[int, tuple[int, ...]]] | None = None,
    ) -> None:
        """``stored``: per step, the batches (seq -> rows out) an earlier run finished;
        ``stored_inputs``: how many rows went into each, where known (a batch formed now with
        another size is not the stored one); ``stored_failed``: rows that failed in each (they
        still count for the failure guard and the statistics when the batch is replayed);
        ``stored_failed_at``: where in each batch those rows were, ``stored_sources``: the input
        each output row came from, where the step said (the keys of its output follow)."""
        self.specs = {s.name: s for s in specs}
        self.order = [s.name for s in specs]  # topological
        self.states = {
            s.name: _StepState(
                spec=s,
                buffers=[[] for _ in s.predecessors],
                buffer_origins=[[] for _ in s.predecessors],
                buffer_keys=[[] for _ in s.predecessors],
                stored=dict((stored or {}).get(s.name, {})),
                stored_inputs=dict((stored_inputs or {}).get(s.name, {})),
                stored_failed=dict((stored_failed or {}).get(s.name, {})),
                stored_failed_at=dict((stored_failed_at or {}).get(s.name, {})),
                stored_sources=dict((stored_sources or {}).get(s.name, {})),
                consumed=[0 for _ in s.predecessors],
                fresh_at=[math.inf for _ in s.predecessors],
            )
            for s in specs
        }
        self.max_rows_in_flight = max_rows_in_flight
        self.worker_capacity = worker_capacity
        self.split_at_origin = _feeders_of_joins(self.specs)
        self.failed: ErrorRecord | None = None
        self.done = False
        self.stopping = False
        self.drained = False
        self._tickets = itertools.count()

    # -- queries --------------------------------------------------------------------------

    def stats(self) -> dict[str, StepStats]:
        return {name: st.stats for name, st in self.states.items()}

    def job_on(self, step: str, replica: int) -> tuple[Batch | None, int | None]:
        """What a replica is working on: its oldest batch, or the seq of a generator request."""
        jobs = sorted((j for j in self.states[step].in_flight.values() if j.replica == replica),
                      key=lambda j: j.ticket)
        if not jobs:
            return None, None
        return jobs[0].batch, (jobs[0].gen_seq if jobs[0].batch is None else None)

    def rows_held(self) -> int:
        """Rows held in memory anywhere, except those gathered by global steps (all, by design)."""
        return sum(st.held for st in self.states.values() if st.spec.kind != "global")

    def jobs_in_flight(self) -> int:
        return sum(len(st.in_flight) for st in self.states.values())

    def check_invariants(self) -> None:
        """Raise AssertionError if the running counts disagree with a recount (for tests)."""
        for name, st in self.states.items():
            recount = sum(len(b) for b in st.buffers) + sum(b.size for b in st.ready)
            recount += sum(b.size for b in st.replays)
            recount += sum(j.batch.size for j in st.in_flight.values() if j.batch is not None)
            recount += sum(b.size for b in st.waiting.values())
            recount += sum(len(r) for iso in st.isolating.values() for r in iso.outputs.values())
            recount += sum(len(o.rows) for o in st.completed.values())
            assert st.held == recount, f"{name}: held {st.held} != {recount}"
            capacity = 1 if st.spec.kind == "global" else st.spec.capacity or self.worker_capacity
            assert all(0 <= n <= capacity for n in st.workers.values()), f"{name}: {st.workers}"

    # -- events ---------------------------------------------------------------------------

    def start(self) -> list[Action]:
        return self._advance()

    def worker_ready(self, step: str, replica: int) -> list[Action]:
        if self._over():
            return []
        self.states[step].workers[replica] = 0
        return self._advance()

    def batch_done(self, step: str, replica: int, ticket: int, rows: list[Row], last: bool = False,
                   failed: Sequence[tuple[int, ErrorRecord]] = (),
                   sources: Sequence[int] | None = None) -> list[Action]:
        """``failed``: input rows (by position in the first input) that failed while the rest of
        the batch went on; ``rows`` are the outputs of the others; ``sources``: for each output
        row, the position of the input row it came from, where the step knows."""
        if self._over():
            return []
        st = self.states[step]
        job = self._pop_job(st, ticket, replica)
        if job is None:
            return self._advance()
        replayed = replica == REPLAY
        st.stats.replayed += replayed
        if job.batch is None:  # a generator's batch
            seq = job.gen_seq
            if st.last_seq is not None and seq > st.last_seq:
                return self._advance()  # asked for past the end: nothing there
            if last or (st.spec.max_batches is not None and seq + 1 >= st.spec.max_batches):
                st.last_seq = seq
            st.completed[seq] = _Output(rows, [seq] * len(rows), seq, fresh=not replayed)
            st.held += len(rows)
            st.stats.rows_out += len(rows)
            st.stats.batches += 1
            persist: list[Action] = [] if replayed else [Persist(step, seq, rows, ticket, st.last_seq == seq)]
            return [*persist, *self._advance()]
        if replayed and st.stored_failed.get(job.batch.seq):
            st.stats.rows_failed += st.stored_failed[job.batch.seq]
            st.last_error = st.last_error or ErrorRecord.from_message(
                "synthpipe.errors.SynthpipeError", "rows that failed in an earlier run", step=step)
        failed_at = st.stored_failed_at.get(job.batch.seq, ()) if replayed else ()
        if replayed:
            sources = st.stored_sources.get(job.batch.seq)
        lost: list[Action] = []
        if failed:
            if st.spec.on_error == "fail" or st.spec.kind != "normal":
                return self._fail(failed[0][1])
            lost = [RowsFailed(_one_row(job.batch, index), error) for index, error in failed]
            failed_at = tuple(sorted(index for index, _ in failed))
            st.stats.rows_failed += len(failed)
            st.last_error = failed[-1][1]
        persist = self._complete(st, job.batch, rows, ticket, failed_at=failed_at,
                                 sources=tuple(sources) if sources is not None else None)
        too_many = self._failure_guard(st)
        return [*lost, *persist, *(self._fail(too_many) if too_many is not None else self._advance())]

    def replay_missing(self, step: str, ticket: int) -> list[Action]:
        """The store could not give a batch back (damaged data): compute it afresh."""
        if self._over():
            return []
        st = self.states[step]
        job = st.in_flight.pop(ticket, None)
        if job is None:
            return self._advance()
        if job.batch is None:
            return self._fail(ErrorRecord.from_message(
                "synthpipe.errors.SynthpipeError",
                f"generator '{step}': its stored batch {job.gen_seq} cannot be read; run with use_cache=False",
                step=step, batch=job.gen_seq))
        st.stored.pop(job.batch.seq, None)
        job.batch.replay = False
        self._requeue(st, job.batch)
        return self._advance()

    def batch_failed(self, step: str, replica: int, ticket: int, error: ErrorRecord) -> list[Action]:
        if self._over():
            return []
        st = self.states[step]
        job = self._pop_job(st, ticket, replica)
        if job is None:
            return self._advance()
        batch = job.batch
        if batch is None:
            return self._fail(error)  # a generator cannot resume mid-stream
        batch.attempts += 1
        if error.retryable and batch.attempts <= st.spec.retries:
            if self.stopping:  # it may still succeed: leave it unfinished rather than give up
                self._requeue(st, batch)
                return self._advance()
            token = next(self._tickets)
            st.waiting[token] = batch
            st.stats.retries += 1
            delay = st.spec.retry_delay * 2 ** (batch.attempts - 1)
            retry = RetryLater(step, token, delay, error, batch.attempts, st.spec.retries + 1)
            return [retry, *self._advance()]
        return self._give_up(st, batch, error)

    def retry_due(self, step: str, token: int) -> list[Action]:
        if self._over():
            return []
        st = self.states[step]
        batch = st.waiting.pop(token, None)
        if batch is not None:
            self._requeue(st, batch)
        return self._advance()

    def load_failed(self, step: str, replica: int, error: ErrorRecord) -> list[Action]:
        if self._over():
            return []
        return self._fail(error)

    def worker_died(self, step: str, replica: int, error: ErrorRecord, blame: bool = True) -> list[Action]:
        """A ready worker ended (crash, kill, timeout): restart it, retry or isolate.

        ``blame=False``: none of its jobs caused it (the batch that overran its timeout had
        finished after all, just as the worker was killed): they are all simply sent again.
        """
        if self._over():
            return []
        st = self.states[step]
        st.workers.pop(replica, None)
        jobs = sorted((j for j in st.in_flight.values() if j.replica == replica), key=lambda j: j.ticket)
        for job in jobs:
            del st.in_flight[job.ticket]
        if self.stopping:  # nothing more runs: its batches are simply not finished
            for job in jobs:
                if job.batch is not None:
                    self._requeue(st, job.batch)
            return self._advance()
        if st.spec.kind == "generator" or any(j.batch is None for j in jobs):
            return self._fail(error)
        restart: list[Action] = [] if st.finished else [RestartWorker(step, replica, error)]
        st.stats.restarts += len(restart)
        if not blame:
            for job in jobs:
                self._requeue(st, job.batch)  # type: ignore[arg-type]
            return [*restart, *self._advance()]
        if not jobs:
            return [*restart, *self._advance()]
        culprit, innocent = jobs[0].batch, [j.batch for j in jobs[1:]]
        assert culprit is not None
        for batch in innocent:  # they only queued behind the culprit
            self._requeue(st, batch)  # type: ignore[arg-type]
        culprit.crashes += 1
        if culprit.crashes <= st.spec.max_restarts:
            self._requeue(st, culprit)
        elif st.spec.kind == "normal" and st.spec.on_error == "skip" and culprit.size > 1 and len(culprit.inputs) == 1:
            for part in self._split(st, culprit):
                self._requeue(st, part)
        else:
            outcome = self._give_up(st, culprit, error)
            return outcome if self.failed else [*restart, *outcome]
        return [*restart, *self._advance()]

    def request_stop(self) -> list[Action]:
        """Hand out no more work; let running jobs finish (the executor bounds how long)."""
        if self._over():
            return []
        self.stopping = True
        return self._advance()

    # -- failure handling -----------------------------------------------------------------

    def _over(self) -> bool:
        return self.failed is not None or self.done

    def _fail(self, error: ErrorRecord) -> list[Action]:
        self.failed = error
        return [Fail(error)]

    def _give_up(self, st: _StepState, batch: Batch, error: ErrorRecord) -> list[Action]:
        """The batch will not succeed: record its rows (skip) or stop the run (fail)."""
        if st.spec.kind != "normal" or st.spec.on_error == "fail":
            return self._fail(error)
        st.stats.rows_failed += batch.size
        actions: list[Action] = [RowsFailed(batch, error), *self._complete(st, batch, [], None, failed=True)]
        st.last_error = error
        too_many = self._failure_guard(st)
        if too_many is not None:
            return [*actions, *self._fail(too_many)]
        return [*actions, *self._advance()]

    def _failure_guard(self, st: _StepState) -> ErrorRecord | None:
        """Judged whenever rows complete, failed or not: a rate can pass its limit later."""
        spec, stats, error = st.spec, st.stats, st.last_error
        if error is None:
            return None
        reason = None
        if spec.max_failed_rows is not None and stats.rows_failed > spec.max_failed_rows:
            reason = f"{stats.rows_failed} rows failed, more than max_failed_rows={spec.max_failed_rows}"
        elif (
            spec.max_failure_rate is not None
            and stats.rows_in >= MIN_ROWS_FOR_FAILURE_RATE
            and stats.rows_failed / stats.rows_in > spec.max_failure_rate
        ):
            reason = (
                f"{stats.rows_failed} of {stats.rows_in} rows failed "
                f"({stats.rows_failed / stats.rows_in:.0%}), more than max_failure_rate={spec.max_failure_rate:g}"
            )
        if reason is None:
            return None
        return ErrorRecord.from_diagnosis(
            TooManyFailedRows(f"step '{spec.name}': {reason}; the last error was {error.headline()}"),
            step=spec.name,
        )

    def _split(self, st: _StepState, batch: Batch) -> list[Batch]:
        """Halve a crashing batch; each half crashing again is halved at once."""
        lo, hi = batch.part or (0, batch.size)
        k = batch.size // 2
        rows, origins, keys = batch.inputs[0], batch.origins[0], batch.keys[0]
        halves = [
            replace(batch, inputs=[rows[:k]], origins=[origins[:k]], keys=[keys[:k]], part=(lo, lo + k)),
            replace(batch, inputs=[rows[k:]], origins=[origins[k:]], keys=[keys[k:]], part=(lo + k, hi),
                    row_start=batch.row_start + k),
        ]
        if batch.part is None:
            st.isolating[batch.seq] = _Isolation(batch.min_origin, pending=2, size=batch.size)
        else:
            st.isolating[batch.seq].pending += 1
        return halves

    # -- the engine room ------------------------------------------------------------------

    @staticmethod
    def _requeue(st: _StepState, batch: Batch) -> None:
        """Put a batch back among those waiting for a worker, keeping them in seq (and part)
        order: dispatch stays oldest-first, and the first one holds the lowest origin."""
        key = (batch.seq, batch.part[0] if batch.part else 0)
        index = 0
        for queued in st.ready:
            if (queued.seq, queued.part[0] if queued.part else 0) > key:
                break
            index += 1
        st.ready.insert(index, batch)

    def _pop_job(self, st: _StepState, ticket: int, replica: int) -> _Job | None:
        job = st.in_flight.pop(ticket, None)
        if job is not None and replica in st.workers:
            st.workers[replica] = max(0, st.workers[replica] - 1)
        return job

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
        origin = 0 if st.spec.kind == "global" else int(batch.min_origin) if batch.size else 0
        st.completed[batch.seq] = _Output(rows, [origin] * len(rows), batch.min_origin, fresh=not batch.replay,
                                          keys=keys)
        st.stats.batches += 1
        if batch.replay:
            return []
        return [Persist(st.spec.name, batch.seq, rows, None if failed else ticket, failed=len(failed_at),
                        inputs=inputs, failed_at=failed_at, sources=sources)]

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
            for succ in st.spec.successors:
                target = self.states[succ]
                index = target.spec.predecessors.index(st.spec.name)
                if out.fresh and target.fresh_at[index] == math.inf:
                    target.fresh_at[index] = target.consumed[index] + len(target.buffers[index])
                target.buffers[index].extend(out.rows)
                target.buffer_origins[index].extend(out.origins)
                target.buffer_keys[index].extend(out.keys)
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
            done = self._preds_finished(st) and not any(st.buffers) and not st.busy() and not st.completed
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
            if any(st.buffers):
                self._queue(st, st.buffers, st.buffer_origins, st.buffer_keys)
            st.buffers = [[] for _ in spec.predecessors]
            st.buffer_origins = [[] for _ in spec.predecessors]
            st.buffer_keys = [[] for _ in spec.predecessors]
            return st.next_seq > 0
        if len(spec.predecessors) == 1:
            return self._form_sequential(st)
        return self._form_joined(st)

    def _form_sequential(self, st: _StepState) -> bool:
        size = st.spec.batch_size
        rows, origins, keys = st.buffers[0], st.buffer_origins[0], st.buffer_keys[0]
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
            self._queue(st, [rows[start:end]], [origins[start:end]], [keys[start:end]])
            start = end
            formed = True
        if start:
            del rows[:start]
            del origins[:start]
            del keys[:start]
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
            keys: list[list[int]] = []
            for rows, orig, ks in zip(st.buffers, st.buffer_origins, st.buffer_keys, strict=True):
                n = bisect.bisect_right(orig, origin)
                inputs.append(rows[:n])
                origins.append(orig[:n])
                keys.append(ks[:n])
                del rows[:n]
                del orig[:n]
                del ks[:n]
            self._queue(st, inputs, origins, keys)
            formed = True
        return formed

    def _queue(self, st: _StepState, inputs: list[list[Row]], origins: list[list[int]],
               keys: list[list[int]]) -> None:
        batch = Batch(st.spec.name, st.next_seq, inputs, origins, st.rows_batched, keys=keys)
        st.next_seq += 1
        st.rows_batched += len(inputs[0]) if inputs else 0
        same_as_stored = True  # every row of it came from stored outputs upstream
        for i, rows in enumerate(inputs):
            st.consumed[i] += len(rows)
            same_as_stored &= st.consumed[i] <= st.fresh_at[i]
        if same_as_stored and batch.seq in st.stored and st.stored_inputs.get(batch.seq, batch.size) == batch.size:
            batch.replay = True
            st.replays.append(batch)
        else:
            st.ready.append(batch)

    def _dispatch(self, st: _StepState, actions: list[Action]) -> None:
        capacity = 1 if st.spec.kind == "global" else st.spec.capacity or self.worker_capacity
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
        stalled = not any(st.busy() for st in self.states.values())
        held = self.rows_held()
        for st in self.states.values():  # rows already asked of every generator
            if st.spec.kind == "generator":
                held += st.spec.batch_size * len(st.in_flight)
        for name in self.order:
            st = self.states[name]
            spec = st.spec
            if spec.kind != "generator" or st.finished:
                continue
            while st.last_seq is None and (spec.max_batches is None or st.next_seq < spec.max_batches):
                if not st.diverged and st.next_seq not in st.stored:
                    st.diverged = True  # from here on the generator runs
                    st.fresh_offset = sum(st.stored.get(seq, 0) for seq in range(st.next_seq))
                replay = not st.diverged
                if not replay and (0 not in st.workers or st.workers[0] >= self.worker_capacity):
                    break
                if not replay and any(job.replica == REPLAY for job in st.in_flight.values()):
                    break  # the stored batches may hold the last one: know that before asking for more
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


def _one_row(batch: Batch, index: int) -> Batch:
    """Row ``index`` of a batch, as a batch of its own (for the failed-rows ledger)."""
    return replace(batch, inputs=[[batch.inputs[0][index]]], origins=[[batch.origins[0][index]]],
                   keys=[[batch.keys[0][index]]] if batch.keys else [], row_start=batch.row_start + index)


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
