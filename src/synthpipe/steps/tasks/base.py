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

from synthpipe.errors import SynthpipeError
from synthpipe.models.base import LLM, ChatType, GenerateOutput, InvalidStructuredOutput, StructuredOutput
from synthpipe.models.cache import cache_for, generate_cached
from synthpipe.steps.base import OnError, RowFailure, Step, StepInput, StepResult, column_spec
from synthpipe.worker_context import current_row_start

METADATA_COLUMN = "synthpipe_metadata"
ROWS_PER_REQUEST_SLOT = 32
"""The default window: rows held per request the LLM may have in flight. A row whose answer is
slow holds its batch; 32 rows a slot keep the slots busy while 2 % of the requests wait seconds."""
_TASK_SCHEMA_NAME = "task_output"  # the name a task's own default schema goes by


class IncompleteAnswer(SynthpipeError):
    """The model answered without what was asked: fewer generations, or no text."""


class InputTypeError(SynthpipeError, TypeError):
    """A column a task formats into its prompt holds a value of another type: its row fails
    before any request is made (nothing paid for a prompt made of the wrong value)."""


def _article(name: str) -> str:
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


class UnparsableAnswer(SynthpipeError):
    """An answer a task could not turn into its columns. The row fails on its own (the raw
    text is kept, in the message and in ``raw_output``), and the answer is not cached, so a
    retry asks again."""

    def __init__(self, message: str, raw_output: str | None = None) -> None:
        shown = raw_output if raw_output is None or len(raw_output) <= 2000 else raw_output[:2000] + "..."
        super().__init__(f"{message}; raw output: {shown!r}")
        self.raw_output = raw_output

    def __reduce__(self) -> Any:
        return (_rebuild_unparsable, (str(self), self.raw_output))


