"""Claude models through Anthropic's Messages API, on the official ``anthropic`` SDK.

The SDK is imported when the model loads, never by ``import synthpipe``. Its own retry loop
(exponential backoff with jitter, ``retry-after`` / ``retry-after-ms`` honoured, 408/409/429/5xx
and connection errors retried) does the retrying; a request that still fails is raised as a
plain :class:`~synthpipe.models.openai_client.RequestFailed` (status, attempts, a short message),
never as the SDK's exception, which carries the request and so its ``x-api-key`` header.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from typing import Any, ClassVar, Optional

from pydantic import Field, PrivateAttr, SecretStr

from synthpipe.models._sdk import OneRequestPerGeneration, env_secret, redact
from synthpipe.models.base import ChatType, RemoteLLM
from synthpipe.steps.base import RuntimeParameter

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_MAX_TOKENS = 128
# distilabel's names for generation kwargs, and the Messages API names they stand for
_RENAMED_KWARGS = {"max_new_tokens": "max_tokens"}
_TOOL_NAME = re.compile(r"[^a-zA-Z0-9_-]")






class AnthropicLLM(OneRequestPerGeneration, RemoteLLM):
    """``model`` (``claude-...``) through the Messages API at ``base_url`` (default
    ``ANTHROPIC_BASE_URL``, else Anthropic's API).

    ``api_key`` defaults to ``ANTHROPIC_API_KEY`` (when it is unset as well, the SDK looks for its
    other credentials); it goes only into the SDK client, never into a log, a signature or a saved
    result. Up to ``max_concurrency`` requests are in flight; each attempt is bounded by
    ``timeout`` seconds and retried ``max_retries`` times by the SDK.

    System messages go to the ``system`` parameter; ``generation_kwargs`` takes ``max_new_tokens``
    (or ``max_tokens``, default 128), ``temperature``, ``top_p``, ``top_k``, ``stop_sequences`` and
    any other Messages API field, sent as is. ``num_generations > 1`` sends that many requests.
    Structured output forces a tool whose ``input_schema`` is the schema, and the tool's input is
    the generation (a schema whose root is not an object is wrapped in ``{"value": ...}`` on the
    wire and unwrapped here).
    """

    base_url: RuntimeParameter[str] = Field(
        default_factory=lambda: os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL)
    api_key: RuntimeParameter[SecretStr] = Field(default_factory=lambda: env_secret("ANTHROPIC_API_KEY"))
    timeout: RuntimeParameter[float] = Field(default=600.0, gt=0)
    max_retries: RuntimeParameter[int] = Field(default=6, ge=0)
    default_headers: Optional[dict[str, str]] = None

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset(
        {"api_key", "max_concurrency", "timeout", "max_retries", "default_headers"})
    API_KEY_ENV: ClassVar[str] = "ANTHROPIC_API_KEY"

    _client: Any = PrivateAttr(default=None)
    _semaphore: Optional[asyncio.Semaphore] = PrivateAttr(default=None)
    _loop: Optional[asyncio.AbstractEventLoop] = PrivateAttr(default=None)
    _closer: Any = PrivateAttr(default=None)
    _sdk: Any = PrivateAttr(default=None)




    # -- lifecycle ----------------------------------------------------------------------

    def load(self) -> None:
        """Imports the SDK (a clear error when it is missing); the client itself is made in
        the event loop that uses it."""
        try:
            import anthropic
        except ImportError as exc:
            raise ImportError(
                "AnthropicLLM needs the `anthropic` package: pip install 'synthpipe[anthropic]'") from exc
        self._sdk = anthropic

    def _new_client(self) -> Any:
        if self._sdk is None:
            self.load()
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        return self._sdk.AsyncAnthropic(
            api_key=key,
            base_url=self.base_url or None,
            timeout=self.timeout or 600.0,
            max_retries=self.max_retries or 0,
            default_headers=self.default_headers,
        )

    # -- requests -----------------------------------------------------------------------

    def _tool(self) -> tuple[dict[str, Any], bool]:
        """The tool that carries the structured output, and whether its schema is wrapped."""
        assert self.structured_output is not None
        schema = dict(self.structured_output.json_schema)
        name = _TOOL_NAME.sub("_", self.structured_output.name)[:64] or "output"
        wrapped = schema.get("type") != "object"
        if wrapped:  # a tool's input is always an object: carry the value in one property
            defs = {k: schema.pop(k) for k in ("$defs", "definitions") if k in schema}
            schema = {"type": "object", "properties": {"value": schema}, "required": ["value"], **defs}
        tool = {"name": name, "description": "Answer with the requested structured output.", "input_schema": schema}
        return tool, wrapped

    def request_params(self, input: ChatType, **kwargs: Any) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for one request."""
        system = [m.get("content") for m in input if m.get("role") == "system" and m.get("content")]
        messages = [{"role": m["role"], "content": m.get("content")} for m in input if m.get("role") != "system"]
        extra: dict[str, Any] = {}
        max_tokens = DEFAULT_MAX_TOKENS
        for key, value in kwargs.items():
            key = _RENAMED_KWARGS.get(key, key)
            if value is None:
                continue
            if key == "max_tokens":
                max_tokens = int(value)
            else:
                extra[key] = value
        params: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens}
        if system and all(isinstance(c, str) for c in system):
            params["system"] = "\n\n".join(system)
        elif system:  # content blocks: Anthropic takes a list of text blocks
            params["system"] = [b for c in system for b in ([{"type": "text", "text": c}] if isinstance(c, str) else c)]
        if self.structured_output is not None and "tools" not in extra:
            tool, _ = self._tool()
            params["tools"] = [tool]
            params["tool_choice"] = {"type": "tool", "name": tool["name"], "disable_parallel_tool_use": True}
        if extra:  # sent as is: the SDK's signature does not name every Messages API field
            params["extra_body"] = extra
        return params

    async def _one(self, client: Any, semaphore: asyncio.Semaphore, params: dict[str, Any]) -> tuple[
            Optional[str], int, int]:
        async with semaphore:
            try:
                message = await client.messages.create(**params)
            except self._sdk.APIError as exc:
                raise self._failure(exc) from None
        usage = getattr(message, "usage", None)
        tokens_in = int(getattr(usage, "input_tokens", 0) or 0)
        tokens_out = int(getattr(usage, "output_tokens", 0) or 0)
        return self._text_of(message, params), tokens_in, tokens_out

    def _text_of(self, message: Any, params: dict[str, Any]) -> Optional[str]:
        blocks = list(getattr(message, "content", None) or [])
        if self.structured_output is not None and "tool_choice" in params:
            name = params["tool_choice"]["name"]
            for block in blocks:
                if getattr(block, "type", None) == "tool_use" and getattr(block, "name", None) == name:
                    value = block.input
                    if self._tool()[1] and isinstance(value, dict) and "value" in value:
                        value = value["value"]
                    return json.dumps(value, ensure_ascii=False)
        texts = [block.text for block in blocks if getattr(block, "type", None) == "text"]
        return "".join(texts) if texts else None

    def _failure(self, exc: BaseException) -> BaseException:
        """A plain, picklable error for a request that failed for good (no request, no headers)."""
        from synthpipe.models.http import RequestFailed

        sdk = self._sdk
        secret = self.api_key.get_secret_value() if self.api_key is not None else None
        request = getattr(exc, "request", None)
        try:
            retries = int(request.headers.get("x-stainless-retry-count", "0")) if request is not None else 0
        except (TypeError, ValueError):
            retries = 0
        attempts = retries + 1
        url = f"{self.base_url or DEFAULT_BASE_URL}/v1/messages"
        if isinstance(exc, sdk.APIStatusError):
            status = exc.status_code
            body = exc.body if isinstance(exc.body, dict) else {}
            error = body.get("error") if isinstance(body.get("error"), dict) else {}
            detail = error.get("message") or exc.message
            kind_name = error.get("type") or type(exc).__name__
            retryable = status in (408, 409, 429) or status >= 500
            message = redact(
                f"Anthropic API answered HTTP {status} ({kind_name}) after {attempts} attempt(s): {detail}", secret)
            return RequestFailed(message, status, retryable, attempts, redact(str(detail)[:500], secret), url, "http")
        if isinstance(exc, sdk.APITimeoutError):
            message = f"Anthropic API: no answer within {self.timeout}s after {attempts} attempt(s)"
            return RequestFailed(message, None, True, attempts, None, url, "timeout")
        if isinstance(exc, sdk.APIConnectionError):
            from synthpipe.models.transport_errors import httpx_connection_failed

            detail = httpx_connection_failed(exc)
            message = redact(f"Anthropic API: {detail} ({attempts} attempt(s))", secret)
            return RequestFailed(message, None, True, attempts, None, url, "connection")
        message = redact(f"Anthropic API: {type(exc).__name__}: {exc}", secret)
        return RequestFailed(message, None, False, attempts, None, url, "client")
