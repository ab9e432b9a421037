"""Steps: the units of work of a pipeline, with the names distilabel users know.

A step is a pydantic model (its parameters are validated fields) with a ``process``
generator. ``Step`` transforms batches of rows, ``GeneratorStep`` produces them and
``GlobalStep`` receives every row at once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NamedTuple, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from synthpipe.errors import PipelineDefinitionError
from synthpipe.steps.output_shape import check_rows, generator_batches, step_rows

if TYPE_CHECKING:
    from synthpipe.pipeline.base import Pipeline

_T = TypeVar("_T")


class _RuntimeParameterMarker:
    """Marks a field that can be set at ``pipeline.run(parameters=...)`` time."""

    def __repr__(self) -> str:
        return "RuntimeParameter"


RUNTIME_PARAMETER = _RuntimeParameterMarker()
RuntimeParameter = Annotated[Union[_T, None], RUNTIME_PARAMETER]
"""``RuntimeParameter[int]``: a field whose value may be given when the pipeline runs."""

StepInput = Annotated[list[dict[str, Any]], "StepInput"]
"""The rows of one input batch, as a list of dicts (one per row)."""

StepOutput = Iterator[list[dict[str, Any]]]
GeneratorStepOutput = Iterator[tuple[list[dict[str, Any]], bool]]
"""A generator step yields ``(rows, is_last_batch)``."""


class RowFailure(NamedTuple):
    """One input row that failed while the rest of its batch went on (an LLM request that
    still failed after its retries): ``index`` is its position in the batch's first input."""

    index: int
    error: BaseException


class StepResult(NamedTuple):
    """What ``aprocess`` returns: the output rows, the input rows that failed, and (optional)
    for each output row the position of the input row it came from (rows retried later are
    put back in order by it)."""

    rows: list[dict[str, Any]]
    failures: list[RowFailure]
    sources: Optional[list[int]] = None


OnError = Literal["fail", "skip"]
StepKind = Literal["generator", "normal", "global"]


