"""The failed-rows ledger: every row of a failed batch, with its error, as JSON lines
(written and read like the journal: appended, a torn last line skipped)."""

from __future__ import annotations

import base64
import json
import os
import pickle
from pathlib import Path
from typing import Any

from synthpipe.errors import ErrorRecord
from synthpipe.store.journal import Journal


class FailedRowsLedger:
    MAX_DISTINCT_SHOWN = 5

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._lines = Journal(path)
        self._per_step: dict[str, int] = {}
        self._distinct: dict[tuple[str, str, str], list[Any]] = {}  # -> [rows, traceback]

    def record(self, step: str, batch: int, row_start: int, inputs: list[list[dict[str, Any]]],
               error: ErrorRecord, attempts: int = 1, keys: list[list[int]] | None = None, **tags: Any) -> None:
        """Append one entry per row; ``tags`` (the step's signature, the run) go in each.

        ``keys``: per input, per row, the number of the generator row it came from (where a
        retried row's results go back in the output)."""
        entries = []
        for input_index, rows in enumerate(inputs):
            row_keys = keys[input_index] if keys and input_index < len(keys) else []
            for offset, row in enumerate(rows):
                entries.append({
                    "step": step,
                    "batch": batch,
                    "row": row_start + offset,
                    "input_index": input_index,
                    "key": row_keys[offset] if offset < len(row_keys) else None,
                    "data": row,
                    **_exact_copy(row),
                    "attempts": attempts,
                    "error_type": error.type_name,
                    "message": error.message,
                    "traceback": error.traceback,
                    **tags,
                })
        self._lines.append_many(entries)
        self.count += len(entries)
        self._per_step[step] = self._per_step.get(step, 0) + len(entries)
        seen = self._distinct.setdefault((step, error.type_name, error.message), [0, error.traceback])
        seen[0] += len(entries)

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
        self._lines.sync()

    def close(self) -> None:
        self._lines.close()


def _exact_copy(row: dict[str, Any]) -> dict[str, str]:
    """A row that JSON cannot hold exactly (bytes, images, arrays...) is also kept pickled,
    so retrying it gives the step the very row that failed."""
    try:
        if json.loads(json.dumps(row)) == row:
            return {}
    except (TypeError, ValueError):
        pass
    try:
        return {"data_pickle": base64.b64encode(pickle.dumps(row, protocol=pickle.HIGHEST_PROTOCOL)).decode()}
    except Exception:
        return {}


def row_of_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The input row of a ledger entry, exactly as the step was given it where it was kept."""
    if "data_pickle" in entry:
        return pickle.loads(base64.b64decode(entry["data_pickle"]))
    return dict(entry["data"])


def write_failed_rows(path: Path, entries: list[dict[str, Any]]) -> None:
    """A result's failed rows, written whole (replacing the file at once)."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for entry in entries:
            fh.write(json.dumps(entry, default=repr) + "\n")
    os.replace(tmp, path)


def read_failed_rows(path: Path) -> list[dict[str, Any]]:
    """Entries of a ledger; a torn last line (a crash mid-write) is skipped."""
    return Journal(path).read()
