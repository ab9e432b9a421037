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

import itertools
import math
from collections.abc import Mapping, Sequence

from synthpipe.errors import ErrorRecord
from synthpipe.runtime.contract import (
    REPLAY,
    Action,
    Batch,
    Persist,
    RestartWorker,
    RetryLater,
    Row,
    RowsFailed,
    StepSpec,
)
from synthpipe.runtime.scheduler.dispatch import MAX_QUICK_CAPACITY, Dispatching
from synthpipe.runtime.scheduler.failure import FailurePolicy, _one_row
from synthpipe.runtime.scheduler.forming import BatchForming, _feeders_of_joins
from synthpipe.runtime.scheduler.replay import stored_outputs
from synthpipe.runtime.scheduler.routing import Router, Routing, RoutingFailed
from synthpipe.runtime.scheduler.state import (
    RowBuffer,
    StepStats,
    StoredOutput,
    _Output,
    _StepState,
)


class Scheduler(FailurePolicy, BatchForming, Dispatching, Routing):
    """Decides what runs where and when, from events alone."""

    def __init__(
        self,
        specs: list[StepSpec],
        *,
        max_rows_in_flight: int = 20_000,
        worker_capacity: int = 2,
        stored: dict[str, dict[int, StoredOutput | int]] | None = None,
        routers: Mapping[str, Router] | None = None,
    ) -> None:
        """``stored``: per step, the batches (seq -> a record, or just its rows out) an earlier
        run finished (see ``StoredOutput``); ``routers``: per routing step, what picks the
        successors of each of its batches (see ``scheduler.routing``)."""
        self.specs = {s.name: s for s in specs}
        self.order = [s.name for s in specs]  # topological
        self.states = {
            s.name: _StepState(
                spec=s,
                buffers=[RowBuffer() for _ in s.predecessors],
                buffer_origins=[[] for _ in s.predecessors],
                buffer_keys=[[] for _ in s.predecessors],
                stored=stored_outputs((stored or {}).get(s.name, {})),
                consumed=[0 for _ in s.predecessors],
                fresh_at=[math.inf for _ in s.predecessors],
            )
            for s in specs
        }
        self.max_rows_in_flight = max_rows_in_flight
        self.worker_capacity = worker_capacity
        self._init_routing(routers)
        self.split_at_origin = _feeders_of_joins(self.specs, set(self.routers))
        self.failed: ErrorRecord | None = None
        self.failed_batch: Batch | None = None
        self.done = False
        self.stopping = False
        self.drained = False
        self._tickets = itertools.count()
        self._touched: set[str] = set(self.order)  # steps to look at in the next _advance: all, at first
        self._depends: tuple[set[str], dict[str, frozenset[str]]] | None = None

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
            quick = st.spec.kind != "global" and not st.spec.capacity  # its capacity follows its pace
            capacity = max(self.worker_capacity, MAX_QUICK_CAPACITY) if quick else self._capacity(st)
            assert all(0 <= n <= capacity for n in st.workers.values()), f"{name}: {st.workers}"

    # -- events ---------------------------------------------------------------------------

    def start(self) -> list[Action]:
        return self._advance()

    def worker_ready(self, step: str, replica: int) -> list[Action]:
        if self._over():
            return []
        self._touch(step)
        self.states[step].workers[replica] = 0
        return self._advance()

    def batch_done(self, step: str, replica: int, ticket: int, rows: Sequence[Row], last: bool = False,
                   failed: Sequence[tuple[int, ErrorRecord]] = (),
                   sources: Sequence[int] | None = None, seconds: float | None = None) -> list[Action]:
        """``failed``: input rows (by position in the first input) that failed while the rest of
        the batch went on; ``rows`` are the outputs of the others; ``sources``: for each output
        row, the position of the input row it came from, where the step knows; ``seconds``: how
        long the batch took its worker, where it said (a quick step's workers hold more)."""
        if self._over():
            return []
        self._touch(step)
        st = self.states[step]
        st.paced(seconds)
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
            try:
                routed_to = self._route(st, seq, rows, replayed)
            except RoutingFailed as failure:
                return self._routing_failed(failure)
            st.completed[seq] = _Output(rows, [seq] * len(rows), seq, fresh=not replayed, routed_to=routed_to)
            st.held += len(rows)
            st.stats.rows_out += len(rows)
            st.stats.batches += 1
            persist: list[Action] = [] if replayed else [
                Persist(step, seq, rows, ticket, st.last_seq == seq, routed_to=routed_to)]
            return [*persist, *self._advance()]
        record = st.stored.get(job.batch.seq) if replayed else None
        if record is not None and record.failed:
            st.stats.rows_failed += record.failed
            st.last_error = st.last_error or ErrorRecord.from_message(
                "synthpipe.errors.SynthpipeError", "rows that failed in an earlier run", step=step)
        failed_at = record.failed_at if record is not None else ()
        if replayed:
            sources = record.sources if record is not None else None
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
        if self.failed is not None:  # its routing function failed
            return [*lost, *persist]
        too_many = self._failure_guard(st)
        return [*lost, *persist, *(self._fail(too_many) if too_many is not None else self._advance())]

    def replay_missing(self, step: str, ticket: int) -> list[Action]:
        """The store could not give a batch back (damaged data): compute it afresh."""
        if self._over():
            return []
        self._touch(step)
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
        self._touch(step)
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
        self._touch(step)
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
        self._touch(step)
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

    def withdraw(self, step: str, ticket: int) -> None:
        """A job handed out was not sent after all (the run's budget held it back): a batch
        waits for a worker again; a generator request is taken back (a stop follows it)."""
        self._touch(step)
        st = self.states[step]
        job = st.in_flight.get(ticket)
        if job is None or job.replica == REPLAY:
            return
        self._pop_job(st, ticket, job.replica)
        if job.batch is not None:
            self._requeue(st, job.batch)
        elif job.gen_seq == st.next_seq - 1:
            st.next_seq -= 1

    def in_flight_tickets(self) -> set[int]:
        """The tickets of every job handed out and not answered yet."""
        return {ticket for st in self.states.values() for ticket in st.in_flight}

    def request_stop(self) -> list[Action]:
        """Hand out no more work; let running jobs finish (the executor bounds how long)."""
        if self._over():
            return []
        self.stopping = True
        return self._advance()

    # -- failure handling -----------------------------------------------------------------

    def _over(self) -> bool:
        return self.failed is not None or self.done
