"""What tasks and models may know of the worker running them, and the one thing they may hand
back: the public face of the worker loop (``synthpipe.runtime.worker``), in the definition layer
so that library code never imports the runtime. Outside a worker it is empty and quiet."""

from __future__ import annotations

import contextvars
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

STORE_BATCHES = "store_batches"
"""Set in the run context when the coordinator stores every finished batch."""

ARTIFACT = "artifact"
"""A record kind: files a step made, for the coordinator to keep in the run directory."""

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


def publish(kind: str, payload: Any) -> bool:
    """Hand the coordinator something to keep (the only writer of the run's store); False
    outside a worker, where there is no one to hand it to."""
    if _PUBLISHER:
        _PUBLISHER[0](kind, payload)
        return True
    return False


def save_artifact(step: str, name: str, write: Callable[[Path], None], metadata: dict[str, Any] | None) -> bool:
    """Run ``write(folder)`` into a temporary folder and send what it wrote to the coordinator,
    which keeps it under ``<run dir>/artifacts/<step>/<name>/`` (workers never write the run's
    store themselves). False outside a run: there is no run directory to keep it in."""
    if not name or name in {".", ".."} or "/" in name or "\\" in name:
        raise ValueError(f"step '{step}': artifact name {name!r} must be a plain folder name")
    if not _PUBLISHER:
        return False
    with tempfile.TemporaryDirectory(prefix="synthpipe-artifact-") as tmp:
        folder = Path(tmp)
        write(folder)
        files = {p.relative_to(folder).as_posix(): p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file()}
    return publish(ARTIFACT, {"step": step, "name": name, "files": files, "metadata": dict(metadata or {})})
