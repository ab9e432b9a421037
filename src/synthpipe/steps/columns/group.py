"""Steps that join the aligned rows of several predecessors into one row."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, model_validator

from synthpipe.steps.base import Step, StepInput, StepOutput
from synthpipe.steps.columns._util import METADATA_KEY, merge_metadata, missing_column


def _check_aligned(step: Step, inputs: tuple[list[dict[str, Any]], ...]) -> None:
    sizes = [len(rows) for rows in inputs]
    if len(set(sizes)) > 1:
        raise ValueError(f"step '{step.name}': its predecessors sent batches of different sizes {sizes}; "
                         "rows can only be joined one to one (filter after joining, not before)")


class GroupColumns(Step):
    """For each of ``columns``, a list of that column's value in every predecessor's row
    (``grouped_<column>`` unless ``output_columns`` names them); other columns come from the
    first predecessor that has them."""

    columns: list[str] = Field(min_length=1)
    # Stored as ``grouped_names``: ``output_columns`` is the engine's method on every step; the
    # distilabel spelling still works as the constructor argument.
    grouped_names: Optional[list[str]] = Field(default=None, alias="output_columns")

    @model_validator(mode="after")
    def _same_length(self) -> GroupColumns:
        if self.grouped_names is not None and len(self.grouped_names) != len(self.columns):
            raise ValueError("output_columns must name one output per column in columns")
        return self

    @property
    def inputs(self) -> list[str]:
        return list(self.columns)

    @property
    def outputs(self) -> list[str]:
        return list(self.grouped_names or [f"grouped_{c}" for c in self.columns])

    def process(self, *inputs: StepInput) -> StepOutput:
        _check_aligned(self, inputs)
        outputs = self.outputs
        result = []
        for i, rows in enumerate(zip(*inputs, strict=True)):
            merged: dict[str, Any] = {}
            for row in rows:
                for key, value in row.items():
                    if key not in self.columns and key != METADATA_KEY:
                        merged.setdefault(key, value)
                merge_metadata(merged, row)
            for column, out in zip(self.columns, outputs, strict=True):
                for row in rows:
                    if column not in row:
                        raise missing_column(self, column, i, row)
                merged[out] = [row[column] for row in rows]
            result.append(merged)
        yield result


class CombineOutputs(Step):
    """One row from the aligned rows of all predecessors: their columns side by side (a later
    predecessor wins a clash) and their ``distilabel_metadata`` merged."""

    def process(self, *inputs: StepInput) -> StepOutput:
        _check_aligned(self, inputs)
        result = []
        for rows in zip(*inputs, strict=True):
            combined: dict[str, Any] = {}
            for row in rows:
                combined.update({k: v for k, v in row.items() if k != METADATA_KEY})
                merge_metadata(combined, row)
            result.append(combined)
        yield result
