"""The local executor: one process per step replica, the scheduler in this process.

It is the only place that starts processes, sends on pipes, keeps time and waits. It waits
on the workers' pipes, their process sentinels and the signal wake-up pipe at once, so a
result, a death and a Ctrl+C are all noticed the moment they happen; the wait's timeout
is the nearest deadline (a retry due, a batch timing out) or the progress display's pace.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

from synthpipe.errors import (
    RUN_IN_WORKER_EXIT_CODE,
    RUN_IN_WORKER_MESSAGE,
    ErrorRecord,
    PipelineDefinitionError,
    RunInterrupted,
    StepFailed,
    StepTimeout,
    SynthpipeError,
    WorkerDied,
)
from synthpipe.runtime import main_import, shipping
from synthpipe.runtime import messages as m
from synthpipe.runtime.collector import few_collections
from synthpipe.runtime.contract import Batch, Emit, ExecutorHooks, ExecutorStep  # noqa: F401 (ExecutorHooks: public here too)
from synthpipe.runtime.driver import Driver
from synthpipe.runtime.forkserver import ensure_fork_server, preload_list
from synthpipe.runtime.forkserver import start_method as start_method_of
from synthpipe.runtime.frames import FrameReader
from synthpipe.runtime.outbox import Outbox, wait_io
from synthpipe.runtime.signals import StopSignals
from synthpipe.runtime.spawn_masked import MaskedSpawnProcess
from synthpipe.runtime.staged import needs_worker
from synthpipe.runtime.worker import MAIN_MODULE, worker_main

logger = logging.getLogger("synthpipe.runtime")

MAX_MESSAGES_PER_WAKEUP = 64  # per worker: one chatty worker must not starve timers and signals


@dataclass
class _Worker:
    step: str
    replica: int
    process: Any
    conn: Connection
    outbox: Outbox
    reader: FrameReader
    ready: bool = False
    exited: bool = False
    conn_closed: bool = False
    outstanding: deque[int] = field(default_factory=deque)  # tickets, in the order sent
    busy_since: float | None = None  # when the job at the head of `outstanding` started
    sent_at: dict[int, float] = field(default_factory=dict)  # ticket -> when it was sent
    started: float = field(default_factory=time.monotonic)
    timed_out: bool = False
    timed_out_ticket: int | None = None  # the job that overran, when the worker was killed

    def deadline(self, step: Any) -> float | None:
        """When this worker overruns its step's load_timeout or timeout, if it can."""
        if self.exited or self.timed_out:
            return None
        if not self.ready:
            return self.started + step.load_timeout if step.load_timeout else None
        if not step.timeout:
            return None
        if step.is_async:  # its batches all run at once: each from when it was sent
            return min(self.sent_at.values()) + step.timeout if self.sent_at else None
        if self.busy_since is not None:  # one batch at a time: each from when the one before ended
            return self.busy_since + step.timeout
        return None

    def overdue_ticket(self, step: Any) -> int | None:
        """The job that overran (the oldest)."""
        if step.is_async and self.sent_at:
            return min(self.sent_at, key=self.sent_at.__getitem__)
        return self.outstanding[0] if self.outstanding else None



def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _describe_job(batch: Batch | None, gen_seq: int | None) -> tuple[str, dict[str, Any]]:
    if batch is not None:
        span = f", rows {batch.rows[0]}–{batch.rows[1]}" if batch.rows else ""
        return f"batch {batch.seq}{span}", {"batch": batch.seq, "rows": batch.rows}
    if gen_seq is not None:
        return f"generating batch {gen_seq}", {"batch": gen_seq}
    return "", {}


