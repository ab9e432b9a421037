"""One plain sentence for each way an HTTP request to a model can fail.

What the HTTP client raises names its own internals (``ClientPayloadError: ... <ContentLengthError:
400, ...>`` for a 200 whose body was cut short); a user needs what happened: a status and the
provider's message, no answer in time, a refused connection, a connection closed part-way (how
much of the answer came), a body that is not JSON. The attempt count is added by the caller.
"""

from __future__ import annotations

import json
from typing import Any

MAX_MESSAGE = 500


def provider_message(raw: bytes) -> str:
    """The message in an error body (OpenAI's ``{"error": {"message"}}``, Anthropic's, FastAPI's
    ``detail``...), else the body's start."""
    try:
        data: Any = json.loads(raw)
    except ValueError:
        data = None
    found = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            found = error.get("message")
            kind = error.get("code") or error.get("type")
            if isinstance(found, str) and found.strip() and isinstance(kind, str) and kind not in found:
                found = f"{found} ({kind})"
        elif isinstance(error, str):
            found = error
        found = found or data.get("message") or data.get("detail")
    text = found if isinstance(found, str) and found.strip() else raw.decode("utf-8", "replace").strip()
    if not text:
        return "(no message)"
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def http_status(status: int, raw: bytes) -> str:
    return f"HTTP {status} from the server: {provider_message(raw)}"


def not_json(status: int, raw: bytes) -> str:
    start = raw[:200].decode("utf-8", "replace")
    return f"HTTP {status}, but the body is not valid JSON ({len(raw):,} bytes, starting {start!r})"


def connection_failed(exc: BaseException, status: int | None, received: int | None, expected: int | None) -> str:
    """``status``: the answer's status when its headers came (the body then did not)."""
    import aiohttp

    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS error connecting to the server ({exc})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = f"{exc.host}:{exc.port}"
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"connection refused by {where} (nothing listening there?)"
        return f"could not connect to {where} ({exc.os_error.strerror or exc.os_error})"
    if status is not None:
        got = f"{received or 0:,} of {expected:,} bytes" if expected is not None else f"{received or 0:,} bytes"
        return f"the connection closed before the answer was complete (HTTP {status}; received {got})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection closed before any answer came"
    return f"connection error ({type(exc).__name__}: {exc})".replace(": )", ")")


def httpx_connection_failed(exc: BaseException) -> str:
    """The sentence for an httpx transport error (the SDK backends' HTTP client), as for aiohttp's."""
    import re

    seen, cause = [], exc
    while cause is not None and len(seen) < 8:
        seen.append(cause)
        cause = cause.__cause__ or cause.__context__
    text = " ".join(str(e) for e in seen)
    if any(isinstance(e, ConnectionRefusedError) for e in seen) or "Connection refused" in text:
        request = getattr(exc, "_request", None) or getattr(exc, "request", None)
        url = getattr(request, "url", None) if request is not None else None
        where = f" by {url.host}:{url.port}" if url is not None and getattr(url, "host", None) else ""
        return f"connection refused{where} (nothing listening there?)"
    partial = re.search(r"received (\d+) bytes, expected (\d+)", text)
    if partial:
        return (f"the connection closed before the answer was complete "
                f"(received {int(partial.group(1)):,} of {int(partial.group(2)):,} bytes)")
    if "without sending complete message body" in text or "Server disconnected" in text:
        return "the connection closed before the answer was complete"
    first = seen[-1] if seen else exc
    return f"connection error ({type(first).__name__}: {first})"
