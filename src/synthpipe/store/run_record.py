"""What one run did, kept beside its log: ``runs/<run id>/run.json`` (the run's story so far,
rewritten whole) and ``runs/<run id>/batches.jsonl`` (one line per batch the run computed:
step, replica, when it was sent and stored, rows in/out/failed, tokens). ``synthpipe runs``,
``failures`` and ``report`` read these; the journal stays the truth for resuming."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from synthpipe.store.journal import Journal
from synthpipe.store.usage import UsageTally, totals

RUN_FILE = "run.json"
BATCHES_FILE = "batches.jsonl"
LINES_EVERY_SECONDS = 0.5
"""Batch lines are written at most this often (and at the run's end): they tell the run's story,
the journal is what resuming trusts, so they need not cost a write in every round of the loop."""


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class RunRecorder:
    """The coordinator's recorder for one run. Every method is cheap and never raises into
    the run: a record that cannot be written is lost, the run is not."""

    def __init__(self, run_dir: Path, pipeline: str, store: Path, steps: dict[str, dict[str, Any]],
                 tally: UsageTally, durable: bool = True) -> None:
        self.path = run_dir
        self.tally = tally
        self.started = time.time()
        self._sent: dict[tuple[str, int], tuple[int, float]] = {}
        self._batches = Journal(run_dir / BATCHES_FILE)
        self._unwritten: list[dict[str, Any]] = []  # batch lines, written at the next flush
        self._written = float("-inf")  # when batch lines were last written (monotonic)
        self.info: dict[str, Any] = {
            "run": run_dir.name, "pipeline": pipeline, "store": str(store), "status": "running",
            "durable": durable, "pid": os.getpid(), "started": _iso(self.started), "started_ts": self.started,
            "steps": steps, "rows": {}, "failed_rows": 0, "usage": [], "budget": None,
        }
        self.write()

    def sent(self, step: str, replica: int, seq: int) -> None:
        self._sent[(step, seq)] = (replica, time.time())

    def stored(self, step: str, seq: int, rows: list[dict[str, Any]], inputs: int, failed: int,
               with_model: bool = True) -> bool:
        """Record a stored batch; True when its rows used a model. ``with_model``: whether the
        step has one, so its rows are worth reading for token statistics."""
        replica, start = self._sent.pop((step, seq), (-1, None))
        usage = self.tally.add_rows(step, rows) if with_model else {}
        record = {"step": step, "seq": seq, "replica": replica, "start": start, "end": time.time(),
                  "rows": len(rows), "in": inputs, "failed": failed}
        if usage:
            record["usage"] = usage
        self._unwritten.append(record)
        return bool(usage)

    def flush(self, now: bool = False) -> None:
        """Write the batch lines recorded since the last write, in one write, if the last was
        ``LINES_EVERY_SECONDS`` ago (or ``now``): the executor asks once per round of its loop."""
        if self._unwritten and (now or time.monotonic() - self._written >= LINES_EVERY_SECONDS):
            self._written = time.monotonic()
            lines, self._unwritten = self._unwritten, []
            try:
                self._batches.append_many(lines)
            except OSError:
                pass

    def finish(self, status: str, rows: dict[str, int], failed_rows: int, **more: Any) -> None:
        ended = time.time()
        self.info.update(status=status, rows=rows, failed_rows=failed_rows, ended=_iso(ended), ended_ts=ended,
                         seconds=round(ended - self.started, 3), **more)
        self.flush(now=True)
        self.write()
        self._batches.close()

    def write(self) -> None:
        self.info["usage"] = self.tally.to_json()
        self.info.update(totals(self.info["usage"]))
        tmp = self.path / (RUN_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(self.info, indent=1, default=repr), encoding="utf-8")
            os.replace(tmp, self.path / RUN_FILE)
        except OSError:
            pass


# -- reading ----------------------------------------------------------------------------------


def read_run(run_dir: Path) -> dict[str, Any]:
    """A run's record; a run without one (older, or its coordinator was killed before it began)
    is described from its folder."""
    try:
        info = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {"run": run_dir.name, "status": "unknown", "rows": {}, "failed_rows": 0, "usage": []}
        info.update(totals([]))
    if info.get("status") == "running" and not _alive(info.get("pid")):
        info["status"] = "killed"  # its coordinator is gone without writing how it ended
    info.setdefault("pipeline", run_dir.parent.parent.name.rsplit("-", 1)[0])
    info["path"] = str(run_dir)
    info["size"] = sum(f.stat().st_size for f in run_dir.rglob("*") if f.is_file())
    return info


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_batches(run_dir: Path) -> list[dict[str, Any]]:
    return Journal(run_dir / BATCHES_FILE).read()


def find_runs(cache_root: Path) -> list[Path]:
    """Every run folder under a cache root (``<root>/<pipeline>-<sig>/runs/<id>``), oldest first."""
    if not cache_root.is_dir():
        return []
    runs = [p for p in cache_root.glob("*/runs/*") if p.is_dir()]
    return sorted(runs, key=lambda p: p.name)


def find_run(cache_root: Path, ref: str) -> Path:
    """A run by its folder, its id, a unique prefix of its id, or ``last``/``latest``."""
    path = Path(ref).expanduser()
    if path.is_dir() and (path / "data").is_dir():
        return path
    runs = find_runs(cache_root)
    if ref in ("last", "latest"):
        if not runs:
            raise LookupError(f"there are no runs under {cache_root}")
        return max(runs, key=lambda p: p.stat().st_mtime)
    matches = [p for p in runs if p.name == ref] or [p for p in runs if p.name.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise LookupError(f"no run {ref!r} under {cache_root} (see `synthpipe runs`)")
    raise LookupError(f"{ref!r} names {len(matches)} runs; give more of the id: "
                      + ", ".join(p.name for p in matches[:5]))


def run_failures(run_dir: Path) -> list[dict[str, Any]]:
    """The failed rows of a run: its own ledger once it finished, else the store's entries it wrote."""
    from synthpipe.store.failed_rows import read_failed_rows

    own = run_dir / "failed_rows.jsonl"
    if own.exists():
        return read_failed_rows(own)
    store_ledger = run_dir.parent.parent / "failed_rows.jsonl"
    return [e for e in read_failed_rows(store_ledger) if e.get("run") == run_dir.name]


def failure_groups(run_dir: Path) -> list[dict[str, Any]]:
    """The ledger grouped by step and error type: how many rows, which, the distinct messages
    (up to 5), one traceback, one input row."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for entry in run_failures(run_dir):
        key = (str(entry.get("step")), str(entry.get("error_type")))
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"step": key[0], "error_type": key[1], "message": str(entry.get("message")),
                                   "messages": [], "count": 0, "rows": [], "traceback": entry.get("traceback") or "",
                                   "example_row": entry.get("data")}
        group["count"] += 1
        if len(group["rows"]) < 20:
            group["rows"].append(entry.get("row"))
        message = str(entry.get("message"))
        if message not in group["messages"] and len(group["messages"]) < 5:
            group["messages"].append(message)
    return sorted(groups.values(), key=lambda g: (g["step"], -g["count"]))
