"""The scheduler's state of each step: what it holds, where, and what it knows of earlier runs."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from synthpipe.errors import ErrorRecord
from synthpipe.runtime.contract import Batch, Row, StepSpec

MIN_ROWS_FOR_FAILURE_RATE = 50
"""A step's failure rate is only judged once it has seen this many rows."""


@dataclass(frozen=True)
class StoredOutput:
    """What the store says of one batch an earlier run finished: one record per stored batch.

    ``rows``: rows out; ``inputs``: rows that went in, where known (a batch formed now with
    another size is not the stored one); ``failed``: rows that failed in it (they still count
    for the failure guard and the statistics when it is replayed) and ``failed_at`` where in
    the batch they were; ``sources``: the input each output row came from, where the step said
    (the keys of its output follow)."""

    rows: int
    inputs: int | None = None
    failed: int = 0
    failed_at: tuple[int, ...] = ()
    sources: tuple[int, ...] | None = None
    routed_to: tuple[str, ...] | None = None  # routing steps: the successors the batch went to


@dataclass
class StepStats:
    rows_in: int = 0
    rows_out: int = 0
    rows_failed: int = 0
    batches: int = 0
    retries: int = 0
    restarts: int = 0
    replayed: int = 0  # batches given back from the store


class RowBuffer:
    """Rows waiting for a step, kept as the outputs they arrived in: a batch that is exactly
    one such output is taken whole (a worker's bytes can then be sent on untouched); only a
    batch cut from several, or from part of one, is put together row by row."""

    __slots__ = ("_chunks", "_len")

    def __init__(self) -> None:
        self._chunks: deque[Sequence[Row]] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Row]:
        for chunk in self._chunks:
            yield from chunk

    def extend(self, rows: Sequence[Row]) -> None:
        if len(rows):
            self._chunks.append(rows)
            self._len += len(rows)

    def take(self, n: int) -> Sequence[Row]:
        """The first ``n`` rows, removed from the buffer."""
        chunks = self._chunks
        if n <= 0:
            return []
        if len(chunks[0]) == n:
            self._len -= n
            return chunks.popleft()
        taken: list[Row] = []
        while len(taken) < n:
            chunk = chunks.popleft()
            need = n - len(taken)
            if len(chunk) <= need:
                taken.extend(chunk)
            else:
                taken.extend(chunk[:need])
                chunks.appendleft(chunk[need:])
        self._len -= n
        return taken

    def take_all(self) -> Sequence[Row]:
        return self.take(self._len)


@dataclass
class _Output:
    rows: Sequence[Row]
    origins: list[int]
    min_origin: float
    fresh: bool = True  # computed in this run (not replayed)
    keys: list[int] = field(default_factory=list)
    routed_to: tuple[str, ...] | None = None  # routing steps: the successors that get it (None: all)


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
    buffers: list[RowBuffer] = field(default_factory=list)
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
    stored: dict[int, StoredOutput] = field(default_factory=dict)  # seq -> finished by an earlier run
    rows_released: int = 0  # generators: rows released so far (the next row's key)
    consumed: list[int] = field(default_factory=list)  # per predecessor: rows taken into batches
    fresh_at: list[float] = field(default_factory=list)  # per predecessor: first fresh row (inf: none)
    diverged: bool = False  # generators: producing fresh batches now
    fresh_offset: int = 0  # generators: rows before the first fresh batch
    pace: float | None = None  # seconds a batch takes its worker (a moving average), where workers say

    def paced(self, seconds: float | None) -> None:
        """A worker said how long a batch took it."""
        if seconds is not None and seconds >= 0:
            self.pace = seconds if self.pace is None else 0.8 * self.pace + 0.2 * seconds

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
