"""The durable home of one pipeline: ``<cache root>/<name>-<structure signature>/``.

    journal.jsonl       what is finished (the truth for resuming)
    batches/<step>/<signature>.seg   finished batches, appended
    failed_rows.jsonl   every failed row, with the batch and run it belongs to
    responses/<model>.jsonl   LLM answers already paid for (the response cache)
    runs/<run id>/      one run's log and its leaf datasets (Parquet)
    lock                held by the run in progress

Steps are found again by their own signature, so a pipeline whose middle step changed
reuses every finished batch of the steps before it. The coordinator is the only writer.
"""

from __future__ import annotations

import fcntl
import logging
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthpipe.errors import SynthpipeError
from synthpipe.store.claim import StoreInUse
from synthpipe.store.failed_rows import read_failed_rows
from synthpipe.store.journal import Journal
from synthpipe.store.remote import RemoteMirror, is_remote, local_copy_root
from synthpipe.store.run_dir import RunDirectory, cache_location, default_cache_root
from synthpipe.store.segments import Segments

SYNC_EVERY_SECONDS = 2.0

logger = logging.getLogger("synthpipe.store")


@dataclass(frozen=True)
class StoredBatch:
    """A finished batch as the journal records it."""

    seq: int
    key: str
    offset: int
    length: int
    rows: int
    last: bool
    failed: int
    run: str
    inputs: int | None  # rows that went in (None in records of older versions)
    crc: int | None = None  # of the stored bytes: finds data overwritten after a power cut
    failed_at: tuple[int, ...] = ()  # positions of the failed rows among the inputs
    sources: tuple[int, ...] | None = None  # per output row, the input it came from (where known)
    routed_to: tuple[str, ...] | None = None  # a routing step's decision: the successors that got it


