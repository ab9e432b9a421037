"""``GenerateEmbeddings``: a vector per row from a local LLM's last hidden states.

Method: an LLM's own last-layer states, mean-pooled over the prompt's tokens, as in
"Improving Text Embeddings with Large Language Models", Wang et al., 2024, arXiv:2401.00368
(which pools a decoder LLM's states into the embedding; it takes the last token's, this step
keeps distilabel's mean). The LLM must expose ``get_last_hidden_states(chats)``
(``TransformersLLM`` does); any other is refused before the first batch.
"""

from __future__ import annotations

from typing import Any

from synthpipe.models.base import LLM, ChatType
from synthpipe.steps.base import Step, StepInput, StepOutput


class GenerateEmbeddings(Step):
    """Embeds ``text`` (a string, or a conversation as a list of role/content dicts) into
    ``embedding`` (the mean of the last hidden states over the prompt's tokens) and names the
    model in ``model_name``."""

    llm: LLM

    @property
    def inputs(self) -> list[str]:
        return ["text"]

    @property
    def outputs(self) -> list[str]:
        return ["embedding", "model_name"]

    def load(self) -> None:
        if not callable(getattr(self.llm, "get_last_hidden_states", None)):
            raise TypeError(f"step '{self.name}': {type(self.llm).__name__} exposes no hidden states; "
                            "GenerateEmbeddings needs a local model such as TransformersLLM")
        self.llm.load()

    def unload(self) -> None:
        self.llm.unload()

    def _chat(self, text: Any, index: int) -> ChatType:
        if isinstance(text, str):
            return [{"role": "user", "content": text}]
        if isinstance(text, list) and text and all(isinstance(m, dict) and "role" in m and "content" in m
                                                   for m in text):
            return text
        raise TypeError(f"step '{self.name}': column 'text' must be a string or a conversation; row {index} "
                        f"holds {type(text).__name__}")

    def process(self, inputs: StepInput) -> StepOutput:
        chats = [self._chat(row["text"], i) for i, row in enumerate(inputs)]
        states = self.llm.get_last_hidden_states(chats)  # type: ignore[attr-defined]
        for row, state in zip(inputs, states, strict=True):
            row["embedding"] = [float(x) for x in state.mean(axis=0)]
            row["model_name"] = self.llm.model_name
        yield inputs
