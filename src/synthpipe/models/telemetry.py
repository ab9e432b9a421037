"""What an HTTP client is doing, for the coordinator's live display: requests in flight,
retries, 429s. Sent as a worker record at most every ``EVERY`` seconds per client (and once more
shortly after the last change, or at once when no request is left in flight), never per request
while requests stream; outside a run it does nothing."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

LLM_STATS = "llm_stats"  # the record kind: {"key", "model", "url", "in_flight", counters...}
EVERY = 0.5
_last: dict[int, float] = {}
_timers: dict[int, asyncio.TimerHandle] = {}


def snapshot(client: Any, model: Any) -> dict[str, Any]:
    stats = client.stats
    return {"key": f"{os.getpid()}:{id(client)}", "model": str(model or "?"), "url": client._display_url,
            "in_flight": int(client.limits.concurrency.in_flight), "requests": int(stats["requests"]),
            "attempts": int(stats["attempts"]), "retries": int(stats["retries"]), "http_429": int(stats["http_429"]),
            "failed": int(stats["failed"]), "succeeded": int(stats["succeeded"])}


def seen(client: Any, model: Any) -> None:
    """The client's counters changed: send them if it is time, else soon."""
    from synthpipe.worker_context import publish

    now = time.monotonic()
    key = id(client)
    idle = client.limits.concurrency.in_flight == 0  # the end of a burst: its final counts go at once
    if idle or now - _last.get(key, 0.0) >= EVERY:
        _last[key] = now
        timer = _timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        publish(LLM_STATS, snapshot(client, model))
    elif key not in _timers:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return

        def later() -> None:
            _timers.pop(key, None)
            seen(client, model)

        _timers[key] = loop.call_later(EVERY, later)
