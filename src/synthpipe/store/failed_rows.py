"""The failed-rows ledger: every row of a failed batch, with its error, as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthpipe.errors import ErrorRecord


class FailedRowsLedger:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: Any = None

    def record(self, step: str, batch: int, row_start: int, inputs: list[list[dict[str, Any]]],
               error: ErrorRecord, attempts: int = 1) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        for input_index, rows in enumerate(inputs):
            for offset, row in enumerate(rows):
                entry = {
                    "step": step,
                    "batch": batch,
                    "row": row_start + offset,
                    "input_index": input_index,
                    "data": row,
                    "attempts": attempts,
                    "error_type": error.type_name,
                    "message": error.message,
                    "traceback": error.traceback,
                }
                self._file.write(json.dumps(entry, default=repr) + "\n")
                self.count += 1
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_failed_rows(path: Path) -> list[dict[str, Any]]:
    """Entries of a ledger; a torn last line (a crash mid-write) is skipped."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return entries
