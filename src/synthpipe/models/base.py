"""LLMs and embedding models: the contract every backend fulfils.

Async first. A step awaits ``agenerate_batch`` for a whole batch; remote backends
(``AsyncLLM``) answer it with one request per row, all in flight at once up to the
endpoint's concurrency limit, and a request that still fails after its retries fails only
its own row. Local engines (``BatchLLM``) run the batch in the engine, on a thread, so the
worker's event loop (and the other batches in flight) keep moving.

Outputs follow distilabel's shape, so porting is mostly renaming imports::

    {"generations": ["...", ...], "statistics": {"input_tokens": [12, ...], "output_tokens": [80, ...]}}
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar, Optional, TypedDict, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator

from synthpipe.errors import SynthpipeError
from synthpipe.steps.base import RUNTIME_PARAMETER, RuntimeParameter

ChatType = list[dict[str, Any]]
"""One conversation: ``[{"role": "system" | "user" | "assistant", "content": "..."}]``."""


class GenerateOutput(TypedDict, total=False):
    generations: list[Optional[str]]
    statistics: dict[str, list[int]]


class InvalidStructuredOutput(SynthpipeError):
    """A generation that does not match the requested schema; the raw text is kept."""

    def __init__(self, message: str, raw_output: str | None) -> None:
        super().__init__(message)
        self.raw_output = raw_output

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.raw_output))


class StructuredOutput(BaseModel):
    """Ask for JSON matching ``json_schema`` (a JSON schema, or a pydantic model class whose
    schema is taken); backends use their native guided decoding, and every result is validated.

    An LLM's ``structured_output`` also takes ``{"schema": ...}`` (distilabel's spelling), a
    schema dict or a pydantic model class.
    """

    model_config = ConfigDict(extra="forbid")

    json_schema: dict[str, Any]
    name: str = "output"

    @field_validator("json_schema", mode="before")
    @classmethod
    def _schema_of_model(cls, value: Any) -> Any:
        if isinstance(value, type) and issubclass(value, BaseModel):
            return value.model_json_schema()
        return value

    _validator: Any = PrivateAttr(default=None)

    def validate_text(self, text: str | None) -> Any:
        """The parsed value; ``InvalidStructuredOutput`` (keeping the text) if it does not match."""
        import jsonschema

        if self._validator is None:  # the schema is checked, and the validator built, once
            cls = jsonschema.validators.validator_for(self.json_schema)
            cls.check_schema(self.json_schema)
            self._validator = cls(self.json_schema)

        if text is None:
            raise InvalidStructuredOutput("the model returned no text where JSON was asked for", text)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidStructuredOutput(f"the output is not valid JSON ({exc}); raw output: {text!r}", text) from None
        try:
            self._validator.validate(value)
        except jsonschema.ValidationError as exc:
            raise InvalidStructuredOutput(
                f"the output does not match the schema: {exc.message}; raw output: {text!r}", text) from None
        return value


def _runtime_parameter_names(cls: type[BaseModel]) -> list[str]:
    return [n for n, info in cls.model_fields.items() if any(m is RUNTIME_PARAMETER for m in info.metadata)]


class LLM(BaseModel):
    """A model that writes text for chat-format inputs.

    Subclasses set ``model_name`` and implement ``agenerate_batch`` (or one of the two bases
    below). ``generation_kwargs`` (temperature, max_new_tokens...) is a runtime parameter:
    ``pipeline.run(parameters={"task": {"llm": {"generation_kwargs": {...}}}})``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", validate_assignment=True,
                              protected_namespaces=())

    generation_kwargs: RuntimeParameter[dict[str, Any]] = Field(default_factory=dict)
    structured_output: Optional[StructuredOutput] = None

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset()
    """Fields that change how requests are made, not what comes back (concurrency, timeouts,
    keys): a change to them reuses stored results."""

    @field_validator("structured_output", mode="before")
    @classmethod
    def _structured_output_from_dict(cls, value: Any) -> Any:
        if isinstance(value, type) and issubclass(value, BaseModel):
            return StructuredOutput(json_schema=value)
        if isinstance(value, dict):
            if "schema" in value:
                extra = {k: v for k, v in value.items() if k not in ("schema", "format")}
                return StructuredOutput(json_schema=value["schema"], **extra)
            if "json_schema" not in value:
                return StructuredOutput(json_schema=value)
            return StructuredOutput(**value)
        return value

    @property
    def model_name(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} must define model_name")

    @classmethod
    def runtime_parameter_names(cls) -> list[str]:
        return _runtime_parameter_names(cls)

    def component_models(self) -> list[str]:
        """The models whose tokens this LLM pays for, as prices name them: itself, or the
        models a composite one (a mixture of agents) calls."""
        return [self.model_name]

    def load(self) -> None:
        """Runs in the worker before the first batch: open clients, load weights."""

    def unload(self) -> None:
        """Runs in the worker after the last batch."""

    def concurrency(self) -> int:
        """Requests this model can serve at once (a step keeps that many rows in flight)."""
        return 1

    def supports_structured_output(self) -> bool:
        """Whether this backend can constrain its output to a JSON schema (tasks with a shaped
        answer then ask for one instead of a text format)."""
        return True

    def supports_images(self) -> bool:
        """Whether chats may hold images (OpenAI's ``image_url`` content parts)."""
        return False

    def supports_raw_prompts(self) -> bool:
        """Whether ``agenerate_raw`` continues a prompt string (for Magpie's pre-query trick)."""
        return False

    def render_chat(self, chat: ChatType) -> str:
        """The chat as this model's prompt text, without a generation prompt (raw backends)."""
        raise NotImplementedError(f"{type(self).__name__} cannot render a chat as a raw prompt")

    async def agenerate_raw(
        self, prompts: list[str], num_generations: int = 1, **kwargs: Any
    ) -> list[Union[GenerateOutput, BaseException]]:
        """One output per prompt string, continued as is (no chat template); a row that failed
        is its exception. Only where ``supports_raw_prompts()``."""
        raise NotImplementedError(f"{type(self).__name__} does not generate from raw prompts")

    def requests_per_row(self, num_generations: int) -> int:
        """Requests one row costs: 1 where the API returns several generations at once."""
        return 1

    def share_limits(self, parts: int) -> None:
        """This process is one of ``parts`` replicas of a step: take a share of the limits that
        hold for the endpoint as a whole (concurrency, rates). Each share adapts on its own
        (a 429 in one replica slows that replica)."""
        current = getattr(self, "max_concurrency", None)
        if parts > 1 and isinstance(current, int) and current > 0:
            self.max_concurrency = max(1, -(-current // parts))

    def signature_fields(self) -> dict[str, Any]:
        """What goes into a step's signature: every field that can change the output."""
        skip = self.NOT_IN_SIGNATURE
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name not in skip and not isinstance(getattr(self, name), SecretStr)
        }

    async def agenerate_batch(
        self, inputs: list[ChatType], num_generations: int = 1, **kwargs: Any
    ) -> list[Union[GenerateOutput, BaseException]]:
        """One output per input, in order; a row that failed is its exception."""
        raise NotImplementedError(f"{type(self).__name__} must define agenerate_batch()")

    def generate(self, inputs: list[ChatType], num_generations: int = 1, **kwargs: Any) -> list[GenerateOutput]:
        """Blocking convenience for scripts and notebooks (outside a running event loop);
        raises the first row's error."""
        outputs = asyncio.run(self.agenerate_batch(inputs, num_generations, **{**self.generation_kwargs, **kwargs}))
        for output in outputs:
            if isinstance(output, BaseException):
                raise output
        return outputs  # type: ignore[return-value]

    def __getstate__(self) -> dict[Any, Any]:
        """Clients, engines and semaphores belong to one process and loop: a copy (the step
        shipped to a worker) starts without them and opens its own in ``load()``."""
        state = super().__getstate__()
        state["__pydantic_private__"] = dict.fromkeys(state.get("__pydantic_private__") or {})
        return state

    def __repr__(self) -> str:  # never a key, even by accident (nor a password in a URL)
        shown = {k: _without_userinfo(v) for k, v in self.signature_fields().items() if k != "generation_kwargs"}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class AsyncLLM(LLM):
    """A remote model: ``agenerate`` makes one request; all rows of a batch go at once, and
    the backend's own limiter decides how many are really in flight."""

    async def agenerate(self, input: ChatType, num_generations: int = 1, **kwargs: Any) -> GenerateOutput:
        raise NotImplementedError(f"{type(self).__name__} must define agenerate()")

    async def agenerate_batch(
        self, inputs: list[ChatType], num_generations: int = 1, **kwargs: Any
    ) -> list[Union[GenerateOutput, BaseException]]:
        return await asyncio.gather(
            *(self.agenerate(chat, num_generations, **kwargs) for chat in inputs), return_exceptions=True
        )


class RemoteLLM(AsyncLLM):
    """A model behind an HTTP API: its name, a key that is never shown, and how many
    requests may be in flight at once."""

    model: str
    api_key: RuntimeParameter[SecretStr] = None
    max_concurrency: RuntimeParameter[int] = Field(default=64, ge=1)

    @field_validator("api_key", mode="before")
    @classmethod
    def _secret(cls, value: Any) -> Any:
        return SecretStr(value) if isinstance(value, str) else value

    @property
    def model_name(self) -> str:
        return self.model

    def concurrency(self) -> int:
        return self.max_concurrency or 1


def _without_userinfo(value: Any) -> Any:
    if isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return value


def generations_of_answers(answers: list[tuple[Optional[str], int, int]]) -> GenerateOutput:
    """One output from separate requests' (text, input tokens, output tokens)."""
    return {
        "generations": [text for text, _, _ in answers],
        "statistics": {"input_tokens": [i for _, i, _ in answers], "output_tokens": [o for _, _, o in answers]},
    }


class BatchLLM(LLM):
    """A local engine that generates a whole batch in one call (transformers, llama.cpp, vLLM).

    The call runs on a thread, one batch at a time (engines are not safe to enter twice).
    """

    _engine_lock: Any = PrivateAttr(default=None)

    def generate_batch(self, inputs: list[ChatType], num_generations: int = 1, **kwargs: Any) -> list[GenerateOutput]:
        raise NotImplementedError(f"{type(self).__name__} must define generate_batch()")

    async def agenerate_batch(
        self, inputs: list[ChatType], num_generations: int = 1, **kwargs: Any
    ) -> list[Union[GenerateOutput, BaseException]]:
        if self._engine_lock is None:
            self._engine_lock = asyncio.Lock()
        async with self._engine_lock:
            return list(await asyncio.to_thread(self.generate_batch, inputs, num_generations, **kwargs))

    def generate(self, inputs: list[ChatType], num_generations: int = 1, **kwargs: Any) -> list[GenerateOutput]:
        return self.generate_batch(inputs, num_generations, **{**self.generation_kwargs, **kwargs})

    def generate_raw_batch(self, prompts: list[str], num_generations: int = 1,
                           **kwargs: Any) -> list[Union[GenerateOutput, BaseException]]:
        raise NotImplementedError(f"{type(self).__name__} does not generate from raw prompts")

    async def agenerate_raw(
        self, prompts: list[str], num_generations: int = 1, **kwargs: Any
    ) -> list[Union[GenerateOutput, BaseException]]:
        if self._engine_lock is None:
            self._engine_lock = asyncio.Lock()
        async with self._engine_lock:
            return list(await asyncio.to_thread(self.generate_raw_batch, prompts, num_generations, **kwargs))


class Embeddings(BaseModel):
    """A model that turns texts into vectors."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", protected_namespaces=())

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset()

    @property
    def model_name(self) -> str:
        raise NotImplementedError

    @classmethod
    def runtime_parameter_names(cls) -> list[str]:
        return _runtime_parameter_names(cls)

    def load(self) -> None:
        pass

    def unload(self) -> None:
        pass

    def signature_fields(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name not in self.NOT_IN_SIGNATURE and not isinstance(getattr(self, name), SecretStr)
        }

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()  # a loaded model stays behind: the copy loads its own
        state["__pydantic_private__"] = dict.fromkeys(state.get("__pydantic_private__") or {})
        return state

    def __repr__(self) -> str:
        shown = {k: _without_userinfo(v) for k, v in self.signature_fields().items()}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def encode(self, inputs: list[str]) -> list[list[float]]:
        raise NotImplementedError(f"{type(self).__name__} must define encode()")
