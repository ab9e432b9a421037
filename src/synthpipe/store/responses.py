"""The response cache on disk: one append-only JSON-lines file per model set-up
(``<store>/responses/<namespace>.jsonl``), each line a request's key and its answer, and
beside it an index (``<namespace>.index.sqlite``: key -> where its line is).

Only the coordinator writes (appends the answers workers send it as they arrive, then
indexes them), so a stopped, crashed or re-run pipeline never pays twice for the same
request. Workers look each key up in the index and read that one line: a worker's memory
and start-up do not grow with the answers stored. The lines are the truth, the index only
says where to look: a line that is torn, damaged or not the key's is a miss (the request
is asked again), never an error; lines the index does not cover yet (a coordinator killed
between the two writes) are indexed when the next run opens the folder.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

INDEX_SUFFIX = ".index.sqlite"
CATCH_UP_ROWS = 50_000
_SCHEMA = ("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, offset INTEGER, length INTEGER) WITHOUT ROWID;"
           "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER)")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")  # readers in the workers never wait for the writer
    db.execute("PRAGMA synchronous=NORMAL")  # the index can be rebuilt from the lines: no fsync per commit
    return db


class _Namespace:
    """The coordinator's writer for one namespace: the lines file and its index."""

    def __init__(self, lines: Path) -> None:
        self.lines = lines
        self.index = lines.with_name(lines.name[: -len(".jsonl")] + INDEX_SUFFIX)
        self.db = self._open_index()
        self._fd: int | None = None
        self._end = 0  # where the lines this writer knows of end
        self._committed_end = -1
        self._pending: list[tuple[str, int, int]] = []
        self.catch_up()

    def _open_index(self) -> sqlite3.Connection:
        try:
            db = _connect(self.index)
            db.executescript(_SCHEMA)
            db.execute("SELECT count(*) FROM meta").fetchone()
            return db
        except sqlite3.DatabaseError:  # damaged: it is only a map of the lines, make it again
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.index) + suffix).unlink(missing_ok=True)
            db = _connect(self.index)
            db.executescript(_SCHEMA)
            return db

    def _indexed_end(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE name='end'").fetchone()
        return int(row[0]) if row else 0

    def catch_up(self) -> None:
        """Index the complete lines past the index's end (none, unless a run stopped between
        appending and indexing, or the lines came from before there was an index)."""
        start = self._indexed_end()
        size = self.lines.stat().st_size if self.lines.exists() else 0
        if start > size:  # the lines file was replaced: index it all again
            self.db.execute("DELETE FROM answers")
            start = 0
        end = start
        if size > start:
            with self.lines.open("rb") as fh:
                fh.seek(start)
                for line in fh:
                    if not line.endswith(b"\n"):
                        break  # torn: the writer died mid-line; the next append ends it
                    key = _key_of(line)
                    if key is not None:
                        self._pending.append((key, end, len(line)))
                    end += len(line)
                    if len(self._pending) >= CATCH_UP_ROWS:  # memory stays bounded on a large old file
                        self._end = end
                        self.commit()
        self._end = end
        self.commit()

    def append(self, answers: list[tuple[str, Any]]) -> None:
        """One write of whole lines at the file's end (O_APPEND): where each line landed is
        known from the end the write left, even were another process appending too."""
        if self._fd is None:
            self._fd = os.open(self.lines, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if os.fstat(self._fd).st_size > self._end:  # a torn last line: end it so the next line stands alone
                os.write(self._fd, b"\n")
        lines = [
            json.dumps({"k": key, "v": value}, separators=(",", ":"), default=repr).encode() + b"\n"
            for key, value in answers]
        data = b"".join(lines)
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        offset = os.lseek(self._fd, 0, os.SEEK_CUR) - len(data)
        for (key, _), line in zip(answers, lines, strict=True):
            self._pending.append((key, offset, len(line)))
            offset += len(line)
        self._end = max(self._end, offset)

    def commit(self) -> None:
        """The lines are in the kernel (written unbuffered) before the index points to them."""
        if not self._pending and self._end == self._committed_end:
            return
        pending, self._pending = self._pending, []
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)", pending)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('end', ?)", (self._end,))
        self._committed_end = self._end

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
        self.commit()

    def close(self) -> None:
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.db.close()


