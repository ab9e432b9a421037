"""Live progress with tokens and cost: a rich table when stderr is a terminal, else one plain
summary line every ``SYNTHPIPE_PROGRESS_EVERY`` seconds (30 by default), never one per batch.

Rows expected are known where a generator says how many rows it holds (``LoadDataFromDicts``
and the like, any generator with a ``data`` list); a step after it is expected to see as many,
which holds for the row-by-row steps most pipelines are made of (shown as ``~``)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from synthpipe.runtime.scheduler import StepStats
from synthpipe.store.usage import UsageTally
from synthpipe.ui.progress import Progress

logger = logging.getLogger("synthpipe")


def expected_rows(order: list[str], steps: dict[str, Any], predecessors: dict[str, list[str]]) -> dict[str, int]:
    """Rows each step is expected to take in (generators: to give out), where a generator knows."""
    expected: dict[str, int] = {}
    for name in order:
        step = steps[name]
        if step.step_kind == "generator":
            data = getattr(step, "data", None)
            if isinstance(data, list):
                expected[name] = len(data)
        else:
            preds = predecessors.get(name, [])
            if preds and all(p in expected for p in preds) and step.step_kind == "normal":
                expected[name] = expected[preds[0]]
    return expected


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class LiveProgress(Progress):
    def __init__(self, stats: dict[str, StepStats], tally: UsageTally, expected: dict[str, int],
                 enabled: bool | None = None, plain_every: float | None = None,
                 activity: Callable[[], dict[str, dict[str, int]]] = dict) -> None:
        self.tally = tally
        self.activity = activity
        self.expected = expected
        wanted = os.environ.get("SYNTHPIPE_PROGRESS", "1") != "0"
        terminal = sys.stderr.isatty()
        if enabled is None:
            enabled = terminal and wanted
        if plain_every is None:
            plain_every = float(os.environ.get("SYNTHPIPE_PROGRESS_EVERY", "30"))
        self._plain_every = plain_every if (wanted and not enabled) else None
        self._last_plain = time.monotonic()
        super().__init__(stats, enabled)

    # -- numbers --------------------------------------------------------------------------------

    def _done(self, name: str, st: StepStats) -> int:
        return st.rows_out if st.rows_in == 0 and st.rows_out else st.rows_in

    def _step_eta(self, name: str, st: StepStats, elapsed: float) -> float | None:
        total = self.expected.get(name)
        done = self._done(name, st)
        if total is None or elapsed <= 0 or done == 0:
            return None
        return max(0.0, (total - done) / (done / elapsed))

    def _model_lines(self, elapsed: float) -> list[tuple[str, str, str, str, str]]:
        rows = []
        total_expected = max(self.expected.values(), default=0)
        for entry in self.tally.entries.values():
            tokens = entry.input_tokens + entry.output_tokens
            paid_in = entry.paid_input if entry.paid_input is not None else entry.input_tokens
            paid_out = entry.paid_output if entry.paid_output is not None else entry.output_tokens
            rate = f"{paid_in / elapsed:,.0f} in / {paid_out / elapsed:,.0f} out tok/s" if elapsed > 0 else "-"
            cost = entry.cost(self.tally.prices)
            if cost is None:
                money = "unknown (no price)"
            else:
                money = f"{cost:.4f}"
                if entry.rows and total_expected > entry.rows:
                    money += f" (~{cost / entry.rows * total_expected:.4f} projected)"
            rows.append((entry.step, entry.model, f"{entry.requests:,}", f"{tokens:,} ({rate})", money))
        return rows

    # -- the terminal ---------------------------------------------------------------------------

    def _table(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        elapsed = time.monotonic() - self.started
        table = Table(title=f"synthpipe — {elapsed:,.1f}s", title_justify="left")
        for column in ("step", "rows done", "rate", "failed", "ETA"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for name, st in self.stats.items():
            done = self._done(name, st)
            total = self.expected.get(name)
            shown = f"{done:,} / {'~' if st.rows_in else ''}{total:,}" if total is not None else f"{done:,}"
            table.add_row(name, shown, f"{st.rows_out / elapsed:,.0f} rows/s" if elapsed > 0 else "-",
                          f"{st.rows_failed:,}" if st.rows_failed else "", _eta(self._step_eta(name, st, elapsed)))
        models = self._model_lines(elapsed)
        activity = self.activity()
        if not models and not activity:
            return table
        parts = [table]
        if activity:
            requests = Table(title="LLM requests", title_justify="left")
            for column in ("model", "in flight", "sent", "retries", "429s", "failed"):
                requests.add_column(column, justify="left" if column == "model" else "right")
            for model, a in activity.items():
                requests.add_row(model, f"{a['in_flight']:,}", f"{a['requests']:,}", f"{a['retries']:,}",
                                 f"{a['http_429']:,}", f"{a['failed']:,}")
            parts.append(requests)
        if not models:
            return Group(*parts)
        llms = Table(title="LLMs", title_justify="left")
        for column in ("step", "model", "answers paid", "tokens", "cost so far"):
            llms.add_column(column, justify="left" if column in ("step", "model") else "right")
        for row in models:
            llms.add_row(*row)
        return Group(*parts, llms)

    # -- a log file, CI ---------------------------------------------------------------------------

    def plain_line(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = []
        for name, st in self.stats.items():
            total = self.expected.get(name)
            part = f"{name} {self._done(name, st):,}" + (f"/{total:,}" if total is not None else "")
            if st.rows_failed:
                part += f" ({st.rows_failed:,} failed)"
            parts.append(part)
        line = f"synthpipe: {elapsed:,.0f}s: " + ", ".join(parts)
        tokens = sum(e.input_tokens + e.output_tokens for e in self.tally.entries.values())
        if tokens:
            cost, complete = self.tally.cost()
            line += f"; {tokens:,} tokens, cost {cost:.4f}" + ("" if complete else " + unknown")
        for model, a in self.activity().items():
            line += (f"; {model}: {a['in_flight']:,} in flight, {a['retries']:,} retries, {a['http_429']:,}×429, "
                     f"{a['failed']:,} failed")
        return line

    def tick(self) -> None:
        super().tick()
        if self._plain_every is not None and time.monotonic() - self._last_plain >= self._plain_every:
            self._last_plain = time.monotonic()
            logger.info("%s", self.plain_line())
