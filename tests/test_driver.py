"""The executor-neutral driver over a transport that is not processes: workers answer in this
process, from a queue. It shows what a new executor (Ray, say) has to provide (start a worker,
send it a message, note a job's end) and that the driver alone keeps the contract: a batch is
stored, and the store flushed, before anything that follows from it leaves the coordinator."""

from __future__ import annotations

import pickle
from collections import deque
from dataclasses import dataclass
from typing import Any

from synthpipe.errors import ErrorRecord
from synthpipe.runtime import messages as m
from synthpipe.runtime.contract import ExecutorHooks, StepSpec
from synthpipe.runtime.driver import Driver
from synthpipe.runtime.scheduler import Scheduler


@dataclass
class _Worker:
    step: str
    replica: int
    ready: bool = False


class QueueTransport(Driver):
    """Each worker answers a message at once, into one queue the loop below reads in order."""

    def __init__(self, specs: list[StepSpec], data: list[dict[str, Any]], fns: dict[str, Any],
                 hooks: ExecutorHooks) -> None:
        super().__init__(Scheduler(specs), hooks)
        self.specs = {s.name: s for s in specs}
        self.data = data
        self.fns = fns
        self.workers: dict[tuple[str, int], _Worker] = {}
        self.inbox: deque[tuple[_Worker, tuple[Any, ...]]] = deque()
        self.sent: list[tuple[str, int]] = []  # (step, ticket)
        self.answered: list[int] = []

    # the transport
    def _start_worker(self, name: str, replica: int) -> None:
        worker = self.workers[(name, replica)] = _Worker(name, replica)
        self.inbox.append((worker, (m.READY,)))

    def _send(self, step: str, replica: int, ticket: int, message: tuple[Any, ...]) -> None:
        self.sent.append((step, ticket))
        worker = self.workers[(step, replica)]
        message = m.decode(m.encode(message))  # what a worker would get: copies
        if message[0] == m.GENERATE:
            start = message[2] * self.specs[step].batch_size  # a fresh run: batch seq holds rows from seq * size
            rows = self.data[start:start + self.specs[step].batch_size]
            last = start + len(rows) >= len(self.data)
            answer = (m.DONE, ticket, pickle.dumps(rows), last, [], None, None, len(rows), None, None, None)
        else:
            try:
                rows = self.fns[step](message[4][0])
                answer = (m.DONE, ticket, pickle.dumps(rows), False, [], None, None, len(rows), None, None, None)
            except ValueError as exc:
                answer = (m.FAILED, ticket, ErrorRecord.from_message("ValueError", str(exc), step=step,
                                                                     retryable=False))
        self.inbox.append((worker, answer))

    def _job_finished(self, worker: Any, ticket: int) -> None:
        self.answered.append(ticket)

    def run(self) -> bool | None:
        for spec in self.specs.values():
            for replica in range(spec.replicas):
                self._start_worker(spec.name, replica)
        outcome = self._apply(self.scheduler.start())
        rounds = 0
        while outcome is None and self.inbox:
            rounds += 1
            assert rounds < 10_000, "the run does not end"
            for _ in range(len(self.inbox)):  # one round: what the workers sent so far
                worker, message = self.inbox.popleft()
                outcome = self._handle(worker, message)
                if outcome is not None:
                    break
            self._release_held()
        return outcome


def _run(fns: dict[str, Any], n: int = 23, **step_kw: Any) -> tuple[QueueTransport, list[tuple[Any, ...]]]:
    log: list[tuple[Any, ...]] = []
    hooks = ExecutorHooks(
        on_emit=lambda step, seq, rows, keys: log.append(("emit", step, seq, [r["i"] for r in rows])),
        on_rows_failed=lambda batch, error: log.append(("failed", batch.step, batch.seq, error.message)),
        on_persist=lambda action, data: log.append(("persist", action.step, action.seq)),
        on_flush=lambda: log.append(("flush",)),
    )
    specs = [
        StepSpec("gen", "generator", (), ("a",), batch_size=7),
        StepSpec("a", "normal", ("gen",), ("b",), batch_size=5, replicas=2, **step_kw),
        StepSpec("b", "normal", ("a",), (), batch_size=3),
    ]
    ex = QueueTransport(specs, [{"i": i} for i in range(n)], fns, hooks)
    assert ex.run() is True
    return ex, log


def test_the_driver_runs_a_pipeline_over_a_transport_of_its_own():
    ex, log = _run({"a": lambda rows: rows, "b": lambda rows: [{"i": r["i"] * 10} for r in rows]})
    emitted = [i for entry in log if entry[0] == "emit" for i in entry[3]]
    assert emitted == [i * 10 for i in range(23)]  # every row, in order
    assert sorted(ex.answered) == sorted(t for _, t in ex.sent)  # every job was answered once
    ex.scheduler.check_invariants()


def test_a_batch_is_stored_and_flushed_before_what_follows_from_it():
    ex, log = _run({"a": lambda rows: rows, "b": lambda rows: rows})
    persisted: set[tuple[str, int]] = set()
    durable: set[tuple[str, int]] = set()
    for entry in log:
        if entry[0] == "persist":
            persisted.add((entry[1], entry[2]))
        elif entry[0] == "flush":
            durable |= persisted
        elif entry[0] == "emit":
            assert (entry[1], entry[2]) in durable, f"{entry[:3]} emitted before it was durable"
    assert ("gen", 0) in durable and ("b", 0) in durable


def test_rows_given_up_on_reach_the_hooks_and_the_run_goes_on():
    def a(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if any(r["i"] == 12 for r in rows):
            raise ValueError("row 12 is bad")
        return rows

    ex, log = _run({"a": a, "b": lambda rows: rows}, on_error="skip")
    failed = [entry for entry in log if entry[0] == "failed"]
    assert [(f[1], f[3]) for f in failed] == [("a", "row 12 is bad")]
    emitted = [i for entry in log if entry[0] == "emit" for i in entry[3]]
    assert emitted == [i for i in range(23) if not 10 <= i < 15]  # a's batch of rows 10-14 is given up