class PipelineStore:
    def __init__(self, root: Path, mirror: RemoteMirror | None = None) -> None:
        """``mirror``: the remote (fsspec) location this local copy is kept in step with."""
        self.root = root
        self.mirror = mirror
        self.root.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(root / "journal.jsonl")
        self.segments = Segments(root / "batches")
        self.failed_rows_path = root / "failed_rows.jsonl"
        self.responses_folder = root / "responses"
        self._lock: Any = None
        self._records: list[dict[str, Any]] | None = None
        self._pending: list[dict[str, Any]] = []  # journal records whose data may still be buffered

    @classmethod
    def for_pipeline(cls, cache_root: str | os.PathLike[str] | None, name: str, structure: str) -> PipelineStore:
        folder = f"{name}-{structure}"
        cache_root = cache_root or cache_location()
        if is_remote(cache_root):
            url = f"{str(cache_root).rstrip('/')}/{folder}"
            local = local_copy_root(url, default_cache_root()) / folder
            return cls(local, RemoteMirror(url, local))
        return cls(Path(cache_root).expanduser() / folder)

    @property
    def location(self) -> str:
        """Where the store is kept, for messages."""
        return self.mirror.display_url if self.mirror is not None else str(self.root)

    # -- the run in progress --------------------------------------------------------------

    def lock(self) -> None:
        """Only one run of a pipeline at a time: two writers would corrupt the journal."""
        fh = (self.root / "lock").open("a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise SynthpipeError(
                f"this pipeline is already running (pid {holder}) with the store {self.root}; "
                "wait for it, or give this run another cache_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock = fh
        if self.mirror is not None:
            try:  # first claim the remote store (no other machine is writing it), then read it
                self.mirror.claim()
                self.mirror.pull()
            except StoreInUse:
                self._unlock()
                raise
            except Exception as exc:  # never leave the lock (or the claim) held for a network error
                self._give_back_claim(copied=True)  # this run wrote nothing
                self._unlock()
                raise SynthpipeError(f"could not read the store at {self.mirror.display_url}: "
                                     f"{type(exc).__name__}: {exc}") from exc
            self._records = None

    def new_run(self) -> RunDirectory:
        return RunDirectory.create_in(self.root / "runs")

    def close(self) -> None:
        """Write out, copy to the remote, unlock: the lock is given back whatever fails."""
        copied = False
        try:
            try:
                self.flush()
            finally:
                try:
                    self.segments.close()
                finally:
                    self.journal.close()
            if self.mirror is not None and self._lock is not None:
                copied = self.mirror.push()
        finally:
            self._give_back_claim(copied)
            self._unlock()

    def _give_back_claim(self, copied: bool) -> None:
        if self.mirror is not None:
            try:
                self.mirror.release(copied)
            except Exception as exc:  # it lapses on its own
                logger.warning("synthpipe: could not give up the claim on %s (%s)", self.mirror.display_url, exc)

    def _unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def flush(self) -> None:
        """Hand what was stored so far to the kernel: the batches' bytes first, then the journal
        records pointing to them, in one write. The executor calls it before anything that
        follows from those batches leaves the coordinator (work for the next steps, leaf rows),
        once for all the batches it read in one round."""
        if self._pending:
            self.segments.flush()
            self.journal.append_many(self._pending)
            self._pending.clear()

    def sync(self) -> None:
        """Make what was written so far survive a power loss (a killed process needs no sync)."""
        if self.mirror is not None and self.mirror.lease.lost:
            raise StoreInUse(self.mirror.lease.lost)
        self.flush()
        self.segments.sync()
        self.journal.sync()
        if self.mirror is not None:
            self.mirror.push_soon()

    # -- reading what is there ------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        self.flush()
        if self._records is None:
            self._records = self.journal.read()
        return self._records

    def finished_batches(self, signatures: dict[str, str]) -> dict[str, dict[int, StoredBatch]]:
        """Per step, the finished batches stored under its current signature."""
        found: dict[tuple[str, str], dict[int, StoredBatch]] = {}
        for record in self.records():
            kind = record.get("t")
            try:
                key = (record["step"], record["sig"])
                if kind == "batch":
                    found.setdefault(key, {})[int(record["seq"])] = StoredBatch(
                        int(record["seq"]), record["key"], int(record["off"]), int(record["len"]),
                        int(record["rows"]), bool(record.get("last", False)), int(record.get("failed", 0)),
                        str(record.get("run", "")), record.get("in"), record.get("crc"),
                        tuple(int(i) for i in record.get("fa", ())),
                        tuple(int(i) for i in record["src"]) if "src" in record else None,
                        tuple(str(s) for s in record["route"]) if "route" in record else None,
                    )
                elif kind == "invalidate":
                    found.pop(key, None)
            except (KeyError, TypeError, ValueError):
                continue  # a damaged record is no record
        result: dict[str, dict[int, StoredBatch]] = {}
        sizes: dict[str, int] = {}
        for step, signature in signatures.items():
            batches = found.get((step, signature), {})
            for b in batches.values():
                if b.key not in sizes:
                    sizes[b.key] = self.segments.size(b.key)
            # a record whose bytes never reached the disk (a power cut) is no record
            result[step] = {seq: b for seq, b in batches.items() if b.offset + b.length <= sizes[b.key]}
        return result

    def completed_run(self, pipeline_signature: str) -> tuple[Path, dict[str, list[str]]] | None:
        """The latest run that finished this very pipeline, if its result files are all there."""
        for record in reversed(self.records()):
            if record.get("t") == "invalidate":
                return None
            if record.get("t") == "complete" and record.get("sig") == pipeline_signature:
                run_dir = self.root / "runs" / str(record.get("run"))
                leaves = record.get("leaves") or {}
                needed = [*(f for files in leaves.values() for f in files), "failed_rows.jsonl"]
                if all((run_dir / f).exists() for f in needed):
                    return run_dir, leaves
                return None
        return None

    def read_batch(self, batch: StoredBatch) -> list[dict[str, Any]]:
        return self.segments.read(batch.key, batch.offset, batch.length, batch.crc)

    def failed_rows(
        self, stored: dict[str, dict[int, StoredBatch]] | None, signatures: dict[str, str]
    ) -> list[dict[str, Any]]:
        """Failed rows of the finished batches that make up the current result."""
        if not self.failed_rows_path.exists() or self.failed_rows_path.stat().st_size == 0:
            return []
        if stored is None:
            stored = self.finished_batches(signatures)
        keep = []
        seen: set[tuple[Any, ...]] = set()  # a leaf row set aside again when its batch is replayed
        for entry in read_failed_rows(self.failed_rows_path):
            batch = stored.get(entry.get("step", ""), {}).get(entry.get("batch", -1))
            where = tuple(entry.get(k) for k in ("step", "batch", "row", "input_index", "run"))
            if (batch is not None and entry.get("sig") == signatures.get(entry["step"])
                    and entry.get("run") == batch.run and where not in seen):
                seen.add(where)
                keep.append(entry)
        keep.sort(key=lambda e: (list(signatures).index(e["step"]), e["row"], e.get("input_index", 0)))
        return keep

    # -- writing --------------------------------------------------------------------------

    def invalidate(self, step: str, signature: str) -> None:
        self._pending.append({"t": "invalidate", "step": step, "sig": signature})
        self.flush()
        self._records = None

    def persist(self, step: str, signature: str, seq: int, data: bytes, rows: int, last: bool,
                failed: int, run: str, inputs: int = 0, failed_at: tuple[int, ...] = (),
                sources: tuple[int, ...] | None = None, routed_to: tuple[str, ...] | None = None,
                crc: int | None = None) -> None:
        """Store a finished batch, then journal it (at the next ``flush``, after its bytes): the
        record never points to missing data (and one whose bytes a power cut lost is found out
        by its size and ignored). ``crc``: of ``data``, where the worker that made it said."""
        key, offset, length = self.segments.append(step, signature, data)
        self._records = None
        record = {"t": "batch", "step": step, "sig": signature, "seq": seq, "key": key, "off": offset,
                  "len": length, "crc": zlib.crc32(data) if crc is None else crc, "rows": rows, "in": inputs,
                  "last": last, "failed": failed, "run": run}
        if failed_at and len(failed_at) < inputs:  # all failed needs no list
            record["fa"] = list(failed_at)
        if sources is not None and list(sources) != [i for i in range(inputs) if i not in set(failed_at)]:
            record["src"] = list(sources)  # only where rows do not simply follow their inputs
        if routed_to is not None:  # a routing step's decision, durable with the batch it routes
            record["route"] = list(routed_to)
        self._pending.append(record)

    def record_retry_pass(self, step: str, signature: str, attempt: int) -> None:
        """A retry pass of ``step``'s failed rows was merged into the result."""
        self._pending.append({"t": "retried", "step": step, "sig": signature, "attempt": attempt})
        self.flush()
        self._records = None

    def retry_passes(self, signatures: dict[str, str]) -> list[tuple[str, int]]:
        """The retry passes done for steps as they are now, in the order they were done."""
        passes = []
        for record in self.records():
            if record.get("t") == "invalidate" and record.get("sig") == signatures.get(record.get("step", "")):
                passes = [(s, a) for s, a in passes if s != record.get("step")]
            elif record.get("t") == "retried" and signatures.get(record.get("step", "")) == record.get("sig"):
                done = (str(record["step"]), int(record.get("attempt", 1)))
                if done not in passes:
                    passes.append(done)
        return passes

    def mark_stage_done(self, batches: dict[str, tuple[str, int]]) -> None:
        """A load stage finished: its steps (name -> (signature, batches stored)) hold all their
        batches. A later run need not start their workers (``stage_done``)."""
        self._pending.append({"t": "stage", "steps": {n: list(v) for n, v in batches.items()}})
        self.flush()
        self._records = None

    def stage_done(self, batches: dict[str, tuple[str, int]]) -> bool:
        """A stage of these steps finished, and what it stored is all still there."""
        wanted = {n: list(v) for n, v in batches.items()}
        return any(r.get("t") == "stage" and r.get("steps") == wanted for r in self.records())

    def mark_complete(self, pipeline_signature: str, run: str, leaves: dict[str, list[str]]) -> None:
        self._pending.append({"t": "complete", "sig": pipeline_signature, "run": run, "leaves": leaves})
        self.flush()
        self._records = None
        self.sync()
