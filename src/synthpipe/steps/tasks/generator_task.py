"""``GeneratorTask``: an LLM task that needs no input rows, so it can be a pipeline's first step.

Design: a ``GeneratorStep`` holding an ``llm``. ``prompts()`` gives the requests of the step's
one batch, each asked ``num_generations`` times in one event loop through the response cache
(the LLM's concurrency is used across them), and ``format_output`` turns each answer into
rows. A generator has no input row to fail on its own, so a request that keeps failing or an
answer that cannot be used stops the step with that error (``UnparsableAnswer`` keeps the raw
text); the answers that were fine stay cached, so a rerun only asks for the others.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

from pydantic import Field

from synthpipe.models.base import LLM, ChatType, InvalidStructuredOutput, StructuredOutput
from synthpipe.steps.base import GeneratorStep, GeneratorStepOutput
from synthpipe.steps.tasks.base import _TASK_SCHEMA_NAME, METADATA_COLUMN, IncompleteAnswer


class GeneratorTask(GeneratorStep):
    """Subclasses define ``prompts()``, ``task_outputs`` and ``format_output(text) -> rows``;
    ``get_structured_output()`` for a shaped answer (as for ``Task``)."""

    llm: LLM
    num_generations: int = Field(default=1, ge=1)
    add_raw_output: bool = True
    add_raw_input: bool = True
    use_default_structured_output: bool = True

    def prompts(self) -> list[ChatType]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define prompts()")

    def format_output(self, output: str | None) -> list[dict[str, Any]]:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define format_output()")

    @property
    def task_outputs(self) -> list[str]:
        return []

    def get_structured_output(self) -> Optional[dict[str, Any]]:
        return None

    @property
    def uses_structured_output(self) -> bool:
        """As ``Task.uses_structured_output``: the default schema is on, the backend can
        constrain its output, and the user set no schema of their own."""
        if not self.use_default_structured_output or self.get_structured_output() is None:
            return False
        user_schema = self.llm.structured_output
        if user_schema is not None and user_schema.name != _TASK_SCHEMA_NAME:
            return False
        return self.llm.supports_structured_output()

    @property
    def outputs(self) -> list[str]:
        return [*self.task_outputs, "model_name", METADATA_COLUMN]

    def load(self) -> None:
        if self.uses_structured_output and self.llm.structured_output is None:
            self.llm.structured_output = StructuredOutput(json_schema=self.get_structured_output(),
                                                          name=_TASK_SCHEMA_NAME)
        self.llm.load()

    def unload(self) -> None:
        self.llm.unload()

    def _answers(self, chats: list[ChatType]) -> list[list[str]]:
        from synthpipe.models.cache import generate_cached

        structured = self.llm.structured_output

        def accept(i: int, answer: Any) -> list[str]:
            texts = list(answer.get("generations") or [])
            if len(texts) != self.num_generations:
                raise IncompleteAnswer(f"asked {self.llm.model_name} for {self.num_generations} generation(s), "
                                       f"it returned {len(texts)}")
            for j, text in enumerate(texts):
                if text is None:
                    raise IncompleteAnswer(f"{self.llm.model_name} returned no text (generation {j})")
                if structured is not None:
                    try:
                        structured.validate_text(text)
                    except InvalidStructuredOutput as exc:
                        raise InvalidStructuredOutput(f"step '{self.name}': {exc} (generation {j})",
                                                      exc.raw_output) from None
            for text in texts:  # a text the task cannot use is not cached either
                self.format_output(text)
            return texts

        results = asyncio.run(generate_cached(  # type: ignore[arg-type]
            self.llm, chats, self.num_generations, accept, positions=[f"{self.name}:{i}" for i in range(len(chats))],
            read=self.use_cache, **dict(self.llm.generation_kwargs)))
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        chats = self.prompts()
        rows: list[dict[str, Any]] = []
        for chat, texts in zip(chats, self._answers(chats), strict=True):
            for text in texts:
                meta: dict[str, Any] = {}
                if self.add_raw_input:
                    meta[f"raw_input_{self.name}"] = chat
                if self.add_raw_output:
                    meta[f"raw_output_{self.name}"] = text
                for columns in self.format_output(text):
                    rows.append({**columns, "model_name": self.llm.model_name, METADATA_COLUMN: dict(meta)})
        rows = rows[offset:]  # a resumed run: the rows before offset are stored already
        if not rows:
            yield [], True
        for start in range(0, len(rows), self.batch_size):
            yield rows[start:start + self.batch_size], start + self.batch_size >= len(rows)
