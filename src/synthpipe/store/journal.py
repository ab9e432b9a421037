"""The journal: an append-only file of JSON lines, the truth about what is finished.

A record is written after the data it points to, so a record never points to data that
was not written. A torn last line (the process died mid-write) is skipped, never fatal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"), default=repr)  # one, not one per record


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        with self.path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # torn: the writer died before finishing the line
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    records.append(record)
        return records

    def append(self, record: dict[str, Any]) -> None:
        self.append_many([record])

    def append_many(self, records: list[dict[str, Any]]) -> None:
        """Append records (values JSON cannot hold are written as their repr) in one flush."""
        if self._file is None:
            self._file = self._open_for_append()
        encode = _ENCODER.encode
        self._file.write(b"".join(encode(r).encode() + b"\n" for r in records))
        self._file.flush()

    def _open_for_append(self) -> Any:
        fh = self.path.open("ab")
        # A torn last line from an earlier crash would glue onto the next record: end it.
        if fh.tell() > 0:
            with self.path.open("rb") as check:
                check.seek(-1, os.SEEK_END)
                if check.read(1) != b"\n":
                    fh.write(b"\n")
        return fh

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None
