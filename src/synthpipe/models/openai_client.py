"""A lean asyncio client for the OpenAI HTTP wire format (chat completions, completions, embeddings).

It is the transport of synthpipe's OpenAI-compatible LLMs: one ``aiohttp.ClientSession`` per
client (created lazily in the running loop, keep-alive connections, pool sized to the concurrency
limit), JSON in and out with no model classes on the hot path, and flow control from
:mod:`synthpipe.models.limits`:

* an AIMD concurrency limit: 429/503 answers halve it, successes grow it back;
* optional requests-per-minute / tokens-per-minute budgets;
* ``Retry-After`` / ``retry-after-ms`` pause the whole endpoint, not just the request that got it.

Transient failures are retried with exponential backoff and full jitter: HTTP 408, 409, 429 and
5xx, connection errors (refused, reset, server disconnected, truncated body), an unparsable
success body, and the per-attempt timeout. Any other 4xx fails at once. When retries run out the
last failure is raised as :class:`RequestFailed`.

The API key is sent only in the ``Authorization`` header; it never appears in ``repr()`` or in an
error message (any echo of it in a server's error body is replaced by ``***``).

aiohttp is imported only when a client first sends a request.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from synthpipe.models import telemetry, transport_errors
from synthpipe.models.http.redaction import SENSITIVE_HEADERS as _SENSITIVE_HEADERS
from synthpipe.models.http.redaction import safe_url as _safe_url
from synthpipe.models.http.retry import (  # noqa: F401 (public here too: the old import path)
    OVERLOAD_STATUSES,
    RETRYABLE_STATUSES,
    RequestFailed,
    RetryPolicy,
    parse_retry_after,
)
from synthpipe.models.limits import EndpointLimits

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp

try:  # optional, faster
    import orjson as _orjson  # type: ignore[import-not-found]

    _loads = _orjson.loads
    _dumps = _orjson.dumps
except ImportError:  # pragma: no cover - depends on the environment
    _loads = json.loads

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


_EXCERPT_CHARS = 300


def _excerpt(raw: bytes) -> str:
    """The error message of an OpenAI-style error body, else the start of the body."""
    text = raw[: 4 * _EXCERPT_CHARS].decode("utf-8", "replace")
    try:
        data = _loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
            if err.get("code") or err.get("type"):
                text += f" (code={err.get('code')!r}, type={err.get('type')!r})"
        elif isinstance(err, str):
            text = err
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 3] + "..."


def _text_len(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p.get("text", "")) for p in content if isinstance(p, dict))
    return 0


def estimate_tokens(payload: Mapping[str, Any], default_completion_tokens: int = 256) -> int:
    """A rough token count for a request (4 characters a token, plus the completion allowance)."""
    chars = 0
    for message in payload.get("messages") or ():
        if isinstance(message, Mapping):
            chars += _text_len(message.get("content"))
    prompt = payload.get("prompt") or payload.get("input")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(p) if isinstance(p, str) else 4 * len(p) if isinstance(p, list) else 4 for p in prompt)
    if "input" in payload:  # embeddings: no completion
        return chars // 4 + 1
    completion = payload.get("max_completion_tokens") or payload.get("max_tokens") or default_completion_tokens
    return chars // 4 + 1 + int(completion) * int(payload.get("n") or 1)


async def _close_at_loop_shutdown(session: aiohttp.ClientSession) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        if not session.closed:
            await session.close()


class OpenAICompatibleClient:
    """Sends OpenAI-format requests to one endpoint with flow control and retries.

    ``base_url`` ends before the route, e.g. ``https://api.openai.com/v1``. The client belongs to
    one event loop at a time; it may be used again from a new loop after the first is closed
    (``asyncio.run`` twice), its connections are then dropped and opened again.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        max_concurrency: int = 64,
        min_concurrency: int = 1,
        retry: RetryPolicy | None = None,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        headers: Mapping[str, str] | None = None,
        default_completion_tokens: int = 256,
    ) -> None:
        if not base_url:
            raise ValueError("base_url is required")
        self.base_url = base_url.rstrip("/")
        self._display_url = _safe_url(self.base_url)
        self.retry = retry or RetryPolicy()
        self.max_concurrency = int(max_concurrency)
        self.limits = EndpointLimits(
            max_concurrency,
            min_concurrency,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            max_pause=max(self.retry.max_retry_after, 1.0),
        )
        self.default_completion_tokens = default_completion_tokens
        self._headers: dict[str, str] = {"Content-Type": "application/json", "Accept": "application/json"}
        self._secrets: list[str] = []
        if headers:
            for name, value in headers.items():
                self._headers[name] = str(value)
                if name.lower() in _SENSITIVE_HEADERS:
                    self._add_secret(str(value))
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
            self._add_secret(api_key)
        netloc = urlsplit(self.base_url).netloc
        if "@" in netloc:
            self._add_secret(netloc.rsplit("@", 1)[0])
            if api_key:  # aiohttp would refuse every request; say so once, now
                raise ValueError(f"base_url {self._display_url} carries a user and password, and an API key is "
                                 "given too: give one of them")
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncGenerator[None, None] | None = None
        self._closed = False
        self.stats: Counter[str] = Counter()

    def _add_secret(self, value: str) -> None:
        for secret in {value, value.removeprefix("Bearer ").strip()}:
            if len(secret) >= 4 and secret not in self._secrets:
                self._secrets.append(secret)
        self._secrets.sort(key=len, reverse=True)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def __repr__(self) -> str:
        key = "***" if "Authorization" in self._headers else None
        return (
            f"{type(self).__name__}(base_url={self._display_url!r}, api_key={key!r}, "
            f"limit={self.limits.concurrency.limit}/{self.max_concurrency})"
        )

    # -- session ---------------------------------------------------------------------

    async def _open_session(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        """The session for the running loop: created on first use, and again on a new loop."""
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        if self._session is not None:
            self._abandon()
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=self.max_concurrency,
            limit_per_host=0,
            keepalive_timeout=30.0,
            ttl_dns_cache=300,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self.retry.timeout),
            raise_for_status=False,
            trust_env=False,
        )
        # An async generator suspended in its try: the loop closes it in shutdown_asyncgens()
        # (asyncio.run does that), and so closes the session before the loop is gone.
        closer = _close_at_loop_shutdown(session)
        await closer.__anext__()
        self._session, self._session_loop, self._closer = session, loop, closer
        return session

    def _abandon(self) -> None:
        """Forget a session whose loop is not the running one (it cannot be awaited from here)."""
        session, self._session, self._session_loop, self._closer = self._session, None, None, None
        connector = session.connector if session is not None else None
        if connector is not None and not connector.closed:
            try:
                connector._close()  # the synchronous part of close(); best effort on a foreign loop
            except Exception:  # pragma: no cover
                pass

    async def close(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        self._closed = True
        if self._session is None:
            return
        if self._session_loop is asyncio.get_running_loop():
            closer, session = self._closer, self._session
            self._session = self._session_loop = self._closer = None
            if closer is not None:
                await closer.aclose()
            if session is not None and not session.closed:
                await session.close()
        else:
            self._abandon()

    async def __aenter__(self) -> OpenAICompatibleClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests --------------------------------------------------------------------

    async def chat(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``POST {base_url}/chat/completions``; returns the parsed JSON answer."""
        return await self.post("/chat/completions", payload)

    async def completions(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``POST {base_url}/completions`` (legacy text completions)."""
        return await self.post("/completions", payload)

    async def embeddings(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``POST {base_url}/embeddings``."""
        return await self.post("/embeddings", payload)

    async def post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """POST ``payload`` as JSON to ``base_url + path`` with limits and retries."""
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._session
        if session is None or self._session_loop is not loop or session.closed:
            session = await self._open_session(loop)
        url = self.base_url + path
        body = _dumps(payload)
        limits = self.limits
        concurrency, gate, budget = limits.concurrency, limits.gate, limits.budget
        tokens = estimate_tokens(payload, self.default_completion_tokens) if budget.tokens_per_minute else 0
        policy = self.retry
        stats = self.stats
        stats["requests"] += 1
        telemetry.seen(self, payload.get("model"))
        attempts = 0
        for attempts in range(1, policy.max_retries + 2):
            if gate.paused_until > limits.clock():
                await gate.wait()
            await budget.acquire(tokens)
            await concurrency.acquire()
            started = concurrency.clock()
            status: int | None = None
            raw = b""
            retry_after: float | None = None
            failure: RequestFailed | None = None
            cause: BaseException | None = None
            answer = None
            try:
                if gate.paused_until > started:  # a pause began while we queued for a slot
                    await gate.wait()
                stats["attempts"] += 1
                async with session.post(url, data=body) as response:
                    answer = response
                    status = response.status
                    raw = await response.read()
                    if status >= 300:
                        retry_after = parse_retry_after(response.headers)
            except asyncio.TimeoutError as exc:
                cause = exc
                failure = self._failure(
                    path, f"no answer within {policy.timeout:g}s", None, True, attempts, None, "timeout", None
                )
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                cause = exc
                received = answer.content.total_bytes if answer is not None else None
                expected = answer.content_length if answer is not None else None
                detail = self._redact(transport_errors.connection_failed(exc, status, received, expected))
                ssl_problem = isinstance(exc, aiohttp.ClientSSLError)
                failure = self._failure(path, detail, None, not ssl_problem, attempts, None, "connection", None)
            except aiohttp.ClientError as exc:
                cause = exc
                detail = self._redact(f"{type(exc).__name__}: {exc}")
                failure = self._failure(path, f"request error ({detail})", None, False, attempts, None, "client", None)
            finally:
                concurrency.release()

            if failure is None:
                assert status is not None
                if 200 <= status < 300:
                    try:
                        data = _loads(raw)
                    except ValueError as exc:
                        cause = exc
                        failure = self._failure(
                            path, self._redact(transport_errors.not_json(status, raw)),
                            status, True, attempts, self._redact(_excerpt(raw)), "decode", None,
                        )  # fmt: skip
                    else:
                        concurrency.on_success()
                        if tokens:
                            usage = data.get("usage") if isinstance(data, dict) else None
                            used = usage.get("total_tokens") if isinstance(usage, dict) else None
                            if isinstance(used, int):
                                budget.adjust(tokens, used)
                        stats["succeeded"] += 1
                        telemetry.seen(self, payload.get("model"))
                        return data
                else:
                    stats[f"http_{status}"] += 1
                    if status in OVERLOAD_STATUSES:
                        concurrency.on_overload(started)
                        if retry_after is not None:
                            gate.pause_for(min(retry_after, policy.max_retry_after))
                    if tokens:
                        budget.adjust(tokens, 0)
                    retryable = status in RETRYABLE_STATUSES or status >= 500
                    excerpt = self._redact(_excerpt(raw))
                    what = self._redact(transport_errors.http_status(status, raw))
                    failure = self._failure(path, what, status, retryable, attempts, excerpt, "http", retry_after)
            else:
                stats[failure.kind] += 1

            if not failure.retryable or attempts > policy.max_retries:
                stats["failed"] += 1
                telemetry.seen(self, payload.get("model"))
                raise failure from cause
            stats["retries"] += 1
            telemetry.seen(self, payload.get("model"))
            await asyncio.sleep(policy.delay(attempts, retry_after))
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(
        self,
        path: str,
        what: str,
        status: int | None,
        retryable: bool,
        attempts: int,
        body: str | None,
        kind: str,
        retry_after: float | None,
    ) -> RequestFailed:
        tries = f"{attempts} attempt" + ("s" if attempts != 1 else "")
        verdict = "" if retryable else ", not retryable"
        url = self._display_url + path
        message = self._redact(f"POST {url}: {what} ({tries}{verdict})")
        return RequestFailed(message, status, retryable, attempts, body, url, kind, retry_after)
