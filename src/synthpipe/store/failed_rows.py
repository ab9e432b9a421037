"""The failed-rows ledger: every row of a failed batch, with its error, as JSON lines."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from synthpipe.errors import ErrorRecord


class FailedRowsLedger:
    MAX_DISTINCT_SHOWN = 5

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._file: Any = None
        self._per_step: dict[str, int] = {}
        self._distinct: dict[tuple[str, str, str], list[Any]] = {}  # -> [rows, traceback]

    def record(self, step: str, batch: int, row_start: int, inputs: list[list[dict[str, Any]]],
               error: ErrorRecord, attempts: int = 1, **tags: Any) -> None:
        """Append one entry per row; ``tags`` (the step's signature, the run) go in each."""
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
                    **tags,
                }
                self._file.write(json.dumps(entry, default=repr) + "\n")
                self.count += 1
        self._file.flush()
        rows = sum(len(r) for r in inputs)
        self._per_step[step] = self._per_step.get(step, 0) + rows
        seen = self._distinct.setdefault((step, error.type_name, error.message), [0, error.traceback])
        seen[0] += rows

    def summary(self) -> str:
        """Per step: rows failed, each distinct error with its count and one full traceback."""
        lines = [f"synthpipe: {self.count:,} row(s) failed; all are in {self.path}"]
        for step, total in self._per_step.items():
            lines.append(f"  step '{step}': {total:,} row(s) failed")
            errors = [(k, v) for k, v in self._distinct.items() if k[0] == step]
            errors.sort(key=lambda kv: -kv[1][0])
            for (_, type_name, message), (rows, tb) in errors[: self.MAX_DISTINCT_SHOWN]:
                lines.append(f"    {rows:,} × {type_name}: {message}")
                if tb:
                    lines.extend("      " + line for line in tb.rstrip().splitlines())
            if len(errors) > self.MAX_DISTINCT_SHOWN:
                lines.append(f"    … and {len(errors) - self.MAX_DISTINCT_SHOWN} more distinct error(s)")
        return "\n".join(lines)

    def sync(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
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
