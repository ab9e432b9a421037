"""``synthpipe runs`` and ``synthpipe failures``: what the run store holds, read from its files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from synthpipe.store.run_dir import cache_location, default_cache_root
from synthpipe.store.run_record import find_runs, read_run

TRUNCATE = 300


def cache_root(given: str | None) -> Path:
    """The local cache folder runs are read from (a remote store is read from its local copy)."""
    if given:
        return Path(given).expanduser()
    where = cache_location()
    return where if isinstance(where, Path) else default_cache_root()


def size_text(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{size} B"


def cost_text(cost: Any) -> str:
    return "unknown" if cost is None else f"{cost:.4f}"


def list_runs(root: Path) -> list[dict[str, Any]]:
    return [read_run(path) for path in find_runs(root)]


def runs_table(runs: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title=f"{len(runs)} run(s)", title_justify="left")
    for column in ("run", "pipeline", "status", "rows", "failed", "tokens", "cost", "size", "when"):
        table.add_column(column, justify="right" if column in ("rows", "failed", "tokens", "size") else "left",
                         overflow="fold")
    for run in runs:
        rows = sum(int(v) for v in (run.get("rows") or {}).values())
        when = run.get("started") or time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                   time.gmtime(Path(run["path"]).stat().st_mtime))
        table.add_row(run["run"], str(run.get("pipeline")), str(run.get("status")), f"{rows:,}",
                      f"{int(run.get('failed_rows') or 0):,}", f"{int(run.get('tokens') or 0):,}",
                      cost_text(run.get("cost")) if run.get("tokens") else "-", size_text(int(run["size"])), when)
    return table


def truncated(value: Any, limit: int = TRUNCATE) -> str:
    text = json.dumps(value, default=repr, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text):,} characters)"


def failures_text(run_dir: Path, groups: list[dict[str, Any]]) -> str:
    if not groups:
        return f"run {run_dir.name}: no failed rows"
    total = sum(g["count"] for g in groups)
    lines = [f"run {run_dir.name}: {total:,} failed row(s), {len(groups)} distinct error(s)"]
    for g in groups:
        more = "" if g["count"] <= len(g["rows"]) else ", …"
        lines.append("")
        lines.append(f"step '{g['step']}': {g['count']:,} × {g['error_type']}: {g['message']}")
        lines.extend(f"  also: {m}" for m in g["messages"][1:])
        lines.append(f"  rows {', '.join(str(r) for r in g['rows'])}{more}")
        lines.append(f"  input row: {truncated(g['example_row'])}")
        if g["traceback"]:
            lines.extend("  " + line for line in g["traceback"].rstrip().splitlines())
    lines.append("")
    lines.append("Retry them: synthpipe run FILE --retry-failed (or pipeline.run(retry_failed=True)).")
    return "\n".join(lines)
