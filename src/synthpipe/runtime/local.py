"""The local executor: one process per step replica, the scheduler in this process.

It is the only place that starts processes, sends on pipes and waits. It waits on the
workers' pipes and process sentinels at once, so a result and a death are both noticed
the moment they happen; the timeout only paces the progress display.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import cloudpickle

from synthpipe.errors import ErrorRecord, StepFailed, WorkerDied
from synthpipe.runtime import messages as m
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
)
from synthpipe.runtime.worker import worker_main

logger = logging.getLogger("synthpipe.runtime")

START_METHODS = ("spawn", "forkserver")


@dataclass
class _Worker:
    step: str
    replica: int
    process: Any
    conn: Connection
    ready: bool = False
    exited: bool = False
    conn_closed: bool = False


@dataclass
class ExecutorHooks:
    """What the executor hands back to the layers above it."""

    on_emit: Callable[[str, int, list[dict[str, Any]]], None]
    on_rows_failed: Callable[[Batch, ErrorRecord], None]
    on_tick: Callable[[], None] = lambda: None
    on_log: Callable[[int, str, str], None] = field(
        default=lambda level, name, text: logging.getLogger(name).log(level, text)
    )


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class LocalExecutor:
    """Runs a plan's steps in local worker processes, driven by a ``Scheduler``."""

    def __init__(
        self,
        steps: dict[str, Any],
        scheduler: Scheduler,
        hooks: ExecutorHooks,
        *,
        log_level: int = logging.INFO,
        start_method: str | None = None,
        tick_seconds: float = 0.25,
        stop_grace_seconds: float = 10.0,
        fail_grace_seconds: float = 2.0,
    ) -> None:
        self.steps = steps
        self.scheduler = scheduler
        self.hooks = hooks
        self.log_level = log_level
        self.start_method = start_method or os.environ.get("SYNTHPIPE_START_METHOD", "spawn")
        if self.start_method not in START_METHODS:
            raise ValueError(f"start method must be one of {START_METHODS}, not {self.start_method!r}")
        self.tick_seconds = tick_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self.fail_grace_seconds = fail_grace_seconds
        self.workers: dict[tuple[str, int], _Worker] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def run(self) -> None:
        """Run to the end; raise ``StepFailed`` when a step's failure stops the run."""
        grace = self.fail_grace_seconds
        try:
            self._start_workers()
            if self._loop():
                grace = self.stop_grace_seconds
        finally:
            self._shutdown(grace)
        if self.scheduler.failed is not None:
            record = self.scheduler.failed
            raise StepFailed(record) from record.to_exception()

    def _start_workers(self) -> None:
        """Start every worker with SIGINT blocked, so a Ctrl+C typed while a worker is still
        importing never reaches it: the mask is inherited, and the worker ignores SIGINT before
        unblocking it. The coordinator alone decides what a Ctrl+C means."""
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._spawn_all()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _spawn_all(self) -> None:
        ctx = mp.get_context(self.start_method)
        # Under forkserver the workers' parent is the fork server, not this process.
        parent_pid = os.getpid() if self.start_method == "spawn" else 0
        for name, step in self.steps.items():
            payload = cloudpickle.dumps(step)
            for replica in range(step.resources.replicas):
                parent_conn, child_conn = ctx.Pipe(duplex=True)
                process = ctx.Process(
                    target=worker_main,
                    args=(child_conn, payload, name, replica, self.log_level, parent_pid),
                    name=f"synthpipe:{name}:{replica}",
                    daemon=True,
                )
                process.start()
                child_conn.close()
                self.workers[(name, replica)] = _Worker(name, replica, process, parent_conn)
                logger.debug("started %s replica %d as pid %s", name, replica, process.pid)

    def _loop(self) -> bool:
        """Process events until the scheduler finishes (True) or fails (False)."""
        if self._apply(self.scheduler.start()):
            return True
        while True:
            waitables: dict[Any, _Worker] = {}
            for worker in self.workers.values():
                if not worker.exited:
                    if not worker.conn_closed:
                        waitables[worker.conn] = worker
                    waitables[worker.process.sentinel] = worker
            for obj in wait(list(waitables), timeout=self.tick_seconds):
                worker = waitables[obj]
                if worker.exited:
                    continue
                if obj is worker.conn:
                    outcome = self._drain(worker)
                else:
                    outcome = self._drain(worker) or self._exited(worker)
                if outcome is not None:
                    return outcome
            self.hooks.on_tick()

    def _drain(self, worker: _Worker) -> bool | None:
        """Handle every message waiting on a worker's pipe."""
        try:
            while worker.conn.poll():
                outcome = self._handle(worker, m.decode(worker.conn.recv_bytes()))
                if outcome is not None:
                    return outcome
        except (EOFError, OSError):
            worker.conn_closed = True  # the sentinel tells what happened
        return None

    def _exited(self, worker: _Worker) -> bool | None:
        worker.process.join(timeout=1.0)
        worker.exited = True
        how = describe_exit(worker.process.exitcode)
        if not worker.ready:
            record = ErrorRecord.from_diagnosis(
                WorkerDied(f"step '{worker.step}' replica {worker.replica} died ({how}) while loading"),
                step=worker.step, replica=worker.replica, phase="load")
            return self._apply(self.scheduler.worker_died(worker.step, worker.replica, record))
        batch = self.scheduler.batch_on(worker.step, worker.replica)
        gen_seq = self.scheduler.generate_seq_on(worker.step, worker.replica)
        if batch is not None:
            span = f", rows {batch.rows[0]}–{batch.rows[1]}" if batch.rows else ""
            doing = f" while processing batch {batch.seq}{span}"
            where = {"batch": batch.seq, "rows": batch.rows}
        elif gen_seq is not None:
            doing = f" while generating batch {gen_seq}"
            where = {"batch": gen_seq}
        else:
            doing = " while idle"
            where = {}
        record = ErrorRecord.from_diagnosis(
            WorkerDied(f"step '{worker.step}' replica {worker.replica} died ({how}){doing}"),
            step=worker.step, replica=worker.replica, **where)
        return self._apply(self.scheduler.worker_died(worker.step, worker.replica, record))

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> bool | None:
        kind = message[0]
        sched = self.scheduler
        if kind == m.LOG:
            self.hooks.on_log(message[1], message[2], message[3])
            return None
        if kind == m.READY:
            worker.ready = True
            return self._apply(sched.worker_ready(worker.step, worker.replica))
        if kind == m.DONE:
            _, seq, rows, last = message
            return self._apply(sched.batch_done(worker.step, worker.replica, seq, rows, last))
        if kind == m.FAILED:
            return self._apply(sched.batch_failed(worker.step, worker.replica, message[1], message[2]))
        if kind == m.LOAD_FAILED:
            return self._apply(sched.load_failed(worker.step, worker.replica, message[1]))
        raise RuntimeError(f"unknown message from worker {worker.step}/{worker.replica}: {kind!r}")

    def _apply(self, actions: list[Action]) -> bool | None:
        """Carry out the scheduler's actions; True when finished, False when failed."""
        for action in actions:
            if isinstance(action, Dispatch):
                b = action.batch
                self._send(b.step, action.replica, (m.BATCH, b.seq, b.row_start, b.inputs))
            elif isinstance(action, Generate):
                self._send(action.step, action.replica, (m.GENERATE, action.seq))
            elif isinstance(action, Emit):
                self.hooks.on_emit(action.step, action.seq, action.rows)
            elif isinstance(action, RowsFailed):
                self.hooks.on_rows_failed(action.batch, action.error)
            elif isinstance(action, Fail):
                return False
            elif isinstance(action, Finished):
                return True
        return None

    def _send(self, step: str, replica: int, message: tuple[Any, ...]) -> None:
        worker = self.workers[(step, replica)]
        try:
            worker.conn.send_bytes(m.encode(message))
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass  # the worker is dead; its sentinel reports it

    def _shutdown(self, grace: float) -> None:
        """Ask every worker to stop, wait up to ``grace`` seconds, then end the rest by PID."""
        for worker in self.workers.values():
            if not worker.exited and worker.process.is_alive():
                try:
                    worker.conn.send_bytes(m.encode((m.STOP,)))
                except OSError:
                    pass
        deadline = time.monotonic() + grace
        alive = [w for w in self.workers.values() if w.process.is_alive()]
        while alive:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wait([w.process.sentinel for w in alive], timeout=remaining)
            for w in alive:
                self._drain_logs(w)
            alive = [w for w in alive if w.process.is_alive()]
        for sig_method in ("terminate", "kill"):
            alive = [w for w in self.workers.values() if w.process.is_alive()]
            for w in alive:
                getattr(w.process, sig_method)()
            if alive:
                wait([w.process.sentinel for w in alive], timeout=1.0)
        for worker in self.workers.values():
            worker.process.join(timeout=1.0)
            self._drain_logs(worker)
            worker.conn.close()

    def _drain_logs(self, worker: _Worker) -> None:
        """Pass on the last log lines of a stopping worker (unload messages, say)."""
        try:
            while worker.conn.poll():
                message = m.decode(worker.conn.recv_bytes())
                if message[0] == m.LOG:
                    self.hooks.on_log(message[1], message[2], message[3])
        except (EOFError, OSError):
            pass
