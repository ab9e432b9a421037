"""The executor contract: what the scheduler and every executor share.

The vocabulary (a step as the scheduler knows it, a batch, the actions the scheduler returns)
lives here, below both, so that an executor (local processes, Ray, a test's fake) depends on
this module and the driver, never on the scheduler's insides.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Union

from synthpipe.errors import ErrorRecord

Row = dict[str, Any]
StepKind = Literal["generator", "normal", "global"]

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
    routed_to: tuple[str, ...] | None = None  # a routing step's decision: the successors that get it
    crc: int | None = None  # of the bytes to store, where the worker sent it (set by the driver)


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



# -- what an executor is given -----------------------------------------------------------------


@dataclass
class ExecutorHooks:
    """What the executor hands back to the layers above it."""

    on_emit: Callable[[str, int, list[dict[str, Any]], list[int]], None]
    on_rows_failed: Callable[[Batch, ErrorRecord], None]
    on_persist: Callable[[Persist, bytes | None], None] = lambda action, data: None
    """``data``: the bytes the worker sent to be stored (``action.crc``: their CRC-32, where it
    sent that too), or None for rows the coordinator put together itself (the parts of a batch
    split to isolate a crash)."""
    on_flush: Callable[[], None] = lambda: None
    """Make the batches handed to ``on_persist`` so far durable (against a killed process).
    Called before anything that follows from them leaves the coordinator: work for the next
    steps, rows for the result."""
    on_replay: Callable[[str, int], tuple[list[dict[str, Any]], bool]] = lambda step, seq: ([], False)
    on_tick: Callable[[], None] = lambda: None
    on_record: Callable[[str, Any], None] = lambda kind, payload: None
    on_sent: Callable[[str, int, int], None] = lambda step, replica, seq: None
    """A batch (or a generator's batch number) was handed to ``replica`` of ``step``: for the
    run's timeline."""
    on_admit: Callable[[str, int, list[tuple[str, int]]], bool] | None = None
    """Asked before a batch (rows > 0) or a generator request (rows 0) of a step is sent, with
    the (step, rows) of the jobs already sent and still running; False holds it back (the
    scheduler gets it back). None: everything is sent (no budget)."""
    on_log: Callable[[int, str, str], None] = field(
        default=lambda level, name, text: logging.getLogger(name).log(level, text)
    )


@dataclass(frozen=True)
class ExecutorStep:
    """What an executor needs to know of a step, so that it never probes the step object."""

    name: str
    replicas: int = 1
    timeout: float | None = None  # seconds one batch may take
    load_timeout: float | None = None  # seconds load() may take
    is_async: bool = False  # its batches all run at once (each timed from when it was sent)

    @classmethod
    def of(cls, name: str, step: Any) -> ExecutorStep:
        return cls(name, step.resources.replicas, step.timeout, step.load_timeout,
                   bool(getattr(step, "is_async", False)))


class Executor(Protocol):
    """What the runner asks of an executor, whichever it is: run the scheduler to the end, raising
    ``StepFailed`` when a failure stops the run and ``RunInterrupted`` when a signal did."""

    def run(self) -> None: ...
