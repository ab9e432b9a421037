"""Preference (DPO) format: the best- and worst-rated generation as ``chosen``/``rejected``."""

from __future__ import annotations

from typing import Any

from synthpipe.steps.base import Step, StepInput, StepOutput
from synthpipe.steps.formatting._util import first_user_turn, prompt_id, require, system_then_user

# the *_model columns only when the rows say which model wrote each generation
_OUTPUTS = {"prompt": True, "prompt_id": True, "chosen": True, "chosen_model": False, "chosen_rating": True,
            "rejected": True, "rejected_model": False, "rejected_rating": True}


def _pick(step: Step, row: dict[str, Any], index: int, messages: list[dict[str, Any]]) -> None:
    """Highest rating is chosen, lowest rejected (first one on ties); ``None`` ratings (an
    unparsable judgement) never win either place."""
    generations = require(step, row, index, "generations", list, "lists of strings")
    ratings = require(step, row, index, "ratings", list, "lists of numbers")
    if len(generations) != len(ratings):
        raise ValueError(f"step '{step.name}': row {index} has {len(generations)} generations but "
                         f"{len(ratings)} ratings")
    rated = [(r, i) for i, r in enumerate(ratings) if isinstance(r, (int, float)) and not isinstance(r, bool)]
    if not rated:
        raise ValueError(f"step '{step.name}': row {index} has no numeric rating to rank its generations by")
    chosen = max(rated, key=lambda x: x[0])[1]
    rejected = min(rated, key=lambda x: x[0])[1]
    models = row.get("generation_models")
    for label, idx in (("chosen", chosen), ("rejected", rejected)):
        row[label] = messages + [{"role": "assistant", "content": generations[idx]}]
        row[f"{label}_rating"] = ratings[idx]
        if isinstance(models, list) and len(models) == len(generations):
            row[f"{label}_model"] = models[idx]


class FormatTextGenerationDPO(Step):
    """From ``instruction`` + ``generations`` + ``ratings`` (an UltraFeedback-style judge) to
    ``chosen``/``rejected`` conversations, with ``*_model`` when ``generation_models`` is there."""

    @property
    def inputs(self) -> dict[str, bool]:
        return {"instruction": True, "generations": True, "ratings": True,
                "system_prompt": False, "generation_models": False}

    @property
    def outputs(self) -> dict[str, bool]:
        return dict(_OUTPUTS)

    def process(self, *inputs: StepInput) -> StepOutput:
        for batch in inputs:
            for i, row in enumerate(batch):
                instruction = require(self, row, i, "instruction", str, "strings")
                row["prompt"] = instruction
                row["prompt_id"] = prompt_id(instruction)
                _pick(self, row, i, system_then_user(row.get("system_prompt"), instruction))
            yield batch


class FormatChatGenerationDPO(Step):
    """As ``FormatTextGenerationDPO`` for a conversation in ``messages``."""

    @property
    def inputs(self) -> dict[str, bool]:
        return {"messages": True, "generations": True, "ratings": True, "generation_models": False}

    @property
    def outputs(self) -> dict[str, bool]:
        return dict(_OUTPUTS)

    def process(self, *inputs: StepInput) -> StepOutput:
        for batch in inputs:
            for i, row in enumerate(batch):
                messages = require(self, row, i, "messages", list, "lists of chat turns")
                prompt = first_user_turn(self, messages, i)
                row["prompt"] = prompt
                row["prompt_id"] = prompt_id(prompt)
                _pick(self, row, i, list(messages))
            yield batch
