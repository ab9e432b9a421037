"""OpenAI and every server that speaks its chat-completions format (vLLM, TGI, llama.cpp
server, Ollama, LM Studio, Together, Groq...), over synthpipe's lean aiohttp client.

The official SDK is not used on the hot path: measured on 2 cores with 256 requests in
flight, it tops out near a fifth of what a bare aiohttp loop sustains (see bench/llm.py).
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Literal, Optional

from pydantic import Field, PrivateAttr, SecretStr

from synthpipe.models._sdk import env_secret
from synthpipe.models.base import ChatType, GenerateOutput, RemoteLLM
from synthpipe.models.raw_prompts import CHAT_FORMATS, MagpieChatTemplateMixin, render_jinja_chat
from synthpipe.steps.base import RuntimeParameter

# distilabel's names for generation kwargs, and the wire names they stand for
_RENAMED_KWARGS = {"max_new_tokens": "max_tokens"}



class OpenAILLM(MagpieChatTemplateMixin, RemoteLLM):
    """``model`` served at ``base_url`` (default: OpenAI, or ``OPENAI_BASE_URL``).

    ``api_key`` defaults to ``OPENAI_API_KEY``; it is sent only in the Authorization header,
    never logged, never part of a signature or a saved result. Flow control per endpoint:
    up to ``max_concurrency`` requests in flight (halved on 429/503, grown back on success),
    optional ``requests_per_minute`` / ``tokens_per_minute``, ``Retry-After`` honoured;
    transient failures are retried ``max_retries`` times with backoff and jitter, each
    attempt bounded by ``timeout`` seconds.
    """

    base_url: RuntimeParameter[str] = Field(
        default_factory=lambda: os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1"))
    api_key: RuntimeParameter[SecretStr] = Field(default_factory=lambda: env_secret("OPENAI_API_KEY"))
    timeout: RuntimeParameter[float] = Field(default=120.0, gt=0)
    max_retries: RuntimeParameter[int] = Field(default=6, ge=0)
    retry_base_delay: float = Field(default=0.5, ge=0)
    requests_per_minute: RuntimeParameter[int] = None
    tokens_per_minute: RuntimeParameter[int] = None
    default_headers: Optional[dict[str, str]] = None
    json_mode: Literal["json_schema", "json_object"] = "json_schema"
    """How structured output is asked for: OpenAI's ``{"type": "json_schema", ...}``, or
    ``{"type": "json_object", "schema": ...}`` for servers that only take that (llama.cpp's)."""

    chat_template: Optional[str] = None
    """A Jinja2 chat template to render raw prompts for ``/completions`` (Magpie); by default the
    format named by ``magpie_pre_query_template`` (``llama3``, ``qwen2``)."""

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset({
        "api_key", "max_concurrency", "timeout", "max_retries", "retry_base_delay", "requests_per_minute",
        "tokens_per_minute", "default_headers",
    })
    API_KEY_ENV: ClassVar[str] = "OPENAI_API_KEY"

    _client: Any = PrivateAttr(default=None)



    def share_limits(self, parts: int) -> None:
        super().share_limits(parts)
        if parts > 1:
            if self.requests_per_minute:
                self.requests_per_minute = max(1, self.requests_per_minute // parts)
            if self.tokens_per_minute:
                self.tokens_per_minute = max(1, self.tokens_per_minute // parts)

    def load(self) -> None:
        from synthpipe.models.openai_client import OpenAICompatibleClient, RetryPolicy

        key = self.api_key.get_secret_value() if self.api_key is not None else None
        self._client = OpenAICompatibleClient(
            self.base_url or "",
            key,
            max_concurrency=self.concurrency(),
            retry=RetryPolicy(max_retries=self.max_retries or 0, base_delay=self.retry_base_delay,
                              timeout=self.timeout or 120.0),
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            headers=self.default_headers,
        )

    def unload(self) -> None:
        self._client = None  # its connections close with the event loop that opened them

    def payload(self, input: ChatType, num_generations: int = 1, **kwargs: Any) -> dict[str, Any]:
        """The request body: the chat, the generation kwargs, structured output if asked."""
        body: dict[str, Any] = {"model": self.model, "messages": input}
        if num_generations != 1:
            body["n"] = num_generations
        for key, value in kwargs.items():
            if value is not None:
                body[_RENAMED_KWARGS.get(key, key)] = value
        if self.structured_output is not None and "response_format" not in body:
            schema = self.structured_output.json_schema
            if self.json_mode == "json_object":
                body["response_format"] = {"type": "json_object", "schema": schema}
            else:
                body["response_format"] = {
                    "type": "json_schema", "json_schema": {"name": self.structured_output.name, "schema": schema}}
        return body

    async def agenerate(self, input: ChatType, num_generations: int = 1, **kwargs: Any) -> GenerateOutput:
        if self._client is None:
            self.load()
        answer = await self._client.chat(self.payload(input, num_generations, **kwargs))
        return generations_of(answer, num_generations)


    def signature_fields(self) -> dict[str, Any]:
        fields = super().signature_fields()
        if fields.get("chat_template") is None:  # unset: the signatures of runs made before it existed hold
            fields.pop("chat_template", None)
        return fields

    def supports_images(self) -> bool:
        return True

    def supports_raw_prompts(self) -> bool:
        """The ``/completions`` endpoint, where we know the served model's chat format."""
        return self._raw_template() is not None

    def _raw_template(self) -> Optional[str]:
        return self.chat_template or CHAT_FORMATS.get(self.magpie_pre_query_template or "")

    def render_chat(self, chat: ChatType) -> str:
        template = self._raw_template()
        if template is None:
            raise ValueError(f"{type(self).__name__}: set chat_template (or magpie_pre_query_template to one of "
                             f"{sorted(CHAT_FORMATS)}) to render a chat as a raw prompt for /completions")
        return render_jinja_chat(template, chat)

    async def agenerate_raw(self, prompts: list[str], num_generations: int = 1, **kwargs: Any) -> list[Any]:
        import asyncio

        if self._client is None:
            self.load()

        async def one(prompt: str) -> GenerateOutput:
            body = {k: v for k, v in self.payload([], num_generations, **kwargs).items()
                    if k not in ("messages", "response_format")}
            answer = await self._client.completions({**body, "prompt": prompt})
            return completions_of(answer)

        return await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)


def completions_of(answer: dict[str, Any]) -> GenerateOutput:
    """Texts and token counts of a ``/completions`` answer."""
    choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
    texts = [choice.get("text") for choice in choices]
    usage = answer.get("usage") or {}
    return {"generations": texts, "statistics": {
        "input_tokens": shared_out(int(usage.get("prompt_tokens") or 0), len(texts)),
        "output_tokens": shared_out(int(usage.get("completion_tokens") or 0), len(texts))}}


def shared_out(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal whole numbers that add up to it (a server
    reports one completion-token count for all its choices: none may be lost in the split)."""
    if parts <= 0:
        return []
    share, rest = divmod(total, parts)
    return [share + (1 if i < rest else 0) for i in range(parts)]


def generations_of(answer: dict[str, Any], num_generations: int) -> GenerateOutput:
    """Texts and token counts of a chat-completions answer. With several choices the server
    reports one prompt and one completion total for the request (the prompt is paid once, not
    once per choice): each is shared out among them, so the generations add up to what was paid."""
    choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
    texts = [(choice.get("message") or {}).get("content") for choice in choices]
    usage = answer.get("usage") or {}
    n = max(1, len(texts))
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    statistics: dict[str, Any] = {"input_tokens": shared_out(prompt, len(texts)),
                                  "output_tokens": shared_out(completion, len(texts))}
    cost = usage.get("cost")  # what the provider says the request cost (OpenRouter and the like)
    if isinstance(cost, (int, float)) and not isinstance(cost, bool):
        statistics["cost"] = [float(cost) / n] * len(texts)
    return {"generations": texts, "statistics": statistics}


class OllamaLLM(OpenAILLM):
    """A model served by a local Ollama (its OpenAI-compatible endpoint)."""

    base_url: RuntimeParameter[str] = Field(
        default_factory=lambda: os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434").rstrip("/") + "/v1")
    api_key: RuntimeParameter[SecretStr] = Field(default_factory=lambda: SecretStr("ollama"))


class ClientvLLM(OpenAILLM):
    """A model served by ``vllm serve`` (OpenAI-compatible, default port 8000)."""

    base_url: RuntimeParameter[str] = "http://127.0.0.1:8000/v1"
    api_key: RuntimeParameter[SecretStr] = Field(default_factory=lambda: env_secret("VLLM_API_KEY"))
