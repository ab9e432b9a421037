"""``MergeColumns``: several columns of a row into one list column."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from synthpipe.steps.base import Step, StepInput, StepOutput
from synthpipe.steps.columns._util import missing_column


class MergeColumns(Step):
    """Puts the values of ``columns`` into one list in ``output_column`` (a list value is spread
    into it, a scalar appended) and drops the merged columns."""

    columns: list[str] = Field(min_length=1)
    output_column: str = "combined_key"

    @property
    def inputs(self) -> list[str]:
        return list(self.columns)

    @property
    def outputs(self) -> list[str]:
        return [self.output_column]

    def process(self, inputs: StepInput) -> StepOutput:
        for i, row in enumerate(inputs):
            merged: list[Any] = []
            for column in self.columns:
                if column not in row:
                    raise missing_column(self, column, i, row)
                value = row.pop(column)
                merged.extend(value if isinstance(value, (list, tuple)) else [value])
            row[self.output_column] = merged
        yield inputs