class StepResources(BaseModel):
    """How many worker processes a step gets (more later: CPUs, GPUs, memory)."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(default=1, ge=1)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def column_spec(columns: Any) -> dict[str, bool]:
    """Normalise ``inputs``/``outputs`` (a list, or a dict of name -> required) to a dict."""
    if columns is None:
        return {}
    if isinstance(columns, dict):
        return {str(k): bool(v) for k, v in columns.items()}
    return {str(c): True for c in columns}


class _Step(BaseModel):
    """What every kind of step shares: a name, resources, mappings and the failure policy.

    Failure policy: ``on_error`` ("fail" or "skip") decides what a batch that cannot succeed
    does to the run; ``retries`` (with ``retry_delay`` seconds, doubling) retries a batch that
    raised; ``timeout`` (seconds per batch) kills a worker whose batch runs too long, and
    ``load_timeout`` one whose ``load()`` does;
    ``max_restarts`` retries a batch whose worker died before its rows are isolated (skip)
    or the run stops (fail); ``max_failed_rows`` / ``max_failure_rate`` stop a run whose
    failed rows pile up (the rate is judged once 50 rows have been seen).
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, validate_assignment=True, extra="forbid"
    )

    step_kind: ClassVar[StepKind] = "normal"

    name: Optional[str] = None
    resources: StepResources = Field(default_factory=StepResources)
    input_mappings: dict[str, str] = Field(default_factory=dict)
    output_mappings: dict[str, str] = Field(default_factory=dict)
    on_error: Optional[OnError] = None
    timeout: Optional[float] = Field(default=None, gt=0)
    load_timeout: Optional[float] = Field(default=None, gt=0)
    retries: int = Field(default=0, ge=0)
    retry_delay: float = Field(default=1.0, ge=0)
    max_restarts: int = Field(default=1, ge=0)
    max_failed_rows: Optional[int] = Field(default=None, ge=0)
    max_failure_rate: Optional[float] = Field(default=0.5, ge=0, le=1)
    use_cache: bool = True

    _pipeline: Any = PrivateAttr(default=None)

    def __init__(self, pipeline: Pipeline | None = None, **data: Any) -> None:
        super().__init__(**data)
        from synthpipe.pipeline.base import current_pipeline

        pipeline = pipeline or current_pipeline()
        if pipeline is not None:
            pipeline._add_step(self)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_\-]+", value):
            raise ValueError(
                f"step name {value!r} may only hold letters, digits, '_' and '-'"
            )
        return value

    # -- what users override -------------------------------------------------------------

    @property
    def inputs(self) -> list[str] | dict[str, bool]:
        """Columns the step reads (a dict maps a column to whether it is required)."""
        return []

    @property
    def outputs(self) -> list[str] | dict[str, bool]:
        """Columns the step adds or changes."""
        return []

    def input_problems(self, available: set[str]) -> list[str]:
        """What is wrong with the columns the steps before this one produce (``available``, as
        named in the data), beyond a missing required column: for a step whose inputs are
        alternatives. Checked with the pipeline, before anything runs; none by default."""
        return []

    def load(self) -> None:
        """Runs once in the worker process before any batch (open clients, load models)."""

    def batches_at_once(self) -> int:
        """How many batches one worker holds at a time (0: the engine's default). Steps whose
        work is mostly waiting (LLM requests) take more, to keep requests flowing across
        batches instead of waiting for each batch's slowest request."""
        return 0

    def unload(self) -> None:
        """Runs once in the worker process after the last batch."""

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"synthpipe.step.{self.name}")

    def save_artifact(self, name: str, write_function: Callable[[Path], None],
                      metadata: dict[str, Any] | None = None) -> None:
        """Keep files this step made (a fitted model, a figure) beside the run's data, as
        distilabel's ``save_artifact`` does: ``write_function(folder)`` writes them, and they land
        in ``<run dir>/artifacts/<step name>/<name>/`` with ``metadata.json``
        (``distiset.artifacts_path``). Outside a run there is no run directory: a warning says
        the files were not kept."""
        from synthpipe.worker_context import save_artifact

        if not save_artifact(str(self.name), name, write_function, metadata):
            self.logger.warning("step '%s': artifact '%s' not kept: the step is not running in a pipeline",
                                self.name, name)

    # -- what the engine uses ------------------------------------------------------------

    @property
    def pipeline(self) -> Pipeline | None:
        return self._pipeline

    def default_name(self) -> str:
        return _snake_case(type(self).__name__)

    @property
    def effective_on_error(self) -> OnError:
        """The policy in force: generators and global steps always stop the run."""
        if self.step_kind != "normal":
            return "fail"
        return self.on_error or "fail"

    @classmethod
    def runtime_parameter_names(cls) -> list[str]:
        return [
            name
            for name, info in cls.model_fields.items()
            if any(m is RUNTIME_PARAMETER for m in info.metadata)
        ]

    def input_columns(self) -> dict[str, bool]:
        """Input columns as found in the data, after ``input_mappings``."""
        return {self.input_mappings.get(c, c): req for c, req in column_spec(self.inputs).items()}

    def output_columns(self) -> list[str]:
        """Output columns as written to the data, after ``output_mappings``."""
        return [self.output_mappings.get(c, c) for c in column_spec(self.outputs)]

    def detached(self) -> _Step:
        """A copy without the pipeline link, fit to ship to a worker process."""
        clone = self.model_copy()
        clone._pipeline = None
        for name in type(self).model_fields:  # models inside (an LLM) get runtime parameters too
            value = getattr(clone, name)
            if isinstance(value, BaseModel) and hasattr(value, "runtime_parameter_names"):
                object.__setattr__(clone, name, value.model_copy())
        return clone

    # -- connecting steps ----------------------------------------------------------------

    def connect(self, *others: _Step) -> None:
        for other in others:
            if not isinstance(other, _Step):
                raise PipelineDefinitionError(
                    f"cannot connect step '{self.name}' to {type(other).__name__!r}: not a step"
                )
            if self._pipeline is None or other._pipeline is not self._pipeline:
                raise PipelineDefinitionError(
                    f"steps '{self.name}' and '{other.name}' are not in the same pipeline; "
                    "create both inside the same `with Pipeline(...):` block"
                )
            self._pipeline._add_edge(self.name, other.name)

    def __rshift__(self, other: Any) -> Any:
        if getattr(type(other), "_routes_batches", False):  # step >> routing_function >> [...]
            return NotImplemented
        if isinstance(other, (list, tuple)):
            self.connect(*other)
            return other
        self.connect(other)
        return other

    def __rrshift__(self, other: Any) -> _Step:
        if not isinstance(other, (list, tuple)):
            return NotImplemented
        for predecessor in other:
            if not isinstance(predecessor, _Step):
                raise PipelineDefinitionError(f"cannot connect {predecessor!r} to step '{self.name}'")
            predecessor.connect(self)
        return self

    # -- running one batch (called in the worker) ------------------------------------

    def _rename_inputs(self, rows: list[dict[str, Any]], reverse: bool = False) -> None:
        for step_column, data_column in self.input_mappings.items():
            src, dst = (step_column, data_column) if reverse else (data_column, step_column)
            for row in rows:
                if src in row:
                    row[dst] = row.pop(src)

    def _rename_outputs(self, rows: list[dict[str, Any]]) -> None:
        for step_column, data_column in self.output_mappings.items():
            for row in rows:
                if step_column in row:
                    row[data_column] = row.pop(step_column)


