"""Models served by Hugging Face: Inference Endpoints, Inference Providers, or any TGI / vLLM /
OpenAI-compatible server at a URL, through ``huggingface_hub.AsyncInferenceClient``.

``huggingface_hub`` is imported when the model loads, never by ``import synthpipe``. Its client
does not retry, so this backend does: 408/425/429/5xx answers, timeouts and connection errors
are retried with exponential backoff and full jitter, ``Retry-After`` / ``retry-after-ms`` honoured
(see :class:`~synthpipe.models.openai_client.RetryPolicy`). A request that still fails is raised
as a plain :class:`~synthpipe.models.openai_client.RequestFailed`, never as the hub's exception,
which carries the request and so its ``Authorization`` header.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar, Optional

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from synthpipe.models._sdk import OneRequestPerGeneration, env_secret, redact
from synthpipe.models.base import AsyncLLM, ChatType
from synthpipe.steps.base import RuntimeParameter

DEFAULT_MAX_TOKENS = 128
# distilabel's names for generation kwargs, and the chat-completion names they stand for
_RENAMED_KWARGS = {"max_new_tokens": "max_tokens", "stop_sequences": "stop"}
# what AsyncInferenceClient.chat_completion takes by name; anything else goes in extra_body
_CHAT_PARAMETERS = frozenset({
    "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "presence_penalty", "response_format", "seed",
    "stop", "temperature", "tool_choice", "tool_prompt", "tools", "top_logprobs", "top_p",
})
_TRANSIENT_STATUSES = frozenset({408, 425, 429})






def _http_module() -> Any:
    """The HTTP library huggingface_hub is built on: ``httpx2`` (2.x), ``httpx`` before."""
    try:
        import httpx2
    except ImportError:
        import httpx as httpx2
    return httpx2


def _error_detail(body: str) -> str:
    """The message of an OpenAI- or TGI-style error body, else the body."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(error) if isinstance(error, str) and error else body


