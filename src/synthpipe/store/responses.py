"""The response cache on disk: one append-only JSON-lines file per model set-up
(``<store>/responses/<namespace>.jsonl``), each line a request's key and its answer.

Workers read it (at their first request); only the coordinator appends to it, with the
answers workers send it as they arrive, so a stopped, crashed or re-run pipeline never
pays twice for the same request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthpipe.store.journal import Journal


class ResponseLog:
    """The coordinator's side: appends answers, per namespace."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._journals: dict[str, Journal] = {}

    def append(self, namespace: str, answers: list[tuple[str, Any]]) -> None:
        journal = self._journals.get(namespace)
        if journal is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            journal = self._journals[namespace] = Journal(self.folder / f"{_safe(namespace)}.jsonl")
        journal.append_many([{"k": key, "v": value} for key, value in answers])

    def sync(self) -> None:
        for journal in self._journals.values():
            journal.sync()

    def close(self) -> None:
        for journal in self._journals.values():
            journal.close()
        self._journals.clear()


class ResponseIndex:
    """A worker's read-only view: where each stored answer is, read from disk when asked
    (holding every answer in memory would grow with the run)."""

    def __init__(self, folder: Path, namespace: str) -> None:
        self.path = folder / f"{_safe(namespace)}.jsonl"
        self._where: dict[str, tuple[int, int]] = {}
        self._file: Any = None
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            offset = 0
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # torn: the writer died before finishing the line
                start = line.find(b'"k":"')
                if start >= 0:
                    end = line.find(b'"', start + 5)
                    self._where[line[start + 5:end].decode()] = (offset, len(line))
                offset += len(line)

    def __len__(self) -> int:
        return len(self._where)

    def get(self, key: str) -> Any:
        where = self._where.get(key)
        if where is None:
            return None
        if self._file is None:
            self._file = self.path.open("rb")
        self._file.seek(where[0])
        try:
            record = json.loads(self._file.read(where[1]))
        except ValueError:
            return None  # damaged: ask again
        return record.get("v") if isinstance(record, dict) and record.get("k") == key else None


def _safe(namespace: str) -> str:
    return "".join(c for c in namespace if c.isalnum() or c in "-_") or "default"
