"""Live per-step progress on a terminal, and the one-line summaries at the end."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from synthpipe.runtime.scheduler import StepStats


def _rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f} rows/s" if seconds > 0 else "-"


class Progress:
    """A rich table refreshed from the coordinator loop; silent when not on a terminal."""

    def __init__(self, stats: dict[str, StepStats], enabled: bool | None = None) -> None:
        self.stats = stats
        self.started = time.monotonic()
        if enabled is None:
            enabled = sys.stderr.isatty() and os.environ.get("SYNTHPIPE_PROGRESS", "1") != "0"
        self._live: Any = None
        self._last = 0.0
        if enabled:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(stderr=True), auto_refresh=False, transient=True)
            self._live.start()

    def _table(self) -> Any:
        from rich.table import Table

        elapsed = time.monotonic() - self.started
        table = Table(title=f"synthpipe — {elapsed:,.1f}s", title_justify="left")
        for column in ("step", "rows in", "rows out", "rate", "failed"):
            table.add_column(column, justify="left" if column == "step" else "right")
        for name, st in self.stats.items():
            rows_in = "" if st.rows_in == 0 and st.rows_out else f"{st.rows_in:,}"  # generators
            table.add_row(name, rows_in, f"{st.rows_out:,}", _rate(st.rows_out, elapsed),
                          f"{st.rows_failed:,}" if st.rows_failed else "")
        return table

    def tick(self) -> None:
        if self._live is None:
            return
        now = time.monotonic()
        if now - self._last >= 0.25:
            self._last = now
            self._live.update(self._table(), refresh=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def summary_lines(self) -> list[str]:
        elapsed = time.monotonic() - self.started
        lines = []
        for name, st in self.stats.items():
            failed = f", {st.rows_failed:,} failed" if st.rows_failed else ""
            source = "" if st.rows_in == 0 and st.rows_out else f"{st.rows_in:,} rows in → "
            lines.append(f"  {name}: {source}{st.rows_out:,} rows out in {st.batches:,} batches{failed}")
        lines.append(f"  total time {elapsed:,.2f}s")
        return lines