class InferenceEndpointsLLM(OneRequestPerGeneration, AsyncLLM):
    """A chat model served by Hugging Face, or by any server at ``base_url``.

    Exactly one of ``base_url`` (a TGI / vLLM / OpenAI-compatible server: requests go to
    ``{base_url}/v1/chat/completions``, or ``{base_url}/chat/completions`` when it ends in ``/v1``)
    and ``endpoint_name`` (a dedicated Inference Endpoint, looked up on the Hub at load time, in
    ``endpoint_namespace``) may be given; with neither, ``model_id`` goes to Hugging Face's
    Inference Providers router. ``model_id`` is also the ``model`` field of every request.

    ``api_key`` defaults to ``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``); it goes only into the
    client, never into a log, a signature or a saved result. Up to ``max_concurrency`` requests
    are in flight; each attempt is bounded by ``timeout`` seconds and retried up to ``max_retries``
    times. ``HF_HUB_OFFLINE`` stops requests to the Hub (the router, an endpoint lookup), not
    requests to a ``base_url`` server.

    ``generation_kwargs``: ``max_new_tokens`` (default 128), ``temperature``, ``top_p``,
    ``stop_sequences``, ``seed``... (anything the client does not name is sent in the body as is).
    ``num_generations > 1`` sends that many requests. Structured output is asked for with
    ``response_format`` ``json_schema``, which ``huggingface_hub`` turns into TGI's grammar
    (``{"type": "json_object", "value": schema}``) for a URL.

    ``tokenizer_id`` (distilabel applies that tokenizer's chat template itself and calls the
    text-generation route) is taken when it names ``model_id``'s own repository, as distilabel's
    examples write it: the chat-completion route applies that same template on the server, so the
    prompt is the same. A different tokenizer's template is not supported.
    """

    model_id: Optional[str] = None
    endpoint_name: RuntimeParameter[str] = None
    endpoint_namespace: RuntimeParameter[str] = None
    base_url: RuntimeParameter[str] = None
    api_key: RuntimeParameter[SecretStr] = Field(
        default_factory=lambda: env_secret("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"))
    tokenizer_id: Optional[str] = None
    model_display_name: Optional[str] = None
    max_concurrency: RuntimeParameter[int] = Field(default=64, ge=1)
    timeout: RuntimeParameter[float] = Field(default=120.0, gt=0)
    max_retries: RuntimeParameter[int] = Field(default=6, ge=0)
    retry_base_delay: float = Field(default=0.5, ge=0)
    default_headers: Optional[dict[str, str]] = None

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset({
        "api_key", "max_concurrency", "timeout", "max_retries", "retry_base_delay", "default_headers",
        "model_display_name", "tokenizer_id",
    })
    API_KEY_ENV: ClassVar[str] = "HF_TOKEN"

    _client: Any = PrivateAttr(default=None)
    _semaphore: Optional[asyncio.Semaphore] = PrivateAttr(default=None)
    _loop: Optional[asyncio.AbstractEventLoop] = PrivateAttr(default=None)
    _closer: Any = PrivateAttr(default=None)
    _url: Optional[str] = PrivateAttr(default=None)

    @field_validator("api_key", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        return SecretStr(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _tokenizer_is_the_models(self) -> InferenceEndpointsLLM:
        if self.tokenizer_id is not None and self.tokenizer_id != self.model_id:
            raise ValueError(
                f"tokenizer_id={self.tokenizer_id!r} is not supported: InferenceEndpointsLLM always uses the "
                "chat-completion route, where the server applies the served model's own chat template; leave "
                "tokenizer_id unset or set it to model_id")
        return self

    @model_validator(mode="after")
    def _one_target(self) -> InferenceEndpointsLLM:
        if self.base_url and self.endpoint_name:
            raise ValueError("give base_url or endpoint_name, not both")
        return self

    @property
    def model_name(self) -> str:
        return self.model_display_name or self.model_id or self.endpoint_name or self.base_url or ""

    def concurrency(self) -> int:
        return self.max_concurrency or 1

    # -- lifecycle ----------------------------------------------------------------------

    def load(self) -> None:
        """Imports ``huggingface_hub`` and finds the URL to call: ``base_url``, or the Inference
        Endpoint's (a Hub request, made only when ``endpoint_name`` is given)."""
        if not (self.base_url or self.endpoint_name or self.model_id):  # base_url may come as a run parameter
            raise ValueError("InferenceEndpointsLLM needs base_url, endpoint_name or model_id")
        try:
            import huggingface_hub
        except ImportError as exc:
            raise ImportError("InferenceEndpointsLLM needs the `huggingface_hub` package: "
                              "pip install 'synthpipe[hf-inference]'") from exc
        if self.base_url:
            self._url = self.base_url
        elif self.endpoint_name:
            key = self.api_key.get_secret_value() if self.api_key is not None else None
            endpoint = huggingface_hub.get_inference_endpoint(
                self.endpoint_name, namespace=self.endpoint_namespace, token=key)
            if not endpoint.url:
                raise RuntimeError(f"Inference Endpoint '{self.endpoint_name}' has no URL (status: {endpoint.status}); "
                                   "start it, or wait for it to be running")
            self._url = endpoint.url
        else:
            self._url = None  # the Inference Providers router, by model_id

    def _new_client(self) -> Any:
        if self._url is None and (self.base_url or self.endpoint_name):
            self.load()
        from huggingface_hub import AsyncInferenceClient

        key = self.api_key.get_secret_value() if self.api_key is not None else None
        client = AsyncInferenceClient(base_url=self._url, api_key=key, timeout=self.timeout,
                                      headers=self.default_headers)
        if self._url is not None:
            self._own_connections(client)
        return client

    def _own_connections(self, client: Any) -> None:
        """A server at a URL gets an HTTP client of its own, with a connection per request in
        flight. The hub's shared one keeps at most 100, and refuses every request, to any
        server, when ``HF_HUB_OFFLINE`` is set: that setting is about the Hub, which a
        ``base_url`` server is not. (The Inference Providers router keeps the hub's client.)"""
        if getattr(client, "_async_client", False) is not None or not hasattr(client, "exit_stack"):
            return  # a huggingface_hub that manages its HTTP client differently: leave it be
        httpx2 = _http_module()
        limit = self.concurrency()
        http = httpx2.AsyncClient(follow_redirects=True, timeout=None,
                                  limits=httpx2.Limits(max_connections=limit, max_keepalive_connections=limit))
        client._async_client = http
        client.exit_stack.push_async_callback(http.aclose)

    # -- requests -----------------------------------------------------------------------

    def request_params(self, input: ChatType, **kwargs: Any) -> dict[str, Any]:
        """The keyword arguments of ``chat_completion`` for one request."""
        params: dict[str, Any] = {"messages": input, "model": self.model_id, "max_tokens": DEFAULT_MAX_TOKENS}
        extra: dict[str, Any] = {}
        for key, value in kwargs.items():
            key = _RENAMED_KWARGS.get(key, key)
            if value is None:
                continue
            if key in _CHAT_PARAMETERS:
                params[key] = value
            else:
                extra[key] = value
        if self.structured_output is not None and "response_format" not in params:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": self.structured_output.name, "schema": self.structured_output.json_schema},
            }
        if extra:
            params["extra_body"] = extra
        return params

    async def _one(self, client: Any, semaphore: asyncio.Semaphore, params: dict[str, Any]) -> tuple[
            Optional[str], int, int]:
        from synthpipe.models.http import RetryPolicy, call_with_retries

        policy = RetryPolicy(max_retries=self.max_retries or 0, base_delay=self.retry_base_delay,
                             timeout=self.timeout or 120.0)

        async def attempt() -> Any:
            async with semaphore:
                return await client.chat_completion(**params)

        answer = await call_with_retries(attempt, self._failure, policy)
        choices = sorted(answer.choices or [], key=lambda c: c.index or 0)
        text = choices[0].message.content if choices else None
        usage = answer.usage
        return text, int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)

    def _failure(self, exc: BaseException, attempt: int) -> tuple[Any, Optional[float]]:
        """``(RequestFailed, retry_after)`` for a failed attempt (no request, no headers inside),
        or ``(None, None)`` for an error that is not about the request (raised as it is)."""
        from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError

        httpx2 = _http_module()

        from synthpipe.models.http import RequestFailed, parse_retry_after

        secret = self.api_key.get_secret_value() if self.api_key is not None else None
        url = self._url or self.model_id
        tries = f"after {attempt} attempt(s)"
        if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
            status = exc.response.status_code
            retry_after = parse_retry_after(exc.response.headers)
            retryable = status in _TRANSIENT_STATUSES or status >= 500
            try:
                body = exc.response.text[:500]
            except Exception:
                body = ""
            detail = _error_detail(body) or exc.server_message or str(exc).splitlines()[0]
            message = redact(f"{self.model_name}: HTTP {status} {tries}: {detail}", secret)
            return RequestFailed(message, status, retryable, attempt, redact(body, secret), url, "http",
                                 retry_after), retry_after
        if isinstance(exc, (InferenceTimeoutError, httpx2.TimeoutException)):
            message = f"{self.model_name}: no answer within {self.timeout}s {tries}"
            return RequestFailed(message, None, True, attempt, None, url, "timeout"), None
        if isinstance(exc, httpx2.TransportError):
            from synthpipe.models.transport_errors import httpx_connection_failed

            message = redact(f"{self.model_name}: {httpx_connection_failed(exc)} ({tries})", secret)
            return RequestFailed(message, None, True, attempt, None, url, "connection"), None
        return None, None
