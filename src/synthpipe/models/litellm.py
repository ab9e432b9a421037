"""Any provider LiteLLM knows (``openai/...``, ``anthropic/...``, ``bedrock/...``, ``ollama/...``),
through ``litellm.acompletion``.

``litellm`` is imported when the model loads, never by ``import synthpipe`` (it takes seconds).
Before that import ``LITELLM_LOCAL_MODEL_COST_MAP`` is set to ``True`` unless it is already set,
so LiteLLM reads its bundled model cost map instead of fetching it from the internet. Retries are
LiteLLM's (``num_retries``: transient failures, ``Retry-After`` honoured by the provider SDK); a
request that still fails is raised as a plain :class:`~synthpipe.models.openai_client.RequestFailed`,
never as LiteLLM's exception, which carries the request and so its credentials.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar, Optional

from pydantic import Field, PrivateAttr, SecretStr

from synthpipe.models._sdk import gather_or_cancel, redact
from synthpipe.models.base import ChatType, GenerateOutput, RemoteLLM
from synthpipe.steps.base import RuntimeParameter

# distilabel's names for generation kwargs, and the names LiteLLM takes
_RENAMED_KWARGS = {"max_new_tokens": "max_tokens"}
_TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})




def import_litellm() -> Any:
    """``litellm``, imported offline-safe and quiet (no "Give Feedback" banners on errors)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:
        raise ImportError("LiteLLM needs the `litellm` package: pip install 'synthpipe[litellm]'") from exc
    litellm.suppress_debug_info = True
    return litellm


class LiteLLM(RemoteLLM):
    """``model`` in LiteLLM's ``provider/name`` form, e.g. ``openai/gpt-4o-mini`` or, for any
    OpenAI-compatible server, ``openai/<served name>`` with ``api_base``.

    ``api_key`` is optional (LiteLLM reads each provider's usual variable, e.g. ``OPENAI_API_KEY``);
    when given it goes only into the call, never into a log, a signature or a saved result. Up to
    ``max_concurrency`` requests are in flight; each attempt is bounded by ``timeout`` seconds,
    and LiteLLM retries transient failures ``num_retries`` times. ``drop_params=True`` lets LiteLLM
    drop generation kwargs the provider does not support instead of failing.

    ``generation_kwargs`` are LiteLLM's (OpenAI's names; ``max_new_tokens`` is taken for
    ``max_tokens``). ``num_generations > 1`` asks for ``n`` choices; a provider that returns fewer
    is asked again, once per missing generation. Structured output is asked for with
    ``response_format`` ``json_schema``, which LiteLLM translates for each provider.
    """

    api_base: RuntimeParameter[str] = None
    api_key: RuntimeParameter[SecretStr] = None
    timeout: RuntimeParameter[float] = Field(default=120.0, gt=0)
    num_retries: RuntimeParameter[int] = Field(default=6, ge=0)
    drop_params: bool = False
    verbose: bool = False

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset(
        {"api_key", "max_concurrency", "timeout", "num_retries", "verbose"})

    _semaphore: Optional[asyncio.Semaphore] = PrivateAttr(default=None)
    _loop: Optional[asyncio.AbstractEventLoop] = PrivateAttr(default=None)
    _litellm: Any = PrivateAttr(default=None)




    # -- lifecycle ----------------------------------------------------------------------

    def load(self) -> None:
        self._litellm = import_litellm()
        if self.verbose:
            self._litellm._turn_on_debug()

    def unload(self) -> None:
        self._semaphore = self._loop = None

    def _open(self) -> asyncio.Semaphore:
        """The limiter of the running loop, made on first use in that loop."""
        loop = asyncio.get_running_loop()
        if self._litellm is None:
            self.load()
        if self._loop is not loop or self._semaphore is None:
            self._semaphore, self._loop = asyncio.Semaphore(self.concurrency()), loop
        return self._semaphore

    # -- requests -----------------------------------------------------------------------

    def request_params(self, input: ChatType, num_generations: int = 1, **kwargs: Any) -> dict[str, Any]:
        """The keyword arguments of ``litellm.acompletion`` for one request (without the key)."""
        params: dict[str, Any] = {"model": self.model, "messages": input}
        for key, value in kwargs.items():
            if value is not None:
                params[_RENAMED_KWARGS.get(key, key)] = value
        if num_generations != 1:
            params["n"] = num_generations
        if self.structured_output is not None and "response_format" not in params:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": self.structured_output.name, "schema": self.structured_output.json_schema},
            }
        if self.api_base:
            params["api_base"] = self.api_base
        if self.drop_params:
            params["drop_params"] = True
        params["timeout"] = self.timeout
        params["num_retries"] = self.num_retries
        return params

    async def agenerate(self, input: ChatType, num_generations: int = 1, **kwargs: Any) -> GenerateOutput:
        from synthpipe.models.openai import generations_of

        semaphore = self._open()
        answer = await self._one(semaphore, self.request_params(input, num_generations, **kwargs))
        output = generations_of(answer, num_generations)
        missing = num_generations - len(output["generations"])
        if missing > 0:  # the provider ignored n: one more request per missing generation
            single = self.request_params(input, 1, **kwargs)
            extra = await gather_or_cancel([self._one(semaphore, single) for _ in range(missing)])
            for more in extra:
                part = generations_of(more, 1)
                output["generations"].extend(part["generations"][:1])
                for name in ("input_tokens", "output_tokens"):
                    output["statistics"][name].extend(part["statistics"][name][:1])
        return output

    async def _one(self, semaphore: asyncio.Semaphore, params: dict[str, Any]) -> dict[str, Any]:
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        async with semaphore:
            try:
                response = await self._litellm.acompletion(**params, **({"api_key": key} if key else {}))
            except Exception as exc:
                failure = self._failure(exc)
                if failure is None:
                    raise
                raise failure from None
        return response.model_dump() if hasattr(response, "model_dump") else dict(response)

    def _failure(self, exc: BaseException) -> Optional[BaseException]:
        """A plain, picklable error for a request that failed for good (no request, no headers),
        or None for an error that is not LiteLLM's (raised as it is)."""
        from synthpipe.models.http import RequestFailed

        litellm = self._litellm
        if not (type(exc).__module__ or "").startswith(("litellm", "openai", "httpx", "aiohttp")):
            return None
        secret = self.api_key.get_secret_value() if self.api_key is not None else None
        status = getattr(exc, "status_code", None)
        status = status if isinstance(status, int) else None
        timed_out = isinstance(exc, litellm.Timeout)
        connection = isinstance(exc, litellm.APIConnectionError) and not timed_out
        retryable = timed_out or connection or (status is not None and (status in _TRANSIENT_STATUSES or status >= 500))
        attempts = (int(getattr(exc, "num_retries", None) or 0) + 1) if retryable else 1
        detail = str(getattr(exc, "message", None) or exc).split(" LiteLLM Retried:")[0]
        kind = "timeout" if timed_out else "connection" if connection else "http" if status else "client"
        if timed_out:
            status = None
        where = f"{self.model} at {self.api_base}" if self.api_base else self.model
        what = f"HTTP {status}" if status else type(exc).__name__
        message = redact(f"{where}: {what} after {attempts} attempt(s): {detail}", secret)
        body = getattr(exc, "body", None)
        excerpt = redact(str(body)[:500], secret) if body else None
        return RequestFailed(message, status, retryable, attempts, excerpt, self.api_base, kind)
