"""Tasks: steps that turn each row into a prompt, ask an LLM, and turn the answer into columns.

A task's worker works on several batches at once and keeps up to the LLM's concurrency of
requests in flight across them; a row whose request still fails after the LLM's retries
(or whose answer does not match the structured-output schema) is a failed row on its own,
in the failed-rows ledger with its error, while the rest of its batch goes on.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Optional

from pydantic import Field

from synthpipe.models.base import LLM, ChatType, GenerateOutput, InvalidStructuredOutput
from synthpipe.models.cache import generate_cached
from synthpipe.steps.base import OnError, RowFailure, Step, StepInput, StepResult, column_spec

METADATA_COLUMN = "synthpipe_metadata"


class Task(Step):
    """``format_input(row) -> chat``, the LLM, then ``format_output(text, row) -> columns``.

    ``num_generations`` answers per row: one row each (``group_generations=False``) or one
    row with lists (``True``). ``add_raw_output`` / ``add_raw_input`` keep the raw text and
    the prompt, and token counts are always kept, in the ``synthpipe_metadata`` column.
    """

    is_async: ClassVar[bool] = True

    llm: LLM
    num_generations: int = Field(default=1, ge=1)
    group_generations: bool = False
    add_raw_output: bool = True
    add_raw_input: bool = True
    on_error: Optional[OnError] = "skip"  # a failed request fails its row, not the run (the guard still watches)

    # -- what tasks define ------------------------------------------------------------

    def format_input(self, row: dict[str, Any]) -> ChatType:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define format_input()")

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must define format_output()")

    @property
    def task_outputs(self) -> list[str]:
        """The columns ``format_output`` returns."""
        return []

    # -- the step ---------------------------------------------------------------------

    @property
    def outputs(self) -> list[str]:
        return [*self.task_outputs, "model_name", METADATA_COLUMN]

    def load(self) -> None:
        self.llm.load()

    def unload(self) -> None:
        self.llm.unload()

    def batches_at_once(self) -> int:
        """Enough batches to keep the LLM's concurrency busy, and one more to overlap."""
        rows_wanted = self.llm.concurrency() / max(1, self.num_generations)
        return max(2, math.ceil(rows_wanted / self.input_batch_size) + 1)

    async def aprocess(self, inputs: StepInput) -> StepResult:  # type: ignore[override]
        failures: list[RowFailure] = []
        chats: list[tuple[int, ChatType]] = []
        for index, row in enumerate(inputs):
            try:
                chats.append((index, self.format_input(row)))
            except Exception as exc:
                failures.append(RowFailure(index, exc))
        kwargs = dict(self.llm.generation_kwargs)
        results = await generate_cached(self.llm, [chat for _, chat in chats], self.num_generations,
                                        read=self.use_cache, **kwargs)
        if len(results) != len(chats):
            raise RuntimeError(f"{type(self.llm).__name__} returned {len(results)} outputs for {len(chats)} inputs")
        out_by_index: dict[int, list[dict[str, Any]]] = {}
        for (index, chat), result in zip(chats, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(RowFailure(index, result))
                continue
            try:
                out_by_index[index] = self._rows_for(inputs[index], chat, result)
            except Exception as exc:
                failures.append(RowFailure(index, exc))
        rows = [row for index in sorted(out_by_index) for row in out_by_index[index]]
        return StepResult(rows, sorted(failures, key=lambda f: f.index))

    def _rows_for(self, row: dict[str, Any], chat: ChatType, result: GenerateOutput) -> list[dict[str, Any]]:
        generations = list(result.get("generations") or [])
        statistics = result.get("statistics") or {}
        structured = self.llm.structured_output
        formatted = []
        for i, text in enumerate(generations):
            if structured is not None:
                try:
                    structured.validate_text(text)
                except InvalidStructuredOutput as exc:
                    raise InvalidStructuredOutput(f"{exc} (generation {i})", exc.raw_output) from None
            formatted.append(self.format_output(text, row))
        metadata_base = dict(row.get(METADATA_COLUMN) or {})
        if self.add_raw_input:
            metadata_base[f"raw_input_{self.name}"] = chat

        def metadata(part: slice | int) -> dict[str, Any]:
            """The metadata of one generation (an index) or of all of them (a slice)."""
            meta = dict(metadata_base)
            if self.add_raw_output:
                meta[f"raw_output_{self.name}"] = generations[part]
            meta[f"statistics_{self.name}"] = {k: list(v)[part] for k, v in statistics.items()
                                               if isinstance(v, (list, tuple)) and len(v) == len(generations)}
            return meta

        if self.group_generations or self.num_generations == 1:
            if self.num_generations == 1 and not self.group_generations:
                columns = formatted[0] if formatted else self.format_output(None, row)
                return [{**row, **columns, "model_name": self.llm.model_name, METADATA_COLUMN: metadata(0)}]
            grouped = {key: [f.get(key) for f in formatted] for key in column_spec(self.task_outputs)}
            return [{**row, **grouped, "model_name": self.llm.model_name, METADATA_COLUMN: metadata(slice(None))}]
        return [{**row, **columns, "model_name": self.llm.model_name, METADATA_COLUMN: metadata(i)}
                for i, columns in enumerate(formatted)]
