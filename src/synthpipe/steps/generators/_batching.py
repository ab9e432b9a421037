"""Turn a stream of rows into ``(batch, is_last)`` pairs without holding more than two batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Optional


def batched(rows: Iterable[dict[str, Any]], size: int, limit: Optional[int] = None
            ) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """Batches of ``size`` from ``rows`` (at most ``limit`` rows), the last flagged; an empty
    stream yields one empty last batch so the pipeline still finishes."""
    pending: list[dict[str, Any]] | None = None
    current: list[dict[str, Any]] = []
    count = 0
    for row in rows:
        if limit is not None and count >= limit:
            break
        current.append(row)
        count += 1
        if len(current) == size:
            if pending is not None:
                yield pending, False
            pending, current = current, []
    if pending is not None and current:
        yield pending, False
        pending = None
    yield (current if pending is None else pending), True
