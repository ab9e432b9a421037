"""Supervised fine-tuning format: ``prompt``, ``prompt_id`` and the full ``messages``."""

from __future__ import annotations

from synthpipe.steps.base import Step, StepInput, StepOutput
from synthpipe.steps.formatting._util import first_user_turn, prompt_id, require, system_then_user

_OUTPUTS = ["prompt", "prompt_id", "messages"]


class FormatTextGenerationSFT(Step):
    """From ``instruction`` + ``generation`` (and an optional ``system_prompt``) to the chat
    ``messages`` SFT trainers read (alignment-handbook / axolotl style)."""

    @property
    def inputs(self) -> dict[str, bool]:
        return {"instruction": True, "generation": True, "system_prompt": False}

    @property
    def outputs(self) -> list[str]:
        return list(_OUTPUTS)

    def process(self, *inputs: StepInput) -> StepOutput:
        for batch in inputs:
            for i, row in enumerate(batch):
                instruction = require(self, row, i, "instruction", str, "strings")
                generation = require(self, row, i, "generation", str, "strings")
                row["prompt"] = instruction
                row["prompt_id"] = prompt_id(instruction)
                row["messages"] = system_then_user(row.get("system_prompt"), instruction) + [
                    {"role": "assistant", "content": generation}]
            yield batch


class FormatChatGenerationSFT(Step):
    """From a conversation (``messages``) + ``generation`` to ``messages`` ending in the
    assistant's answer; ``prompt`` is the first user turn."""

    @property
    def inputs(self) -> list[str]:
        return ["messages", "generation"]

    @property
    def outputs(self) -> list[str]:
        return list(_OUTPUTS)

    def process(self, *inputs: StepInput) -> StepOutput:
        for batch in inputs:
            for i, row in enumerate(batch):
                messages = require(self, row, i, "messages", list, "lists of chat turns")
                generation = require(self, row, i, "generation", str, "strings")
                prompt = first_user_turn(self, messages, i)
                row["prompt"] = prompt
                row["prompt_id"] = prompt_id(prompt)
                row["messages"] = list(messages) + [{"role": "assistant", "content": generation}]
            yield batch