class ResponseLog:
    """The coordinator's side: appends answers, per namespace, and keeps each index current.

    Opening it brings every namespace's index up to its lines (before any worker reads)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._namespaces: dict[str, _Namespace] = {}
        if folder.is_dir():
            for lines in sorted(folder.glob("*.jsonl")):
                try:
                    self._namespaces[lines.name[: -len(".jsonl")]] = _Namespace(lines)
                except (OSError, sqlite3.Error):
                    continue  # workers then read without an index: slower, never wrong

    def append(self, namespace: str, answers: list[tuple[str, Any]]) -> None:
        safe = _safe(namespace)
        writer = self._namespaces.get(safe)
        if writer is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            writer = self._namespaces[safe] = _Namespace(self.folder / f"{safe}.jsonl")
        writer.append(answers)

    def sync(self) -> None:
        for writer in self._namespaces.values():
            writer.sync()

    def close(self) -> None:
        for writer in self._namespaces.values():
            writer.close()
        self._namespaces.clear()


class ResponseIndex:
    """A worker's read-only view: each key looked up in the index and its line read from
    disk when asked. Only lines past the index's end (normally none) are held in memory."""

    def __init__(self, folder: Path, namespace: str) -> None:
        self.path = folder / f"{_safe(namespace)}.jsonl"
        self._db: sqlite3.Connection | None = None
        self._tail: dict[str, tuple[int, int]] = {}
        self._file: Any = None
        if not self.path.exists():
            return
        start = 0
        index = folder / f"{_safe(namespace)}{INDEX_SUFFIX}"
        if index.exists():
            try:
                self._db = _connect_reader(index)
                row = self._db.execute("SELECT value FROM meta WHERE name='end'").fetchone()
                start = int(row[0]) if row else 0
            except sqlite3.Error:
                self._db, start = None, 0  # damaged: the lines alone still answer
        self._scan_tail(start)

    def _scan_tail(self, start: int) -> None:
        with self.path.open("rb") as fh:
            fh.seek(start)
            offset = start
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # torn: the writer died before finishing the line
                key = _key_of(line)
                if key is not None:
                    self._tail[key] = (offset, len(line))
                offset += len(line)

    def __len__(self) -> int:
        indexed = 0
        if self._db is not None:
            try:
                indexed = self._db.execute("SELECT count(*) FROM answers").fetchone()[0]
            except sqlite3.Error:
                pass
        return indexed + len(self._tail)

    def _where(self, key: str) -> tuple[int, int] | None:
        where = self._tail.get(key)
        if where is not None or self._db is None:
            return where
        try:
            row = self._db.execute("SELECT offset, length FROM answers WHERE key=?", (key,)).fetchone()
        except sqlite3.Error:
            return None  # an index that cannot be read is a miss: the request is asked again
        return (int(row[0]), int(row[1])) if row else None

    def get(self, key: str) -> Any:
        where = self._where(key)
        if where is None:
            return None
        if self._file is None:
            self._file = self.path.open("rb")
        try:
            data = os.pread(self._file.fileno(), where[1], where[0])
            record = json.loads(data)
        except (OSError, ValueError):
            return None  # damaged: ask again
        return record.get("v") if isinstance(record, dict) and record.get("k") == key else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _connect_reader(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA query_only=1")
    db.execute("PRAGMA cache_size=-512")  # 512 KiB: lookups are by key, a few pages each
    return db


def _key_of(line: bytes) -> str | None:
    start = line.find(b'"k":"')
    if start < 0:
        return None
    end = line.find(b'"', start + 5)
    return line[start + 5:end].decode(errors="replace") if end > 0 else None


def _safe(namespace: str) -> str:
    return "".join(c for c in namespace if c.isalnum() or c in "-_") or "default"
