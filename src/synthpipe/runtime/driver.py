"""The executor-neutral driver: carries out the scheduler's actions over a transport.

What every executor does the same way lives here: applying actions (a replay answered at once,
a batch stored before anything that follows from it leaves the coordinator, the round's
actions held until the store has written), retry timers, and turning a worker's messages into
scheduler events. An executor is a transport: it starts a worker (``_start_worker``), sends it
a message (``_send``), notes a job's end (``_job_finished``) and stops its workers; the local
executor is one over processes, a test's fake or Ray another.
"""

from __future__ import annotations

import heapq
import logging
import random
import time
from collections import deque
from typing import Any

from synthpipe.runtime import messages as m
from synthpipe.runtime.contract import (
    REPLAY,
    Action,
    Dispatch,
    Emit,
    ExecutorHooks,
    Fail,
    Finished,
    Generate,
    Persist,
    Replay,
    RestartWorker,
    RetryLater,
    RowsFailed,
)
from synthpipe.runtime.packed import PackedRows

logger = logging.getLogger("synthpipe.runtime")


class Driver:
    """Applies a ``Scheduler``'s actions; a subclass is the transport."""

    def __init__(self, scheduler: Any, hooks: ExecutorHooks) -> None:
        self.scheduler = scheduler
        self.hooks = hooks
        self._timers: list[tuple[float, int, str, int]] = []  # (due, tiebreak, step, token)
        self._timer_ids = 0
        self._jitter = random.Random()
        self._received: dict[int, tuple[bytes, int | None]] = {}  # ticket -> bytes to store, their CRC
        self._held: list[Action] = []  # what follows from this round's batches, until they are stored
        self._unflushed = False  # batches handed to on_persist since the last on_flush
        self._running: dict[int, tuple[str, int]] = {}  # ticket -> (step, rows), sent under on_admit

    # -- the transport ---------------------------------------------------------------------

    def _start_worker(self, name: str, replica: int) -> None:
        raise NotImplementedError

    def _send(self, step: str, replica: int, ticket: int, message: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def _job_finished(self, worker: Any, ticket: int) -> None:
        """A worker answered ``ticket`` (its bookkeeping of jobs in flight, for timeouts)."""

    # -- neutral ---------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """When the nearest retry is due (monotonic), if any."""
        return self._timers[0][0] if self._timers else None

    def _handle(self, worker: Any, message: tuple[Any, ...]) -> bool | None:
        kind = message[0]
        sched = self.scheduler
        if kind == m.LOG:
            self.hooks.on_log(message[1], message[2], message[3])
            return None
        if kind == m.RECORD:
            self.hooks.on_record(message[1], message[2])
            return None
        if kind == m.READY:
            worker.ready = True
            return self._apply(sched.worker_ready(worker.step, worker.replica), hold=True)
        if kind == m.LOAD_FAILED:
            return self._apply(sched.load_failed(worker.step, worker.replica, message[1]), hold=True)
        ticket = message[1]
        self._job_finished(worker, ticket)
        if kind == m.DONE:
            data, last, failed, sources, stored, count, leaf, crc, seconds = message[2:11]
            self._received[ticket] = (stored or data, crc)
            rows = PackedRows(data, count, leaf)  # kept as the worker's bytes, sent on as they are
            try:
                actions = sched.batch_done(worker.step, worker.replica, ticket, rows, last, failed=failed,
                                           sources=sources, seconds=seconds)
                return self._apply(actions, hold=True)
            finally:
                self._received.pop(ticket, None)
        if kind == m.FAILED:
            return self._apply(sched.batch_failed(worker.step, worker.replica, ticket, message[2]), hold=True)
        raise RuntimeError(f"unknown message from worker {worker.step}/{worker.replica}: {kind!r}")

    def _apply(self, actions: list[Action], hold: bool = False) -> bool | None:
        """Carry out the scheduler's actions, and those that follow from them (a replay answers
        at once); True when finished, False when failed.

        A batch is stored before anything that follows from it leaves the coordinator. With
        ``hold`` (the messages of one round), those actions wait in ``_held`` so that all the
        round's batches are stored in one go; otherwise the store is flushed before each."""
        todo = deque(actions)
        while todo:
            action = todo.popleft()
            if isinstance(action, (Dispatch, Generate, Emit)):
                if hold:
                    self._held.append(action)
                    continue
                self._flush_stored()
            if isinstance(action, Replay):
                try:
                    rows, last = self.hooks.on_replay(action.step, action.seq)
                except Exception as exc:
                    logger.warning("synthpipe: stored batch %d of step '%s' cannot be read (%s); computing it again",
                                   action.seq, action.step, exc)
                    todo.extend(self.scheduler.replay_missing(action.step, action.ticket))
                else:
                    todo.extend(self.scheduler.batch_done(action.step, REPLAY, action.ticket, rows, last))
            elif isinstance(action, Persist):
                data, action.crc = self._received.get(action.ticket, (None, None)) if action.ticket is not None \
                    else (None, None)
                self.hooks.on_persist(action, data)
                self._unflushed = True
            elif isinstance(action, Dispatch):
                b = action.batch
                if not self._admitted(b.step, action.ticket, b.size):
                    continue
                message = (m.BATCH, action.ticket, b.seq, b.row_start, b.inputs)
                self._send(b.step, action.replica, action.ticket, message)
                self.hooks.on_sent(b.step, action.replica, b.seq)
            elif isinstance(action, Generate):
                if not self._admitted(action.step, action.ticket, 0):
                    continue
                message = (m.GENERATE, action.ticket, action.seq, action.offset)
                self._send(action.step, action.replica, action.ticket, message)
                self.hooks.on_sent(action.step, action.replica, action.seq)
            elif isinstance(action, Emit):
                self.hooks.on_emit(action.step, action.seq, action.rows, action.keys)
            elif isinstance(action, RowsFailed):
                self.hooks.on_rows_failed(action.batch, action.error)
            elif isinstance(action, RetryLater):
                delay = action.delay * (1 + 0.25 * self._jitter.random())
                logger.warning("%s failed (attempt %d of %d): %s; retrying in %.1fs", action.error.location(),
                               action.attempt, action.attempts, action.error.headline(), delay)
                self._timer_ids += 1
                heapq.heappush(self._timers, (time.monotonic() + delay, self._timer_ids, action.step, action.token))
            elif isinstance(action, RestartWorker):
                logger.warning("%s; restarting it", action.error.message)
                self._start_worker(action.step, action.replica)
            elif isinstance(action, Fail):
                return False
            elif isinstance(action, Finished):
                return True
        return None

    def _admitted(self, step: str, ticket: int, rows: int) -> bool:
        """Whether the layer above lets this job go out (a budget); a job held back goes back
        to the scheduler, unsent."""
        admit = self.hooks.on_admit
        if admit is None:
            return True
        live = self.scheduler.in_flight_tickets()
        self._running = {t: job for t, job in self._running.items() if t in live}
        if admit(step, rows, list(self._running.values())):
            self._running[ticket] = (step, rows)
            return True
        self.scheduler.withdraw(step, ticket)
        return False

    def _fire_due_timers(self) -> bool | None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, step, token = heapq.heappop(self._timers)
            outcome = self._apply(self.scheduler.retry_due(step, token))
            if outcome is not None:
                return outcome
        return None

    def _flush_stored(self) -> None:
        if self._unflushed:
            self._unflushed = False
            self.hooks.on_flush()

    def _release_held(self) -> None:
        """Store the round's batches, then send on what follows from them, in the order chosen."""
        self._flush_stored()
        held, self._held = self._held, []
        self._apply(held)
