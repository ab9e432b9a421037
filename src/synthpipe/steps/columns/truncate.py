"""``TruncateTextColumn``: cut a text column to a length in characters or in tokens."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import Field, PrivateAttr

from synthpipe.steps.base import Step, StepInput, StepOutput
from synthpipe.steps.columns._util import missing_column, wrong_type


class TruncateTextColumn(Step):
    """Keeps the first ``max_length`` characters of ``column`` or, with ``tokenizer`` (a name or
    path ``transformers.AutoTokenizer`` loads), its first ``max_length`` tokens decoded back
    to text — to fit a model's context before an expensive step."""

    column: str = "text"
    max_length: int = Field(default=8192, ge=1)
    tokenizer: Optional[str] = None

    _tokenizer: Any = PrivateAttr(default=None)

    @property
    def inputs(self) -> list[str]:
        return [self.column]

    @property
    def outputs(self) -> list[str]:
        return [self.column]

    def load(self) -> None:
        if self.tokenizer is not None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer)

    def _truncate(self, text: str) -> str:
        if self._tokenizer is None:
            return text[: self.max_length]
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        if len(ids) <= self.max_length:
            return text
        return self._tokenizer.decode(ids[: self.max_length], skip_special_tokens=True)

    def process(self, inputs: StepInput) -> StepOutput:
        if self.tokenizer is not None and self._tokenizer is None:
            self.load()
        for i, row in enumerate(inputs):
            if self.column not in row:
                raise missing_column(self, self.column, i, row)
            text = row[self.column]
            if not isinstance(text, str):
                raise wrong_type(self, self.column, i, "strings", text)
            row[self.column] = self._truncate(text)
        yield inputs