def _rebuild_unparsable(message: str, raw_output: str | None) -> UnparsableAnswer:
    error = UnparsableAnswer.__new__(UnparsableAnswer)
    SynthpipeError.__init__(error, message)
    error.raw_output = raw_output
    return error


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
    use_default_structured_output: bool = True
    max_rows_in_flight: Optional[int] = Field(default=None, ge=1)
    """Rows a replica holds at once, answered or waiting (None: ``ROWS_PER_REQUEST_SLOT`` per request
    the LLM may have in flight). Batches keep their boundaries and order, but while one waits on a
    slow answer the requests of later ones go out, so a few stragglers do not empty the window."""

    # -- what tasks define ------------------------------------------------------------

    def format_input(self, row: dict[str, Any]) -> ChatType:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define format_input()")

    def format_output(self, output: str | None, row: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must define format_output()")

    @property
    def task_outputs(self) -> list[str]:
        """The columns ``format_output`` returns."""
        return []

    def prompt_column_types(self) -> dict[str, tuple[type, ...]]:
        """The columns ``format_input`` puts into the prompt as they are, and the types they
        must hold (a missing or None value is left to ``format_input``). A row with another
        type fails on its own, before its request."""
        return {}

    def _check_prompt_types(self, row: dict[str, Any], index: int) -> None:
        for column, types in self.prompt_column_types().items():
            value = row.get(column)
            if value is not None and not isinstance(value, types):
                start = current_row_start()
                where = f"row {start + index}" if start is not None else f"row {index} of its batch"
                wanted = " or ".join(t.__name__ for t in types)
                shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
                raise InputTypeError(f"step '{self.name}', {where}: column '{column}' holds "
                                     f"{_article(type(value).__name__)} ({shown}), not {_article(wanted)}: "
                                     "it goes into the prompt as it is; no request was made for this row")

    def get_structured_output(self) -> dict[str, Any] | None:
        """The JSON schema of this task's answer, for a task whose answer has a shape (ratings,
        a list, a label); None for free text. Asked for as structured output where the backend
        supports it, so real models fail fewer rows than with a text format to follow."""
        return None

    @property
    def uses_structured_output(self) -> bool:
        """Whether the answer comes back as JSON of ``get_structured_output()``: the task's
        default is on, the backend can constrain its output, and the user set no schema of
        their own. ``format_input`` then asks for JSON, ``format_output`` parses JSON; otherwise
        both use the task's text format."""
        if not self.use_default_structured_output or self.get_structured_output() is None:
            return False
        user_schema = self.llm.structured_output
        if user_schema is not None and user_schema.name != _TASK_SCHEMA_NAME:
            return False
        return self.llm.supports_structured_output()

    # -- the step ---------------------------------------------------------------------

    @property
    def outputs(self) -> list[str]:
        return [*self.task_outputs, "model_name", METADATA_COLUMN]

    def _task_schema(self) -> StructuredOutput:
        return StructuredOutput(json_schema=self.get_structured_output(), name=_TASK_SCHEMA_NAME)

    def llm_as_run(self) -> LLM:
        """The LLM as the worker runs it (with the task's own schema where it asks for one): what
        the coordinator must look at to know the model set-up the stored answers belong to."""
        if self.uses_structured_output and self.llm.structured_output is None:
            return self.llm.model_copy(update={"structured_output": self._task_schema()})
        return self.llm

    def load(self) -> None:
        if self.uses_structured_output and self.llm.structured_output is None:  # the worker's own copy
            self.llm.structured_output = self._task_schema()
        self.llm.share_limits(self.resources.replicas)  # the endpoint's limits hold for all replicas together
        self.llm.load()
        cache_for(self.llm, read=self.use_cache)  # index the stored answers now, not on the first batch

    def unload(self) -> None:
        self.llm.unload()

    def batches_at_once(self) -> int:
        """Enough batches to keep the LLM's concurrency busy while earlier batches wait on their
        stragglers: ``max_rows_in_flight`` rows, at least the concurrency's worth and one batch more."""
        per_replica = self.llm.concurrency() / self.resources.replicas
        rows_wanted = per_replica / self.llm.requests_per_row(self.num_generations)
        least = math.ceil(rows_wanted / self.input_batch_size) + 1
        window = self.max_rows_in_flight or math.ceil(rows_wanted * ROWS_PER_REQUEST_SLOT)
        return max(2, least, math.ceil(window / self.input_batch_size))

    async def aprocess(self, inputs: StepInput) -> StepResult:  # type: ignore[override]
        failures: list[RowFailure] = []
        chats: list[tuple[int, ChatType]] = []
        for index, row in enumerate(inputs):
            try:
                self._check_prompt_types(row, index)
                chats.append((index, self.format_input(row)))
            except Exception as exc:
                failures.append(RowFailure(index, exc))
        kwargs = dict(self.llm.generation_kwargs)
        start = current_row_start()

        def accept(i: int, answer: GenerateOutput) -> list[dict[str, Any]]:
            index, chat = chats[i]
            return self._rows_for(inputs[index], chat, answer)

        results = await generate_cached(
            self.llm, [chat for _, chat in chats], self.num_generations, accept,
            positions=[start + index for index, _ in chats] if start is not None else None,
            read=self.use_cache, **kwargs)
        out_by_index: dict[int, list[dict[str, Any]]] = {}
        for (index, _), result in zip(chats, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(RowFailure(index, result))
            else:
                out_by_index[index] = result
        order = sorted(out_by_index)
        rows = [row for index in order for row in out_by_index[index]]
        sources = [index for index in order for _ in out_by_index[index]]
        return StepResult(rows, sorted(failures, key=lambda f: f.index), sources)

    def _rows_for(self, row: dict[str, Any], chat: ChatType, result: GenerateOutput) -> list[dict[str, Any]]:
        generations = list(result.get("generations") or [])
        statistics = result.get("statistics") or {}
        structured = self.llm.structured_output
        if len(generations) != self.num_generations:  # a server that ignores n, an empty answer
            raise IncompleteAnswer(f"asked {self.llm.model_name} for {self.num_generations} generation(s), "
                                   f"it returned {len(generations)}")
        formatted = []
        for i, text in enumerate(generations):
            if structured is not None:
                try:
                    structured.validate_text(text)
                except InvalidStructuredOutput as exc:
                    raise InvalidStructuredOutput(f"{exc} (generation {i}; 1 attempt: an answer that does not "
                                                  "fit is not retried in this run)", exc.raw_output) from None
            elif text is None:  # a refusal, a content filter: never a silent None
                raise IncompleteAnswer(f"{self.llm.model_name} returned no text (generation {i})")
            formatted.append(self.format_output(text, row))
        metadata_base = dict(row.get(METADATA_COLUMN) or {})
        if self.add_raw_input:
            metadata_base[f"raw_input_{self.name}"] = chat

        def metadata(part: slice | int) -> dict[str, Any]:
            """The metadata of one generation (an index) or of all of them (a slice)."""
            meta = dict(metadata_base)
            if self.add_raw_output:
                meta[f"raw_output_{self.name}"] = generations[part]
            stats = {k: list(v)[part] for k, v in statistics.items()
                     if isinstance(v, (list, tuple)) and len(v) == len(generations)}
            if stats:  # a backend that counts no tokens adds nothing (Parquet has no empty struct)
                meta[f"statistics_{self.name}"] = stats
            return meta

        if self.group_generations or self.num_generations == 1:
            if self.num_generations == 1 and not self.group_generations:
                columns = formatted[0]
                return [{**row, **columns, "model_name": self.llm.model_name, METADATA_COLUMN: metadata(0)}]
            grouped = {key: [f.get(key) for f in formatted] for key in column_spec(self.task_outputs)}
            return [{**row, **grouped, "model_name": self.llm.model_name, METADATA_COLUMN: metadata(slice(None))}]
        return [{**row, **columns, "model_name": self.llm.model_name, METADATA_COLUMN: metadata(i)}
                for i, columns in enumerate(formatted)]
