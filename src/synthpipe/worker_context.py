"""What tasks and models may know of the worker running them, and the one thing they may hand
back: the public face of the worker loop (``synthpipe.runtime.worker``), in the definition layer
so that library code never imports the runtime. Outside a worker it is empty and quiet."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

STORE_BATCHES = "store_batches"
"""Set in the run context when the coordinator stores every finished batch."""

_CONTEXT: dict[str, Any] = {}
_PUBLISHER: list[Callable[[str, Any], None]] = []  # set by the worker loop: sends to the coordinator
_ROW_START: contextvars.ContextVar[int | None] = contextvars.ContextVar("synthpipe_row_start", default=None)


def current_row_start() -> int | None:
    """In an async step's ``aprocess``: the number, in the step's input stream, of the batch's
    first row (stable across resumed runs); None elsewhere."""
    return _ROW_START.get()


def context() -> dict[str, Any]:
    """What the coordinator told this worker about the run (where the response cache is,
    whether it may be read); empty outside a worker."""
    return dict(_CONTEXT)


def publish(kind: str, payload: Any) -> None:
    """Hand the coordinator something to keep (the only writer of the run's store)."""
    if _PUBLISHER:
        _PUBLISHER[0](kind, payload)