class Step(_Step):
    """Transforms batches of rows: ``process(inputs)`` yields the rows to pass on.

    A step with several predecessors receives one list per predecessor,
    ``process(*inputs)``, aligned by the generator batch the rows came from (after a routing
    batch function: one list per branch the routed batch went to, see ``pipeline.routing``).
    """

    input_batch_size: RuntimeParameter[int] = Field(default=50, ge=1)

    is_async: ClassVar[bool] = False
    """True for steps defining ``async def aprocess(*inputs) -> StepResult`` instead of
    ``process``: their worker runs an event loop and works on several batches at once."""

    def process(self, *inputs: StepInput) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define process()")

    async def aprocess(self, *inputs: StepInput) -> StepResult:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define aprocess()")

    def process_applying_mappings(self, *inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run ``process`` on one batch with column mappings applied; collect all it yields."""
        for rows in inputs:
            self._rename_inputs(rows)
        out = step_rows(str(self.name), self.process(*inputs))
        self._restore_names(inputs, out)
        check_rows(str(self.name), out, self._declared_outputs())
        return out

    def _declared_outputs(self) -> dict[str, bool]:
        """Output columns as written to the data, with whether each is required."""
        return {self.output_mappings.get(c, c): req for c, req in column_spec(self.outputs).items()}

    async def aprocess_applying_mappings(self, *inputs: list[dict[str, Any]]) -> StepResult:
        """``aprocess`` on one batch, with column mappings applied."""
        for rows in inputs:
            self._rename_inputs(rows)
        result = await self.aprocess(*inputs)
        if not isinstance(result, tuple) or len(result) not in (2, 3) or not isinstance(result[1], (list, tuple)):
            result = StepResult(step_rows(str(self.name), result), [])
        rows = step_rows(str(self.name), list(result[0]))
        self._restore_names(inputs, rows)
        check_rows(str(self.name), rows, self._declared_outputs())
        sources = result[2] if len(result) > 2 else None
        if sources is not None and len(sources) != len(rows):
            sources = None  # not one per row: the engine falls back to its own rule
        return StepResult(rows, list(result[1]), sources)

    def _restore_names(self, inputs: tuple[list[dict[str, Any]], ...], out: list[dict[str, Any]]) -> None:
        for rows in inputs:
            self._rename_inputs(rows, reverse=True)
        self._rename_inputs(out, reverse=True)
        self._rename_outputs(out)


class GlobalStep(Step):
    """Receives every row of its predecessors in one batch (dedup, sort, statistics)."""

    step_kind: ClassVar[StepKind] = "global"


class GeneratorStep(_Step):
    """Produces rows: ``process(offset)`` yields ``(rows, is_last_batch)``."""

    step_kind: ClassVar[StepKind] = "generator"

    batch_size: RuntimeParameter[int] = Field(default=50, ge=1)

    def process(self, offset: int = 0) -> GeneratorStepOutput:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must define process()")

    def generate_applying_mappings(self, offset: int = 0) -> Iterator[tuple[list[dict[str, Any]], bool]]:
        for rows, last in generator_batches(str(self.name), self.process(offset=offset)):
            self._rename_outputs(rows)
            check_rows(str(self.name), rows, {})
            yield rows, last


AnyStep = Union[Step, GlobalStep, GeneratorStep]
