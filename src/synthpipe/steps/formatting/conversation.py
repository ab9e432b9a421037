"""``ConversationTemplate``: an instruction and its response as a two-turn chat."""

from __future__ import annotations

from synthpipe.steps.base import Step, StepInput, StepOutput
from synthpipe.steps.formatting._util import require


class ConversationTemplate(Step):
    """``instruction`` + ``response`` -> ``conversation`` (user turn, then assistant turn)."""

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "response"]

    @property
    def outputs(self) -> list[str]:
        return ["conversation"]

    def process(self, inputs: StepInput) -> StepOutput:
        for i, row in enumerate(inputs):
            instruction = require(self, row, i, "instruction", str, "strings")
            response = require(self, row, i, "response", str, "strings")
            row["conversation"] = [{"role": "user", "content": instruction},
                                   {"role": "assistant", "content": response}]
        yield inputs
