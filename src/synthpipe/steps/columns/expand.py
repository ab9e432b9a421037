"""``ExpandColumns``: one row per item of list columns."""

from __future__ import annotations

import copy
import json
import math
from itertools import zip_longest
from typing import Any, Union

from pydantic import field_validator, model_validator

from synthpipe.steps.base import Step, StepInput, StepOutput
from synthpipe.steps.columns._util import METADATA_KEY, missing_column, wrong_type

_TOKEN_KEYS = ("input_tokens", "output_tokens")


class ExpandColumns(Step):
    """Turns a row whose ``columns`` hold lists into one row per item (columns expanded together,
    item by item; a shorter list gives ``None`` past its end).

    ``columns`` is a list, or a dict ``{column: new_name}``. ``encoded`` (True, or a list of
    columns) says which columns hold JSON-encoded lists. ``split_statistics`` divides the token
    counts in ``distilabel_metadata["statistics_*"]`` among the new rows (rounded up), so that
    summing them afterwards does not multiply an LLM call's tokens by the number of items.
    """

    columns: Union[dict[str, str], list[str]]
    encoded: Union[bool, list[str]] = False
    split_statistics: bool = False

    @field_validator("columns")
    @classmethod
    def _as_dict(cls, value: Union[dict[str, str], list[str]]) -> dict[str, str]:
        if isinstance(value, list):
            value = {c: c for c in value}
        if not value:
            raise ValueError("columns must name at least one column to expand")
        return {k: v or k for k, v in value.items()}

    @model_validator(mode="after")
    def _encoded_subset(self) -> ExpandColumns:
        if isinstance(self.encoded, list):
            unknown = sorted(set(self.encoded) - set(self.columns))
            if unknown:
                raise ValueError(f"encoded names {unknown}, which are not among the columns to expand")
        return self

    @property
    def inputs(self) -> list[str]:
        return list(self.columns)

    @property
    def outputs(self) -> list[str]:
        return list(self.columns.values())  # type: ignore[union-attr]

    def _encoded_columns(self) -> set[str]:
        if self.encoded is True:
            return set(self.columns)
        return set(self.encoded) if isinstance(self.encoded, list) else set()

    def _values(self, row: dict[str, Any], index: int) -> list[list[Any]]:
        encoded = self._encoded_columns()
        values = []
        for column in self.columns:
            if column not in row:
                raise missing_column(self, column, index, row)
            value = row[column]
            if column in encoded:
                try:
                    value = json.loads(value)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"step '{self.name}': column '{column}' of row {index} is not "
                                     f"valid JSON ({exc}): {value!r:.80}") from None
            if not isinstance(value, (list, tuple)):
                raise wrong_type(self, column, index, "lists", value)
            values.append(list(value))
        return values

    def process(self, inputs: StepInput) -> StepOutput:
        out: list[dict[str, Any]] = []
        for index, row in enumerate(inputs):
            values = self._values(row, index)
            items = list(zip_longest(*values))
            base = {k: v for k, v in row.items() if k not in self.columns}
            for item in items:
                new = copy.deepcopy(base) if self.split_statistics else dict(base)
                for new_name, value in zip(self.columns.values(), item, strict=True):  # type: ignore[union-attr]
                    new[new_name] = value
                if self.split_statistics:
                    _split_statistics(new, len(items))
                out.append(new)
        yield out


def _split_statistics(row: dict[str, Any], parts: int) -> None:
    metadata = row.get(METADATA_KEY)
    if not isinstance(metadata, dict) or parts <= 1:
        return
    for key, stats in metadata.items():
        if not key.startswith("statistics_") or not isinstance(stats, dict):
            continue
        for token_key in _TOKEN_KEYS:
            value = stats.get(token_key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                stats[token_key] = math.ceil(value / parts)
            elif isinstance(value, list):
                stats[token_key] = [math.ceil(v / parts) if isinstance(v, (int, float)) else v for v in value]
