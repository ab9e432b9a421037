"""The retry vocabulary every HTTP backend shares: which answers are transient, how long to
wait (exponential backoff with full jitter, or the server's ``Retry-After``), the error a
request that failed for good raises, and one bounded retry loop for SDK-based backends."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from synthpipe.errors import SynthpipeError

T = TypeVar("T")

#: Statuses retried besides 5xx.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
#: Statuses that mean "the endpoint is overloaded": they shrink the concurrency limit.
OVERLOAD_STATUSES = frozenset({429, 503})


@dataclass
class RetryPolicy:
    """How failed requests are retried.

    ``max_retries`` retries follow the first attempt. The delay before retry ``k`` (from 1) is
    uniform in ``[0, min(max_delay, base_delay * 2**(k-1))]`` (full jitter), or, when the server
    sent ``Retry-After``, that value (at most ``max_retry_after``) plus up to 10 %. ``timeout`` bounds
    each attempt (connect, send, wait and read), in seconds.
    """

    max_retries: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float = 120.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if self.base_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("delays must be >= 0")

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if retry_after is not None:
            wait = min(max(retry_after, 0.0), self.max_retry_after)
            return wait + random.uniform(0.0, wait * 0.1)
        cap = min(self.max_delay, self.base_delay * (2.0 ** min(retry - 1, 62)))
        return random.uniform(0.0, cap)


class RequestFailed(SynthpipeError):
    """An HTTP request to an LLM endpoint failed for good.

    ``status`` is the HTTP status of the last attempt (None when there was no answer: timeout,
    connection error); ``kind`` is ``"http"``, ``"timeout"``, ``"connection"``, ``"decode"`` or
    ``"client"``; ``retryable`` says whether the failure was transient (the retries ran out)
    or not; ``attempts`` counts the requests sent; ``body`` is a short excerpt of the answer.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        retryable: bool = False,
        attempts: int = 1,
        body: str | None = None,
        url: str | None = None,
        kind: str = "http",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.attempts = attempts
        self.body = body
        self.url = url
        self.kind = kind
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.message, self.status, self.retryable, self.attempts, self.body, self.url, self.kind)
        return (type(self), (*args, self.retry_after))

    def __str__(self) -> str:
        return self.message


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def call_with_retries(call: Callable[[], Awaitable[T]],
                            classify: Callable[[BaseException, int], tuple[RequestFailed | None, float | None]],
                            policy: RetryPolicy) -> T:
    """``await call()`` until it succeeds, at most ``policy.max_retries`` retries. ``classify``
    turns a failed attempt (and its number, from 1) into ``(RequestFailed, retry_after)``, or
    ``(None, None)`` for an error that is not about the request: that one is raised as it is."""
    attempt = 0
    while True:  # bounded: at most max_retries + 1 attempts
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            failure, retry_after = classify(exc, attempt)
            if failure is None:
                raise
            if not failure.retryable or attempt > policy.max_retries:
                raise failure from None
        await asyncio.sleep(policy.delay(attempt, retry_after))
