"""Segment files: one append-only file per step signature holding its finished batches.

Each batch is one record, as ``batch_format`` made it (an Arrow IPC stream, or the pickled
rows where Arrow would change a value), at the offset the journal names. Appending costs one
write and nothing is rewritten at the end. Readable datasets are the leaf steps' Parquet files.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Any

from synthpipe.store.batch_format import decode

BUFFER_BYTES = 256 * 1024
"""Appends wait in a buffer this large until the store flushes them (at least once per round
of the coordinator's loop): one write for several batches rather than one each."""


class Segments:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._open: dict[str, Any] = {}
        self._ends: dict[str, int] = {}  # where the next append lands, per open file

    def path(self, step: str, signature: str) -> Path:
        return self.folder / step / f"{signature}.seg"

    def append(self, step: str, signature: str, data: bytes) -> tuple[str, int, int]:
        """Store ``data``; return (file relative to the store, offset, length).

        The bytes may wait in this process's buffer until ``flush``, which the store calls
        before it writes the journal records that point to them.
        """
        key = f"{step}/{signature}.seg"
        fh = self._open.get(key)
        if fh is None:
            path = self.path(step, signature)
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = self._open[key] = path.open("ab", buffering=BUFFER_BYTES)
            self._ends[key] = fh.tell()
        offset = self._ends[key]
        fh.write(data)
        self._ends[key] = offset + len(data)
        return key, offset, len(data)

    def flush(self) -> None:
        """Hand every appended byte to the kernel (enough to survive a killed process)."""
        for fh in self._open.values():
            fh.flush()

    def read(self, key: str, offset: int, length: int, crc: int | None = None) -> list[dict[str, Any]]:
        if key in self._open:
            self._open[key].flush()
        with (self.folder / key).open("rb") as fh:
            fh.seek(offset)
            data = fh.read(length)
        if len(data) != length:
            raise OSError(f"{key}: expected {length} bytes at {offset}, found {len(data)}")
        if crc is not None and zlib.crc32(data) != crc:
            raise OSError(f"{key}: the bytes at {offset} are not the ones stored there (checksum)")
        return decode(data)

    def size(self, key: str) -> int:
        """Bytes in a segment file as the disk has it (0 if it is gone)."""
        fh = self._open.get(key)
        if fh is not None:
            fh.flush()
        try:
            return (self.folder / key).stat().st_size
        except OSError:
            return 0

    def sync(self) -> None:
        for fh in self._open.values():
            fh.flush()
            os.fsync(fh.fileno())

    def close(self) -> None:
        for fh in self._open.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        self._open.clear()
        self._ends.clear()
