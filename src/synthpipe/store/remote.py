"""A store kept on any fsspec location (``s3://``, ``gs://``, ``az://``, ``memory://``...).

Object stores cannot append, and the store lives by appending. So a run works on a local
copy (under the local cache root) and mirrors it: append-only files (the journal, batch
segments, the failed-rows ledger, the response cache) go up as numbered parts holding only
their new bytes, ``<file>.parts/<offset>``; a run's files (its log, its result) go up whole
when they change. A run on another machine starts by pulling what is not already local.

Pushes run on a thread of their own every couple of seconds (the coordinator never waits on
the network) and once more, waited for, when the run ends. A killed run loses at most what
was written since the last push; a push that fails is reported and retried at the next one.

A run also claims the remote store, so that a second machine does not write it at the same
time (see ``claim``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from synthpipe.store.claim import COPY_ID, LEASE, LEASE_SECONDS, RemoteClaim, StoreInUse
from synthpipe.store.responses import INDEX_SUFFIX
from synthpipe.store.result_stream import RESULT_FOLDER

logger = logging.getLogger("synthpipe.store")


PARTS = ".parts"
WHOLE_FILES_UNDER = "runs"  # written whole (and rewritten): uploaded whole, but for the logs
STATE = ".mirror-state.json"  # this copy's own record: how far each file was in step with the remote
NOT_MIRRORED = {"lock", STATE, COPY_ID}
JOURNAL = "journal.jsonl"  # pushed last: a record never reaches the remote before its data
FINAL_PUSH_SECONDS = float(os.environ.get("SYNTHPIPE_MIRROR_TIMEOUT", "60"))


def is_remote(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


def local_copy_root(url: str, cache_root: Path) -> Path:
    """Where this machine keeps its working copy of a remote store."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:12]
    return cache_root / "remote" / digest


def _derived(rel: str) -> bool:
    """Files made again from the others where missing, and rewritten in place (not appended):
    the response cache's index, a run's memory-mapped result (``runs/<run>/result/``). Not mirrored."""
    parts = rel.split("/")
    in_result = len(parts) == 4 and parts[0] == WHOLE_FILES_UNDER and parts[2] == RESULT_FOLDER
    return in_result or INDEX_SUFFIX in parts[-1]



