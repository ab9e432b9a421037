"""The in-memory loader: a generator over rows the user already holds. It sits in the definition
layer because ``Pipeline.run(dataset=...)`` needs it; ``synthpipe.steps`` re-exports it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from synthpipe.steps.base import GeneratorStep, GeneratorStepOutput


class LoadDataFromDicts(GeneratorStep):
    """Yields the given rows in batches of ``batch_size``, in order."""

    data: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("data")
    @classmethod
    def _rows_are_dicts(cls, value: list[Any]) -> list[dict[str, Any]]:
        for i, row in enumerate(value):
            if not isinstance(row, dict):
                raise ValueError(f"row {i} is a {type(row).__name__}, not a dict")
        return value

    @property
    def outputs(self) -> list[str]:
        columns: dict[str, None] = {}
        for row in self.data[:1000]:
            columns.update(dict.fromkeys(row))
        return list(columns)

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        size = self.batch_size
        total = len(self.data)
        if offset >= total:
            yield [], True
            return
        for start in range(offset, total, size):
            end = min(start + size, total)
            # Copies, so the user's list is never mutated by downstream steps.
            yield [dict(row) for row in self.data[start:end]], end >= total


# Its public home, the name step signatures and pipeline files have always used for it (a stored
# run resumes across this move); that module re-exports this class.
LoadDataFromDicts.__module__ = "synthpipe.steps.generators.data"
