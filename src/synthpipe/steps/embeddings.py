"""``EmbeddingGeneration``: a vector per row from an ``Embeddings`` model."""

from __future__ import annotations

from typing import Any

from synthpipe.models.base import Embeddings
from synthpipe.steps.base import Step, StepInput, StepOutput


class EmbeddingGeneration(Step):
    """Embeds the ``text`` column into ``embedding`` (and names the model in ``model_name``)."""

    embeddings: Embeddings

    @property
    def inputs(self) -> list[str]:
        return ["text"]

    @property
    def outputs(self) -> list[str]:
        return ["embedding", "model_name"]

    def load(self) -> None:
        self.embeddings.load()

    def unload(self) -> None:
        self.embeddings.unload()

    def process(self, inputs: StepInput) -> StepOutput:
        texts: list[Any] = [row["text"] for row in inputs]
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if bad:
            raise TypeError(f"step '{self.name}': column 'text' must hold strings; row {bad[0]} holds "
                            f"{type(texts[bad[0]]).__name__}")
        vectors = self.embeddings.encode(texts)
        for row, vector in zip(inputs, vectors, strict=True):
            row["embedding"] = vector
            row["model_name"] = self.embeddings.model_name
        yield inputs