class LocalExecutor(Driver):
    """Runs a plan's steps in local worker processes, driven by a ``Scheduler``: the driver over a
    transport of processes and pipes (``_start_worker``, ``_send``, ``_job_finished``)."""

    def __init__(
        self,
        steps: dict[str, Any],
        scheduler: Any,  # a synthpipe.runtime.scheduler.Scheduler
        hooks: ExecutorHooks,
        *,
        signals: StopSignals | None = None,
        log_level: int = logging.INFO,
        start_method: str | None = None,
        tick_seconds: float = 0.25,
        stop_grace_seconds: float = 10.0,
        fail_grace_seconds: float = 2.0,
        worker_context: dict[str, Any] | None = None,
        preload: tuple[str, ...] = (),
        eager: Collection[str] | None = None,
    ) -> None:
        """``worker_context``: what workers may know of the run (``synthpipe.worker_context.context``);
        ``preload``: modules the fork server imports once, for its workers; ``eager``: the steps
        whose workers start at once (None: all); the others start only if work waits for them
        (a load stage's earlier steps, whose batches the store gives back)."""
        super().__init__(scheduler, hooks)
        self.steps = steps
        self.records = {name: ExecutorStep.of(name, step) for name, step in steps.items()}
        self.signals = signals
        self.log_level = log_level
        self.start_method = start_method_of(start_method)
        self.tick_seconds = tick_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self.fail_grace_seconds = fail_grace_seconds
        self.worker_context = dict(worker_context or {})
        self.preload = preload_list(preload)
        self.workers: dict[tuple[str, int], _Worker] = {}
        self._payloads: dict[str, bytes] = {}
        self._stop_deadline: float | None = None
        self.eager = None if eager is None else set(eager)
        self._started: set[str] = set()

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        """Run to the end. Raise ``StepFailed`` when a failure stops the run, and
        ``RunInterrupted`` when a signal did."""
        outcome: bool | None = None
        try:
            self._payloads = {name: self._payload(name, step) for name, step in self.steps.items()}
            self.worker_context.setdefault(MAIN_MODULE, main_import.main_to_import())
            self._start_workers()
            with few_collections():
                outcome = self._loop()
        finally:
            try:
                self._flush_stored()  # what finished is kept, however the run ends
                emits, self._held = [a for a in self._held if isinstance(a, Emit)], []
                self._apply(emits)  # and its leaf rows: no more work goes to the workers
            except Exception as exc:  # reported, never raised over what ended the run
                logger.error("synthpipe: could not write the last finished batches: %s", exc)
            self._shutdown(self._shutdown_grace(outcome))
        if self.scheduler.failed is not None:
            record = self.scheduler.failed
            raise StepFailed(record) from record.to_exception()
        if self._interrupted():  # even if the work happened to finish: the user asked to stop
            signum = self.signals.first  # type: ignore[union-attr]
            raise RunInterrupted(signum, f"stopped by {signal.Signals(signum).name}")

    def _shutdown_grace(self, outcome: bool | None) -> float:
        """How long workers get to exit on their own: time to unload after a clean end, none
        after a second Ctrl+C or an expired grace period, a little after a failure."""
        if self._interrupted():
            return self.fail_grace_seconds if self.scheduler.drained or self.scheduler.done else 0.0
        return self.stop_grace_seconds if outcome else self.fail_grace_seconds

    def _interrupted(self) -> bool:
        return self.signals is not None and bool(self.signals.received)

    @staticmethod
    def _payload(name: str, step: Any) -> bytes:
        try:
            return shipping.dumps(step)  # the user's file names and lines go along
        except Exception as exc:
            culprit = next((f for f in type(step).model_fields if not _picklable(getattr(step, f, None))), None)
            where = f": field '{culprit}' holds a {type(getattr(step, culprit)).__qualname__}" if culprit else ""
            raise SynthpipeError(
                f"step '{name}' cannot be sent to a worker process{where} ({exc}); "
                "create such objects in the step's load() instead"
            ) from None

    def _start_workers(self) -> None:
        for name in self.records:
            if self.eager is None or name in self.eager:
                self._start_step(name)

    def _start_step(self, name: str) -> None:
        self._started.add(name)
        for replica in range(self.records[name].replicas):
            self._start_worker(name, replica)

    def _start_wanted(self) -> None:
        """Start the workers of a step not started yet that has work waiting."""
        if self.eager is not None and not self.scheduler.stopping:
            for name in self.records:
                if name not in self._started and needs_worker(self.scheduler, name):
                    logger.info("synthpipe: step '%s' has work the store could not give back; starting it", name)
                    self._start_step(name)

    def _start_worker(self, name: str, replica: int) -> None:
        """Start one worker with SIGINT blocked, so a Ctrl+C typed while it is still importing
        never reaches it: the mask is inherited, and the worker ignores SIGINT before
        unblocking it. The coordinator alone decides what a Ctrl+C means."""
        ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":  # the preload is taken when it starts (once per process)
            ensure_fork_server(self.preload)
        # Under forkserver the workers' parent is the fork server, not this process.
        parent_pid = os.getpid() if self.start_method == "spawn" else 0
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        process_class = MaskedSpawnProcess if self.start_method == "spawn" else ctx.Process
        process = process_class(
            target=worker_main,
            args=(child_conn, self._payloads[name], name, replica, self.log_level, parent_pid, self.worker_context),
            name=f"synthpipe:{name}:{replica}",
            daemon=True,
        )
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with main_import.hidden_main():  # the worker imports it itself, reporting what goes wrong
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        child_conn.close()
        self.workers[(name, replica)] = _Worker(name, replica, process, parent_conn, Outbox(parent_conn.fileno()),
                                                 FrameReader(parent_conn.fileno()))
        logger.debug("started %s replica %d as pid %s", name, replica, process.pid)

    def _loop(self) -> bool | None:
        """Process events until the scheduler finishes (True) or fails (False), or a signal
        ends the run (None)."""
        outcome = self._apply(self.scheduler.start())
        while outcome is None:
            if self.signals is not None and self.signals.received and self._on_signals():
                return None
            self._start_wanted()
            waitables: dict[Any, _Worker | None] = {}
            for worker in self.workers.values():
                if not worker.exited:
                    if not worker.conn_closed:
                        waitables[worker.conn] = worker
                    waitables[worker.process.sentinel] = worker
            if self.signals is not None:
                waitables[self.signals.fileno()] = None
            read_before = [w.conn for w in self.workers.values() if not w.exited and w.reader.pending()]
            readable, writable = wait_io(waitables, self._sending(), 0 if read_before else self._wait_timeout())
            if read_before:  # messages read already, left for this turn by the limit
                readable = list(dict.fromkeys([*read_before, *readable]))
            for box in writable:
                box.drain()
            for obj in readable:
                worker = waitables[obj]
                if worker is None:
                    self.signals.clear_wakeups()  # type: ignore[union-attr]
                    continue
                if worker.exited:
                    continue
                if obj is worker.conn:
                    outcome = self._drain(worker, MAX_MESSAGES_PER_WAKEUP)
                else:  # it ended: first everything it sent before (the pipe holds a finite amount)
                    outcome = self._drain(worker, None)
                    if outcome is None:
                        outcome = self._exited(worker)
                if outcome is not None:
                    break
            self._release_held()  # the round's batches are stored, in one go, before their results go on
            if outcome is None:
                outcome = self._fire_due_timers()
            for box in self._sending():
                box.send()  # what the round handed each worker, in one write
            if outcome is not None or self.scheduler.drained:
                return outcome
            self._kill_overdue_workers()
            if self._stop_deadline is not None and time.monotonic() >= self._stop_deadline:
                logger.warning("synthpipe: grace period over; ending the %d batch(es) still in flight",
                               self.scheduler.jobs_in_flight())
                return None
            self.hooks.on_tick()
        return outcome

    def _sending(self) -> list[Outbox]:
        """The outboxes with bytes waiting for their worker's socket."""
        return [w.outbox for w in self.workers.values() if w.outbox.waiting]

    def _on_signals(self) -> bool:
        """First signal: stop handing out work. A second SIGINT: stop now. True to leave."""
        received = self.signals.received  # type: ignore[union-attr]
        if self._stop_deadline is None:
            name = getattr(self.signals, "reason", None) or signal.Signals(received[0]).name
            running = self.scheduler.jobs_in_flight()
            logger.warning(
                "synthpipe: %s received: handing out no more work; waiting up to %gs for the %d batch(es) "
                "in flight to finish (Ctrl+C again to stop at once)",
                name, self.stop_grace_seconds, running,
            )
            self._stop_deadline = time.monotonic() + self.stop_grace_seconds
            self._apply(self.scheduler.request_stop())
            if self.scheduler.drained or self.scheduler.done or self.scheduler.failed:
                return True
        if len(received) > 1 and signal.SIGINT in received[1:]:
            logger.warning("synthpipe: second SIGINT: stopping now")
            return True
        return False

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self._stop_deadline] if self._stop_deadline is not None else []
        if self.next_timer() is not None:
            deadlines.append(self.next_timer())
        for worker in self.workers.values():
            deadline = worker.deadline(self.records[worker.step])
            if deadline is not None:
                deadlines.append(deadline)
        nearest = min(deadlines, default=now + self.tick_seconds)
        return max(0.0, min(self.tick_seconds, nearest - now))

    def _kill_overdue_workers(self) -> None:
        """Kill a worker whose batch overran its step's timeout; its death is then handled
        like a crash, with a StepTimeout diagnosis."""
        now = time.monotonic()
        for worker in self.workers.values():
            deadline = worker.deadline(self.records[worker.step])
            if deadline is not None and now >= deadline:
                worker.timed_out = True
                worker.timed_out_ticket = worker.overdue_ticket(self.records[worker.step])
                worker.process.kill()

    def _drain(self, worker: _Worker, limit: int | None) -> bool | None:
        """Handle the messages waiting from a worker, at most ``limit`` of them (the rest waits
        for the next turn of the loop, so timers and signals are not starved): what was read
        already, then one read of what the socket holds; with no ``limit``, all it holds."""
        reader = worker.reader
        try:
            count = 0
            filled = False
            while limit is None or count < limit:
                data = reader.next()
                if data is None:
                    if (filled and limit is not None) or not reader.readable():
                        break
                    filled = True
                    if not reader.fill():
                        worker.conn_closed = True  # the sentinel tells what happened
                        break
                    continue
                count += 1
                outcome = self._handle(worker, m.decode(data))
                if outcome is not None:
                    return outcome
        except OSError:
            worker.conn_closed = True
        return None

    def _exited(self, worker: _Worker) -> bool | None:
        self._release_held()  # sent to the worker as it was when the scheduler chose it
        worker.process.join(timeout=1.0)
        worker.exited = True
        worker.outbox.close()
        worker.conn.close()
        how = describe_exit(worker.process.exitcode)
        who = f"step '{worker.step}' replica {worker.replica}"
        if not worker.ready:
            if worker.timed_out:
                limit = self.records[worker.step].load_timeout
                died: SynthpipeError = StepTimeout(
                    f"{who}: load() ran longer than the step's load_timeout of {limit:g}s; the worker was killed")
            elif worker.process.exitcode == RUN_IN_WORKER_EXIT_CODE:
                died = PipelineDefinitionError(RUN_IN_WORKER_MESSAGE)
            else:
                died = WorkerDied(f"{who} died ({how}) while loading")
            record = ErrorRecord.from_diagnosis(died, step=worker.step, replica=worker.replica, phase="load")
            return self._apply(self.scheduler.load_failed(worker.step, worker.replica, record))
        batch, gen_seq = self.scheduler.job_on(worker.step, worker.replica)
        doing, where = _describe_job(batch, gen_seq)
        if worker.timed_out:
            timeout = self.records[worker.step].timeout
            error: SynthpipeError = StepTimeout(
                f"{who}: {doing or 'its batch'} ran longer than the step's timeout of {timeout:g}s; "
                "the worker was killed")
        else:
            error = WorkerDied(f"{who} died ({how})" + (f" while processing {doing}" if batch else
                                                      f" while {doing}" if doing else " while idle")
                               + (f": {RUN_IN_WORKER_MESSAGE}" if worker.process.exitcode == RUN_IN_WORKER_EXIT_CODE
                                  else ""))
        record = ErrorRecord.from_diagnosis(error, step=worker.step, replica=worker.replica, **where)
        # the overrunning job may have finished just as the worker was killed: then nobody is to blame
        blame = not worker.timed_out or worker.timed_out_ticket in worker.outstanding
        return self._apply(self.scheduler.worker_died(worker.step, worker.replica, record, blame=blame))

    def _job_finished(self, worker: _Worker, ticket: int) -> None:
        if ticket in worker.outstanding:
            worker.outstanding.remove(ticket)
        worker.sent_at.pop(ticket, None)
        worker.busy_since = time.monotonic() if worker.outstanding else None

    def _send(self, step: str, replica: int, ticket: int, message: tuple[Any, ...]) -> None:
        worker = self.workers[(step, replica)]
        worker.outstanding.append(ticket)
        worker.sent_at[ticket] = time.monotonic()
        if worker.busy_since is None:
            worker.busy_since = time.monotonic()
        worker.outbox.put(m.encode(message), now=False)  # sent at the end of the round, with the others

    def _shutdown(self, grace: float) -> None:
        """Ask every worker to stop, wait up to ``grace`` seconds, then end the rest by PID.

        Workers still loading are not waited for: they have nothing to finish.
        """
        live = [w for w in self.workers.values() if not w.exited and w.process.is_alive()]
        for worker in live:
            if not worker.ready:
                worker.process.terminate()
                continue
            worker.outbox.put(m.encode((m.STOP,)))
        deadline = time.monotonic() + grace
        alive = [w for w in live if w.process.is_alive()]
        signals_before = len(self.signals.received) if self.signals is not None else 0
        while alive:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waitables: list[Any] = [w.process.sentinel for w in alive]
            if self.signals is not None:
                waitables.append(self.signals.fileno())
            for box in wait_io(waitables, self._sending(), remaining)[1]:
                box.drain()  # the last batches and the stop, behind them
            if self.signals is not None and len(self.signals.received) > signals_before:
                self.signals.clear_wakeups()
                logger.warning("synthpipe: %s while workers finish: stopping them now",
                               signal.Signals(self.signals.received[-1]).name)
                break
            for w in alive:
                self._drain_logs(w)
            alive = [w for w in alive if w.process.is_alive()]
        for method in ("terminate", "kill"):
            alive = [w for w in live if w.process.is_alive()]
            for w in alive:
                getattr(w.process, method)()
            if alive:
                wait([w.process.sentinel for w in alive], timeout=1.0)
        for worker in self.workers.values():
            worker.process.join(timeout=1.0)
            worker.outbox.close()
            if not worker.conn.closed:
                self._drain_logs(worker)
                worker.conn.close()

    def _drain_logs(self, worker: _Worker) -> None:
        """Pass on the last log lines of a stopping worker (unload messages, say)."""
        reader = worker.reader
        try:
            for _ in range(MAX_MESSAGES_PER_WAKEUP):
                data = reader.next()
                if data is None:
                    if not reader.readable() or not reader.fill():
                        break
                    continue
                message = m.decode(data)
                if message[0] == m.LOG:
                    self.hooks.on_log(message[1], message[2], message[3])
                elif message[0] == m.RECORD:  # an answer that came in as the worker stopped
                    self.hooks.on_record(message[1], message[2])
        except OSError:
            pass


def _picklable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
    except Exception:
        return False
    return True