class RemoteMirror:
    def __init__(self, url: str, local_root: Path) -> None:
        from fsspec.core import url_to_fs

        self.url = url.rstrip("/")
        self.fs, self.root = url_to_fs(self.url)
        self.root = self.root.rstrip("/")
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self._needs_folders = bool({"file", "local"} & set(protocols))  # object stores have none
        self.local = local_root
        self._uploaded: dict[str, int] = {}  # append-only file -> bytes already up
        self._synced: dict[str, int] = self._load_state()  # ... as of the last pull or push
        self._whole: dict[str, tuple[int, int]] = {}  # whole file -> (size, mtime_ns) already up
        self._lock = threading.Lock()  # one push at a time
        self._thread: threading.Thread | None = None
        self._failed: str | None = None
        self.lease = RemoteClaim(self.fs, self.root, local_root, _display(self.url))

    # -- the claim (one machine at a time) ------------------------------------------------

    def claim(self) -> None:
        """Hold the remote store for this run; raises ``StoreInUse`` if another run holds it."""
        self.lease.acquire(self._put)

    def release(self, copied: bool) -> None:
        """End the claim: removed if everything is up (``copied``) and it is still this run's;
        otherwise only no longer renewed, so that it lapses (this copy holds what is not up)."""
        if copied:
            self.lease.release()
        else:
            self.lease.stop()

    # -- down ---------------------------------------------------------------------------

    def pull(self) -> int:
        """Bring down what the remote store has and this copy lacks; returns bytes fetched."""
        try:
            listing: dict[str, Any] = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return 0
        parts: dict[str, list[tuple[int, str, int]]] = {}
        fetched = 0
        for path, info in listing.items():
            rel = self._relative(path)
            if rel is None or rel == LEASE or info.get("type") == "directory":
                continue
            if PARTS + "/" in rel:
                name, offset = rel.rsplit(PARTS + "/", 1)
                if offset.isdigit():
                    parts.setdefault(name, []).append((int(offset), path, int(info.get("size") or 0)))
                continue
            target = self.local / rel
            if not target.exists():  # one this copy has (a log that grew after its last push) stays
                target.parent.mkdir(parents=True, exist_ok=True)
                _write_atomically(target, self.fs.cat_file(path))
                fetched += int(info.get("size") or 0)
                self._whole[rel] = _stamp(target)
        for rel, pieces in parts.items():
            fetched += self._pull_appended(rel, sorted(pieces))
        self._save_state()
        return fetched

    def _pull_appended(self, rel: str, pieces: list[tuple[int, str, int]]) -> int:
        """Rebuild an append-only file from its parts (those this copy has are skipped)."""
        target = self.local / rel
        have = target.stat().st_size if target.exists() else 0
        total = 0
        expected = 0
        for offset, _, size in pieces:
            if offset != expected:
                break  # a gap (a part lost in a crash): what comes after it cannot be used
            expected = offset + size
        usable = [p for p in pieces if p[0] + p[2] <= expected]
        synced = self._synced.get(rel, 0)
        if expected > synced and have > synced:
            # The remote moved on since this copy was last in step (another machine ran), and
            # this copy wrote bytes it never pushed: the remote wins, those bytes are dropped.
            have = synced
        elif have > expected:  # this copy is ahead (it pushed less than it wrote): keep it
            self._uploaded[rel] = expected
            return 0
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("ab") as fh:
            fh.truncate(min(have, expected))
            fh.seek(0, os.SEEK_END)
            position = fh.tell()
            for offset, path, size in usable:
                if offset + size <= position:
                    continue
                data = self.fs.cat_file(path)
                fh.write(data[position - offset:])
                position = offset + size
                total += size
        self._uploaded[rel] = expected
        self._synced[rel] = expected
        return total

    # -- up -----------------------------------------------------------------------------

    def push_soon(self) -> None:
        """Start a push on the mirror's thread, unless one is running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._push_logged, name="synthpipe-mirror", daemon=True)
        self._thread.start()

    def push(self, timeout: float = FINAL_PUSH_SECONDS) -> bool:
        """Push everything now (the end of a run), waiting ``timeout`` seconds at most: a stalled
        network must not hold a finished or interrupted run. What stays behind is pushed by
        the next run of the pipeline on this machine. True if everything is up."""
        if self.lease.lost:  # another run holds the store now: copying would overwrite its work
            logger.error("synthpipe: nothing more was copied to %s: %s", _display(self.url), self.lease.lost)
            return False
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._push_logged, name="synthpipe-mirror", daemon=True)
            self._thread.start()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive() or self._failed:
            why = self._failed or f"still copying after {timeout:g}s"
            logger.error("synthpipe: the store could not all be copied to %s (%s); the rest is kept in %s "
                         "and goes up at the next run of this copy (the claim on the store lapses in %.0fs)",
                         _display(self.url), why, self.local, LEASE_SECONDS)
            return False
        return True

    def _push_logged(self) -> None:
        try:
            self._push()
            self._failed = None
        except Exception as exc:  # the network: try again at the next push
            if self._failed is None:
                logger.warning("synthpipe: copying the store to %s failed (%s); trying again", _display(self.url), exc)
            self._failed = f"{type(exc).__name__}: {exc}"

    def _push(self) -> None:
        with self._lock:
            if self.lease.lost:
                raise StoreInUse(self.lease.lost)
            paths = sorted(self.local.rglob("*"), key=lambda p: (p.name == JOURNAL, str(p)))  # journal last
            for path in paths:
                if not path.is_file() or path.suffix == ".tmp":
                    continue
                rel = path.relative_to(self.local).as_posix()
                if rel in NOT_MIRRORED or _derived(rel):
                    continue
                if rel.split("/", 1)[0] == WHOLE_FILES_UNDER and not rel.endswith(".log"):  # a log only grows
                    stamp = _stamp(path)
                    if self._whole.get(rel) != stamp:
                        self._put(f"{self.root}/{rel}", path.read_bytes())
                        self._whole[rel] = stamp
                    continue
                size = path.stat().st_size
                done = self._uploaded.get(rel, 0)
                if size <= done:
                    continue
                with path.open("rb") as fh:
                    fh.seek(done)
                    data = fh.read(size - done)
                self._put(f"{self.root}/{rel}{PARTS}/{done:016d}", data)
                self._uploaded[rel] = self._synced[rel] = done + len(data)
            self._save_state()

    def _load_state(self) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads((self.local / STATE).read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _save_state(self) -> None:
        if self.local.exists():
            _write_atomically(self.local / STATE, json.dumps(self._synced).encode())

    def _put(self, path: str, data: bytes) -> None:
        if self._needs_folders:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self.fs.pipe_file(path, data)

    @property
    def display_url(self) -> str:
        return _display(self.url)

    def _relative(self, path: str) -> str | None:
        path = path.rstrip("/")
        prefix = self.root + "/"
        if not path.startswith(prefix):
            return None
        return path[len(prefix):]


def _display(url: str) -> str:
    """A URL fit for a log line: no user, password or query string."""
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rsplit('@', 1)[-1]}{slash}{path.split('?', 1)[0]}"


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _write_atomically(target: Path, data: bytes) -> None:
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
