"""``KeepColumns``: drop every column but the named ones, in the named order."""

from __future__ import annotations

from pydantic import Field

from synthpipe.steps.base import Step, StepInput, StepOutput
from synthpipe.steps.columns._util import missing_column


class KeepColumns(Step):
    """Keeps only ``columns`` (in that order), e.g. to shape the final dataset."""

    columns: list[str] = Field(min_length=1)

    @property
    def inputs(self) -> list[str]:
        return list(self.columns)

    @property
    def outputs(self) -> list[str]:
        return list(self.columns)

    def process(self, inputs: StepInput) -> StepOutput:
        kept = []
        for i, row in enumerate(inputs):
            try:
                kept.append({c: row[c] for c in self.columns})
            except KeyError as exc:
                raise missing_column(self, str(exc.args[0]), i, row) from None
        yield kept
