"""The types a ported pipeline imports from ``distilabel.typing``, under their distilabel names.

synthpipe's own types live where they are used (``steps.base``, ``models.base``); this module
names them together, and says what to use instead for the distilabel types synthpipe has no
counterpart for (see ``synthpipe._compat``).
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict, Union

from synthpipe import _compat
from synthpipe.models.base import ChatType, GenerateOutput
from synthpipe.steps.base import GeneratorStepOutput, StepOutput

StepColumns = Union[list[str], dict[str, bool]]
"""A step's ``inputs``/``outputs``: column names, or column name -> whether it is required."""


class ChatItem(TypedDict):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str


StandardInput = ChatType
FormattedInput = ChatType
"""What a task's ``format_input`` returns: a conversation (structured output is set on the LLM)."""

LLMOutput = list[Union[str, None]]
TokenCount = int
LLMStatistics = dict[str, list[int]]
"""``{"input_tokens": [...], "output_tokens": [...]}``, one entry per generation."""

InputDataset = Any
"""What ``pipeline.run(dataset=...)`` takes: a list of dicts, a ``datasets.Dataset`` or a pandas DataFrame."""

__all__ = ["ChatItem", "ChatType", "FormattedInput", "GenerateOutput", "GeneratorStepOutput", "InputDataset",
           "LLMOutput", "LLMStatistics", "StandardInput", "StepColumns", "StepOutput", "TokenCount"]
__getattr__, __dir__ = _compat.install(__name__, globals())
