"""``synthpipe report RUN``: one self-contained HTML page of a run (inline CSS and SVG, nothing
fetched), built only from the run's files: ``run.json``, ``batches.jsonl``, the failed-rows
ledger and the leaf datasets."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from synthpipe.store.run_record import failure_groups, read_batches, read_run

SAMPLE_ROWS = 5
CELL_CHARS = 200
COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:13px}table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.n{text-align:right}pre{background:#f7f7f7;padding:8px;font-size:11px;overflow-x:auto;max-height:300px}
.status-finished{color:#2a7}.status-failed,.status-killed{color:#c33}.status-interrupted,.status-budget{color:#c80}
svg text{font-family:system-ui,sans-serif}.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=repr, ensure_ascii=False)
    if len(text) > CELL_CHARS:
        text = text[:CELL_CHARS] + f"… ({len(text):,} chars)"
    return _e(text)


def _step_counts(batches: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for b in batches:
        c = counts.setdefault(b["step"], {"batches": 0, "rows": 0, "in": 0, "failed": 0})
        c["batches"] += 1
        c["rows"] += int(b.get("rows") or 0)
        c["in"] += int(b.get("in") or 0)
        c["failed"] += int(b.get("failed") or 0)
    return counts


def dag_svg(steps: dict[str, dict[str, Any]], counts: dict[str, dict[str, int]]) -> str:
    """Steps in layers (by longest path from a root), edges as lines, counts in each box."""
    depth: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((level(p) for p in steps[name].get("after", []) if p in steps), default=-1)
        return depth[name]

    for name in steps:
        level(name)
    layers: dict[int, list[str]] = {}
    for name in steps:
        layers.setdefault(depth[name], []).append(name)
    box_w, box_h, gap_x, gap_y = 210, 62, 50, 26
    width = max(1, len(layers)) * (box_w + gap_x)
    height = max((len(v) for v in layers.values()), default=1) * (box_h + gap_y) + gap_y
    where = {}
    for col, names in layers.items():
        for row, name in enumerate(names):
            where[name] = (20 + col * (box_w + gap_x), gap_y + row * (box_h + gap_y))
    parts = [f'<svg id="dag-svg" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
             '<path d="M0,0 L8,4 L0,8 z" fill="#888"/></marker></defs>']
    for name, info in steps.items():
        for pred in info.get("after", []):
            if pred in where:
                x1, y1 = where[pred][0] + box_w, where[pred][1] + box_h / 2
                x2, y2 = where[name][0], where[name][1] + box_h / 2
                parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#888" marker-end="url(#arrow)"/>')
    for name, (x, y) in where.items():
        c = counts.get(name, {})
        failed = c.get("failed", 0)
        parts.append(f'<g class="dag-step" data-step="{_e(name)}"><rect x="{x}" y="{y}" width="{box_w}" '
                     f'height="{box_h}" rx="6" fill="#f4f8fc" stroke="{"#c33" if failed else "#4e79a7"}"/>')
        parts.append(f'<text x="{x + 8}" y="{y + 18}" font-size="13" font-weight="bold">{_e(name)}</text>')
        cls = str(steps[name].get("class", "")).rsplit(".", 1)[-1]
        parts.append(f'<text x="{x + 8}" y="{y + 34}" font-size="11" fill="#555">{_e(cls)}</text>')
        line = f'{c.get("rows", 0):,} rows out, {c.get("batches", 0):,} batches'
        if failed:
            line += f", {failed:,} failed"
        parts.append(f'<text x="{x + 8}" y="{y + 51}" font-size="11">{_e(line)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def throughput_svg(batches: list[dict[str, Any]], t0: float, t1: float, bins: int = 40) -> str:
    """Rows/s per step over time: the rows of the batches stored in each time slice."""
    steps = list(dict.fromkeys(b["step"] for b in batches))
    span = max(t1 - t0, 1e-3)
    width = span / bins
    series = {s: [0.0] * bins for s in steps}
    for b in batches:
        i = min(bins - 1, max(0, int((float(b["end"]) - t0) / width)))
        series[b["step"]][i] += int(b.get("rows") or 0) / width
    top = max((max(v) for v in series.values()), default=0) or 1.0
    w, h, left, bottom = 900, 220, 60, 30
    parts = [f'<svg id="throughput-svg" xmlns="http://www.w3.org/2000/svg" width="{w + left + 10}" '
             f'height="{h + bottom + 10}">',
             f'<line x1="{left}" y1="{h}" x2="{left + w}" y2="{h}" stroke="#999"/>',
             f'<line x1="{left}" y1="0" x2="{left}" y2="{h}" stroke="#999"/>',
             f'<text x="4" y="12" font-size="11">{top:,.0f} rows/s</text>',
             f'<text x="{left}" y="{h + 18}" font-size="11">0 s</text>',
             f'<text x="{left + w - 40}" y="{h + 18}" font-size="11">{span:,.1f} s</text>']
    for k, step in enumerate(steps):
        points = " ".join(f"{left + (i + 0.5) * w / bins:.1f},{h - v / top * (h - 10):.1f}"
                          for i, v in enumerate(series[step]))
        parts.append(f'<polyline class="rate-line" data-step="{_e(step)}" fill="none" stroke-width="2" '
                     f'stroke="{COLORS[k % len(COLORS)]}" points="{points}"/>')
    parts.append("</svg>")
    legend = "".join(f'<span><i style="background:{COLORS[k % len(COLORS)]}"></i>{_e(s)}</span>'
                     for k, s in enumerate(steps))
    return parts[0] + "".join(parts[1:]) + f'<div class="legend">{legend}</div>'


def _stack(bars: list[tuple[float, float, dict[str, Any]]]) -> list[tuple[int, float, float, dict[str, Any]]]:
    """Overlapping batches of one worker (an async step works on several at once) in sub-rows."""
    ends: list[float] = []
    placed = []
    for start, end, b in sorted(bars, key=lambda x: x[0]):
        row = next((i for i, e in enumerate(ends) if e <= start), len(ends))
        if row == len(ends):
            ends.append(end)
        ends[row] = end
        placed.append((row, start, end, b))
    return placed


def timeline_svg(batches: list[dict[str, Any]], t0: float, t1: float) -> str:
    """One lane per worker (step, replica), one bar per batch from when it was sent to when it
    was stored; batches a worker held at once are stacked."""
    steps = list(dict.fromkeys(b["step"] for b in batches))
    lanes: dict[tuple[str, int], list[tuple[float, float, dict[str, Any]]]] = {}
    for b in batches:
        start = float(b["start"]) if b.get("start") is not None else float(b["end"])
        lanes.setdefault((b["step"], int(b.get("replica", -1))), []).append((start, float(b["end"]), b))
    order = sorted(lanes, key=lambda lane: (steps.index(lane[0]), lane[1]))
    span = max(t1 - t0, 1e-3)
    left, w = 190, 860
    parts, y = [], 5
    for lane in order:
        placed = _stack(lanes[lane])
        rows = 1 + max((p[0] for p in placed), default=0)
        bar_h = max(3, min(13, 60 // rows))
        lane_h = rows * (bar_h + 1) + 5
        label = f"{lane[0]} #{lane[1]}" if lane[1] >= 0 else lane[0]
        parts.append(f'<text x="4" y="{y + min(lane_h - 4, 12)}" font-size="11">{_e(label)}</text>')
        parts.append(f'<line x1="{left}" y1="{y + lane_h - 2}" x2="{left + w}" y2="{y + lane_h - 2}" stroke="#eee"/>')
        for row, start, end, b in placed:
            x = left + (start - t0) / span * w
            bar = max(1.5, (end - start) / span * w)
            color = "#e15759" if b.get("failed") else COLORS[steps.index(b["step"]) % len(COLORS)]
            title = (f"{b['step']} batch {b['seq']}: {b.get('rows', 0)} rows out, {b.get('failed', 0)} failed, "
                     f"{end - start:.3f}s")
            parts.append(f'<rect class="batch" x="{x:.1f}" y="{y + row * (bar_h + 1)}" width="{bar:.1f}" '
                         f'height="{bar_h}" fill="{color}"><title>{_e(title)}</title></rect>')
        y += lane_h
    height = y + 20
    return (f'<svg id="timeline-svg" xmlns="http://www.w3.org/2000/svg" width="{left + w + 10}" height="{height}">'
            + "".join(parts) + f'<text x="{left}" y="{height - 4}" font-size="11">0 s</text>'
            f'<text x="{left + w - 40}" y="{height - 4}" font-size="11">{span:,.1f} s</text></svg>')


def _table(headers: list[str], rows: list[list[Any]], table_id: str, numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{_cell(v)}</td>'
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><tr>{head}</tr>{body}</table>'


def usage_html(info: dict[str, Any]) -> str:
    usage = info.get("usage") or []
    if not usage:
        return '<p id="usage-table">No model was used in this run.</p>'

    def opt(v: Any) -> str:
        return "unknown" if v is None else (f"{v:.4f}" if isinstance(v, float) else f"{v:,}")

    rows = [[u["step"], u["model"], f'{u["input_tokens"]:,}', f'{u["output_tokens"]:,}', opt(u.get("cached_tokens")),
             opt(u.get("requests")), opt(u.get("cost"))] for u in usage]
    cost = info.get("cost")
    total = f'<p>Total: {int(info.get("tokens") or 0):,} tokens; cost {opt(cost)}' \
            f'{" (a model has no price)" if cost is None else ""}. Cached tokens were served from the response ' \
            "cache and not paid; cost counts only tokens paid for in this run, at the prices given.</p>"
    activity = info.get("llm") or {}
    requests = ""
    if activity:
        requests = _table(["model", "requests sent", "retries", "429s", "failed"],
                          [[m, f"{a.get('requests', 0):,}", f"{a.get('retries', 0):,}", f"{a.get('http_429', 0):,}",
                            f"{a.get('failed', 0):,}"] for m, a in activity.items()], "llm-requests", {1, 2, 3, 4})
    return _table(["step", "model", "input tokens", "output tokens", "cached tokens", "requests", "cost"], rows,
                  "usage-table", {2, 3, 4, 5, 6}) + total + requests


def failures_html(run_dir: Path) -> str:
    groups = failure_groups(run_dir)
    if not groups:
        return '<p id="failures-none">No failed rows.</p>'
    parts = []
    for g in groups:
        parts.append(f'<div class="failure-group"><h3>step {_e(g["step"])}: {g["count"]:,} × {_e(g["error_type"])}'
                     f'</h3><p>{"<br>".join(_e(m) for m in g["messages"])}</p>'
                     f'<p>rows {_e(", ".join(str(r) for r in g["rows"]))}</p>'
                     f'<p>input row: <code>{_cell(g["example_row"])}</code></p>'
                     f'<pre class="traceback">{_e(g["traceback"])}</pre></div>')
    return "".join(parts)


def samples_html(run_dir: Path) -> str:
    import pyarrow.parquet as pq

    parts = []
    data = run_dir / "data"
    for leaf in sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []:
        files = sorted(leaf.glob("*.parquet"))
        rows: list[dict[str, Any]] = []
        for f in files:
            rows.extend(pq.read_table(f).slice(0, SAMPLE_ROWS - len(rows)).to_pylist())
            if len(rows) >= SAMPLE_ROWS:
                break
        parts.append(f'<h3>{_e(leaf.name)}</h3>')
        if not rows:
            parts.append("<p>No rows.</p>")
            continue
        columns = [k for k in dict.fromkeys(k for r in rows for k in r) if not k.startswith("__synthpipe")]
        parts.append(_table(columns, [[r.get(c) for c in columns] for r in rows], f"samples-{_e(leaf.name)}"))
    return f'<div id="samples">{"".join(parts) or "<p>No leaf data.</p>"}</div>'


def render_report(run_dir: Path) -> str:
    info = read_run(run_dir)
    batches = [b for b in read_batches(run_dir) if b.get("end") is not None and b.get("step")]
    steps = info.get("steps") or {b["step"]: {"after": []} for b in batches}
    counts = _step_counts(batches)
    t0 = float(info.get("started_ts") or min((b.get("start") or b["end"] for b in batches), default=0))
    t1 = float(info.get("ended_ts") or max((b["end"] for b in batches), default=t0))
    status = str(info.get("status"))
    rows = ", ".join(f"{k}: {int(v):,}" for k, v in (info.get("rows") or {}).items()) or "none"
    sections = [
        f'<h1>synthpipe run {_e(info["run"])}</h1>',
        f'<p class="meta">pipeline <b>{_e(info.get("pipeline"))}</b> · status '
        f'<b id="run-status" class="status-{_e(status)}">{_e(status)}</b> · started {_e(info.get("started", "?"))} '
        f'· {float(info.get("seconds") or (t1 - t0)):,.2f} s · rows written {_e(rows)} · failed rows '
        f'{int(info.get("failed_rows") or 0):,}</p>',
        '<h2>Steps</h2><div id="dag">' + dag_svg(steps, counts) + "</div>",
        '<p class="meta">Counts are for the batches this run computed (batches reused from earlier runs are '
        "not computed again, so not counted here).</p>",
        '<h2>Rows per second</h2><div id="throughput">' + throughput_svg(batches, t0, t1) + "</div>",
        '<h2>Batches per worker</h2><div id="timeline">' + timeline_svg(batches, t0, t1) + "</div>",
        '<h2>Failures</h2><div id="failures">' + failures_html(run_dir) + "</div>",
        '<h2>Tokens and cost</h2><div id="usage">' + usage_html(info) + "</div>",
        "<h2>Sample rows</h2>" + samples_html(run_dir),
    ]
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<title>synthpipe run {_e(info["run"])}</title><style>{CSS}</style></head><body>'
            + "\n".join(sections) + "</body></html>")


def write_report(run_dir: Path, output: Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_report(run_dir), encoding="utf-8")
    return output
