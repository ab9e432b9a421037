"""The scheduler: pure logic that turns events into actions, split by concern.

``events`` (the Scheduler and its event methods), ``state`` (each step's state),
``forming`` (batch forming and joins), ``dispatch`` (release, dispatch, backpressure),
``failure`` (retry, restart, isolation, giving up), ``replay`` (resume from stored batches).
The vocabulary it shares with executors is ``synthpipe.runtime.contract``.
"""

from synthpipe.runtime.contract import (
    REPLAY,
    Action,
    Batch,
    Dispatch,
    Drained,
    Emit,
    Fail,
    Finished,
    Generate,
    Persist,
    Replay,
    RestartWorker,
    RetryLater,
    Row,
    RowsFailed,
    StepKind,
    StepSpec,
)
from synthpipe.runtime.scheduler.events import Scheduler
from synthpipe.runtime.scheduler.state import MIN_ROWS_FOR_FAILURE_RATE, StepStats, StoredOutput

__all__ = [
    "MIN_ROWS_FOR_FAILURE_RATE", "REPLAY", "Action", "Batch", "Dispatch", "Drained", "Emit", "Fail", "Finished",
    "Generate", "Persist", "Replay", "RestartWorker", "RetryLater", "Row", "RowsFailed", "Scheduler", "StepKind",
    "StepSpec", "StepStats", "StoredOutput",
]
