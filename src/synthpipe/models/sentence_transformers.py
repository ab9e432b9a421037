"""Embeddings from a ``sentence-transformers`` model (local folder, or a hub id where reachable)."""

from __future__ import annotations

from typing import Any, ClassVar, Optional

from pydantic import Field, PrivateAttr

from synthpipe.models.base import Embeddings
from synthpipe.steps.base import RuntimeParameter


class SentenceTransformerEmbeddings(Embeddings):
    model: str
    revision: Optional[str] = None
    normalize_embeddings: bool = True
    prompt: Optional[str] = None
    truncate_dim: Optional[int] = None
    trust_remote_code: bool = False
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    device: RuntimeParameter[str] = None
    batch_size: RuntimeParameter[int] = 32

    NOT_IN_SIGNATURE: ClassVar[frozenset[str]] = frozenset({"device", "batch_size"})

    _model: Any = PrivateAttr(default=None)

    @property
    def model_name(self) -> str:
        return self.model

    def load(self) -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(self.model, device=self.device, revision=self.revision,
                                          truncate_dim=self.truncate_dim, trust_remote_code=self.trust_remote_code,
                                          model_kwargs=self.model_kwargs or None)

    def unload(self) -> None:
        self._model = None

    def encode(self, inputs: list[str]) -> list[list[float]]:
        if self._model is None:
            self.load()
        vectors = self._model.encode(inputs, batch_size=self.batch_size or 32, prompt=self.prompt,
                                     normalize_embeddings=self.normalize_embeddings, convert_to_numpy=True,
                                     show_progress_bar=False)
        return vectors.tolist()
