"""Per-endpoint flow control for LLM clients: asyncio only, no threads, no polling.

Three independent pieces, combined by :class:`EndpointLimits`:

* :class:`AdaptiveConcurrency` -- an AIMD limit on requests in flight. Starts at
  ``max_concurrency``; every ``limit`` successes add one slot (never above the max); an
  overload signal (HTTP 429/503) halves it (never below the min), at most once per window, so a
  burst of 429s answering requests sent at the same moment counts as one signal.
* :class:`RateBudget` -- token buckets for requests per minute and tokens per minute. A caller
  reserves its share at once and sleeps exactly the computed delay (no lock, no polling loop);
  callers are served in arrival order, and a cancelled caller gives its reservation back.
* :class:`PauseGate` -- pauses the whole endpoint until a point in time (``Retry-After``):
  every request that passes the gate afterwards waits until then.

Every class takes an injectable ``clock`` (monotonic seconds) and, where it sleeps, an
injectable ``sleep`` coroutine, so the arithmetic is unit-testable with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]

#: Longest pause :class:`PauseGate` accepts; a longer ``Retry-After`` is clamped to this.
MAX_PAUSE_SECONDS = 300.0
# A waiter re-sleeps only when the pause was extended while it slept; this bounds that.
_MAX_GATE_ROUNDS = 64


class AdaptiveConcurrency:
    """AIMD concurrency limit: additive increase on success, multiplicative decrease on overload.

    ``async with limiter.slot(): ...`` (or ``await acquire()`` / ``release()``) admits a caller
    while ``in_flight < limit``; waiters are admitted first come, first served. Lowering the
    limit never interrupts requests already in flight: new ones wait until enough have finished.

    ``on_overload(started_at)`` halves the limit, but ignores the signal when less than
    ``window`` seconds have passed since the last cut, or when the failed request was started
    (``started_at``, on this limiter's clock) before the last cut: its answer says nothing about
    the new limit.
    """

    def __init__(
        self,
        max_concurrency: int,
        min_concurrency: int = 1,
        *,
        window: float = 0.1,
        clock: Clock = time.monotonic,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not 1 <= min_concurrency <= max_concurrency:
            raise ValueError(f"min_concurrency must be in [1, {max_concurrency}], got {min_concurrency}")
        self.max_concurrency = int(max_concurrency)
        self.min_concurrency = int(min_concurrency)
        self.window = float(window)
        self.clock = clock
        self._limit = self.max_concurrency
        self._in_flight = 0
        self._successes = 0  # successes since the limit last changed
        self._last_cut = float("-inf")
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.overloads_seen = 0
        self.cuts = 0

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def __repr__(self) -> str:
        return (
            f"AdaptiveConcurrency(limit={self._limit}, in_flight={self._in_flight}, "
            f"min={self.min_concurrency}, max={self.max_concurrency})"
        )

    async def acquire(self) -> None:
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed to us just as we were cancelled: pass it on.
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        if self._in_flight <= 0:
            raise RuntimeError("release() called more often than acquire()")
        self._in_flight -= 1
        self._wake()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def on_success(self) -> None:
        if self._limit >= self.max_concurrency:
            return
        self._successes += 1
        if self._successes >= self._limit:
            self._successes = 0
            self._limit += 1
            self._wake()

    def on_overload(self, started_at: float | None = None) -> bool:
        """Record an overload answer; returns True when it cut the limit."""
        self.overloads_seen += 1
        now = self.clock()
        if now - self._last_cut < self.window:
            return False
        if started_at is not None and started_at <= self._last_cut:
            return False
        self._last_cut = now
        self._successes = 0
        new_limit = max(self.min_concurrency, self._limit // 2)
        if new_limit == self._limit:
            return False
        self._limit = new_limit
        self.cuts += 1
        return True

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            waiter = self._waiters.popleft()
            if waiter.done():  # cancelled while queued
                continue
            self._in_flight += 1
            waiter.set_result(None)


class _Bucket:
    """A token bucket that may go negative: a reservation is taken at once, paid back over time."""

    __slots__ = ("rate", "capacity", "level", "stamp")

    def __init__(self, per_minute: float, burst_seconds: float, now: float) -> None:
        if per_minute <= 0:
            raise ValueError(f"a per-minute budget must be > 0, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def delay_for(self, amount: float) -> float:
        """Seconds until ``amount`` is covered (after a refill to now)."""
        missing = amount - self.level
        return missing / self.rate if missing > 0 else 0.0


class RateBudget:
    """Requests-per-minute and tokens-per-minute budgets (token buckets).

    Each bucket holds at most ``burst_seconds`` worth of its rate and starts full.
    ``await acquire(tokens_estimate)`` reserves one request and ``tokens_estimate`` tokens and
    sleeps until both are covered. Reservations are taken in call order, so callers are served
    first come, first served without a lock. When the real token count is known, ``adjust()``
    settles the difference. A caller cancelled while waiting gives its reservation back.
    """

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        burst_seconds: float = 10.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be > 0, got {burst_seconds}")
        self.clock = clock
        self.sleep = sleep
        now = clock()
        self._requests = _Bucket(requests_per_minute, burst_seconds, now) if requests_per_minute else None
        self._tokens = _Bucket(tokens_per_minute, burst_seconds, now) if tokens_per_minute else None
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute

    @property
    def enabled(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def __repr__(self) -> str:
        return f"RateBudget(requests_per_minute={self.requests_per_minute}, tokens_per_minute={self.tokens_per_minute})"

    def reserve(self, tokens_estimate: float = 0.0) -> float:
        """Take one request and ``tokens_estimate`` tokens now; returns the seconds to wait."""
        now = self.clock()
        delay = 0.0
        if self._requests is not None:
            self._requests.refill(now)
            delay = self._requests.delay_for(1.0)
            self._requests.level -= 1.0
        if self._tokens is not None and tokens_estimate > 0:
            self._tokens.refill(now)
            delay = max(delay, self._tokens.delay_for(tokens_estimate))
            self._tokens.level -= tokens_estimate
        return delay

    def cancel(self, tokens_estimate: float = 0.0) -> None:
        """Give back a reservation that was never used."""
        if self._requests is not None:
            self._requests.level = min(self._requests.capacity, self._requests.level + 1.0)
        if self._tokens is not None and tokens_estimate > 0:
            self._tokens.level = min(self._tokens.capacity, self._tokens.level + tokens_estimate)

    def adjust(self, tokens_estimate: float, tokens_used: float) -> None:
        """Settle a reservation once the real token count is known."""
        if self._tokens is not None:
            self._tokens.level = min(self._tokens.capacity, self._tokens.level + tokens_estimate - tokens_used)

    async def acquire(self, tokens_estimate: float = 0.0) -> None:
        if self._requests is None and self._tokens is None:
            return
        delay = self.reserve(tokens_estimate)
        if delay <= 0:
            return
        try:
            await self.sleep(delay)
        except BaseException:
            self.cancel(tokens_estimate)
            raise


class PauseGate:
    """Holds every caller of :meth:`wait` until a point in time (e.g. from ``Retry-After``).

    ``pause_for()`` / ``pause_until()`` only ever extend the pause, and clamp it to
    ``max_pause`` seconds from now, so a bogus header cannot stall the endpoint for hours.
    """

    def __init__(
        self,
        *,
        max_pause: float = MAX_PAUSE_SECONDS,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.max_pause = float(max_pause)
        self.clock = clock
        self.sleep = sleep
        self._until = float("-inf")
        self.pauses = 0

    @property
    def paused_until(self) -> float:
        return self._until

    def remaining(self) -> float:
        return max(0.0, self._until - self.clock())

    def pause_until(self, when: float) -> None:
        when = min(when, self.clock() + self.max_pause)
        if when > self._until:
            self._until = when
            self.pauses += 1

    def pause_for(self, seconds: float) -> None:
        if seconds > 0:
            self.pause_until(self.clock() + seconds)

    async def wait(self) -> None:
        for _ in range(_MAX_GATE_ROUNDS):
            left = self._until - self.clock()
            if left <= 0:
                return
            await self.sleep(left)


class EndpointLimits:
    """Everything one endpoint needs: a pause gate, optional rate budgets, an AIMD limit."""

    def __init__(
        self,
        max_concurrency: int,
        min_concurrency: int = 1,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        overload_window: float = 0.1,
        max_pause: float = MAX_PAUSE_SECONDS,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.clock = clock
        self.concurrency = AdaptiveConcurrency(max_concurrency, min_concurrency, window=overload_window, clock=clock)
        self.budget = RateBudget(requests_per_minute, tokens_per_minute, clock=clock, sleep=sleep)
        self.gate = PauseGate(max_pause=max_pause, clock=clock, sleep=sleep)

    def __repr__(self) -> str:
        return f"EndpointLimits({self.concurrency!r}, {self.budget!r}, paused_for={self.gate.remaining():.3f}s)"
