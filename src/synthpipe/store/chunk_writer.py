"""Writes a leaf's chunks (a Parquet file, then the same rows appended to the result's Arrow
stream) on a thread of the coordinator, so that its loop goes on handing out batches while
Arrow compresses and writes in C++ (which lets the GIL go).

One thread, chunks in the order given; at most ``MAX_WAITING`` wait, so memory stays bounded
however fast rows come. A write that fails is raised in the coordinator at the next chunk it
hands over, or at ``close``."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Any

MAX_WAITING = 2


class ChunkWriter:
    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Any, Path, Any] | None] = queue.Queue(maxsize=MAX_WAITING)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def put(self, table: Any, final: Path, stream: Any) -> None:
        """Write ``table`` to ``final`` (through a temporary name), then add it to ``stream``."""
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="synthpipe-leaf-writer", daemon=True)
            self._thread.start()
        self._queue.put((table, final, stream))

    def close(self) -> None:
        """Wait for every chunk handed over to be written; raise what went wrong."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # the coordinator is told once; nothing after a failed chunk is written
            table, final, stream = item
            try:
                write_chunk(table, final, stream)
            except BaseException as exc:  # noqa: BLE001 - raised in the coordinator
                self._error = exc


def write_chunk(table: Any, final: Path, stream: Any) -> None:
    import pyarrow.parquet as pq

    tmp = final.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, final)
    try:
        stream.add(table, final)
    except OSError:
        stream.drop()
