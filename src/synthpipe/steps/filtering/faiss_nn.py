"""``FaissNearestNeighbour``: each row's ``k`` nearest rows by embedding, with a faiss index.

Why a ``GlobalStep``: a row's neighbours can be anywhere in the dataset, so the index has to
hold every row; the positions it reports are positions in that whole input, which is what
``EmbeddingDedup`` reads. faiss is used directly (``import faiss`` only when the step runs),
building the same index ``datasets.Dataset.add_faiss_index`` builds for the same parameters.
Reference: Douze et al., *The Faiss library*, 2024 (arXiv:2401.08281).
"""

from __future__ import annotations

from typing import Any, Union

from pydantic import Field, PrivateAttr

from synthpipe.steps.base import GlobalStep, RuntimeParameter, StepInput, StepOutput
from synthpipe.steps.filtering._vectors import vector_matrix


class FaissNearestNeighbour(GlobalStep):
    """Adds ``nn_indices`` (positions of the ``k`` nearest other rows in the step's input) and
    ``nn_scores`` (their score or distance, as the index measures it) to every row.

    ``string_factory`` names a faiss index (``faiss.index_factory``; default: an exact flat
    index); ``metric_type`` is a ``faiss.METRIC_*`` integer (default: faiss' own, L2 —
    smaller is closer; use ``faiss.METRIC_INNER_PRODUCT`` on normalized embeddings for cosine
    similarity, larger is closer). An index that needs training is trained on the first
    ``train_size`` vectors (all of them when not given). ``search_batch_size`` rows are
    searched at a time (distilabel's default, 50, is slow on a CPU: faiss multiplies matrices
    far better by the thousand: 1000 searched 20k 384-d rows about 5x faster on 2 cores).
    ``device`` (a GPU id, a list of ids, or negative for all GPUs) needs a faiss build with GPU
    support. A row is never its own neighbour; a list is shorter than
    ``k`` only when the index found fewer rows (a dataset of ``k`` rows or fewer, or an
    approximate index's empty cells)."""

    device: RuntimeParameter[Union[int, list[int]]] = None
    string_factory: RuntimeParameter[str] = None
    metric_type: RuntimeParameter[int] = None
    k: RuntimeParameter[int] = Field(default=1, ge=1)
    search_batch_size: RuntimeParameter[int] = Field(default=50, ge=1)
    train_size: RuntimeParameter[int] = Field(default=None, ge=1)

    _gpu_resources: Any = PrivateAttr(default=None)

    @property
    def inputs(self) -> list[str]:
        return ["embedding"]

    @property
    def outputs(self) -> list[str]:
        return ["nn_indices", "nn_scores"]

    def load(self) -> None:
        try:
            import faiss
        except ImportError as exc:
            raise ImportError(f"step '{self.name}' needs faiss: pip install 'synthpipe[faiss]' "
                              "(or faiss-gpu for a GPU device)") from exc
        if self.device is not None and not hasattr(faiss, "StandardGpuResources"):
            raise ValueError(f"step '{self.name}': device={self.device!r} needs a faiss build with GPU support "
                             "(faiss-gpu); this one is CPU only: leave device unset")

    def _index(self, dim: int) -> Any:
        """An empty index for ``dim``-wide vectors, on the GPU(s) when ``device`` asks for it."""
        import faiss

        try:
            if self.string_factory:
                index = (faiss.index_factory(dim, self.string_factory) if self.metric_type is None
                         else faiss.index_factory(dim, self.string_factory, self.metric_type))
            else:
                index = faiss.IndexFlat(dim) if self.metric_type is None else faiss.IndexFlat(dim, self.metric_type)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"step '{self.name}': faiss cannot build the index (string_factory="
                             f"{self.string_factory!r}, metric_type={self.metric_type!r}): {exc}") from exc
        if self.device is None:
            return index
        if isinstance(self.device, list):
            return faiss.index_cpu_to_gpus_list(index, gpus=self.device)
        if self.device < 0:
            return faiss.index_cpu_to_all_gpus(index)
        self._gpu_resources = faiss.StandardGpuResources()  # kept alive as long as the index
        return faiss.index_cpu_to_gpu(self._gpu_resources, self.device, index)

    def process(self, inputs: StepInput) -> StepOutput:
        vectors = vector_matrix(str(self.name), inputs, "embedding")
        if not inputs:
            yield inputs
            return
        index = self._index(vectors.shape[1])
        if not index.is_trained:
            sample = vectors if self.train_size is None else vectors[: self.train_size]
            self.logger.info("training the faiss index on %d vectors", len(sample))
            index.train(sample)
        index.add(vectors)
        k = int(self.k or 1)
        batch = int(self.search_batch_size or 50)
        for start in range(0, len(inputs), batch):
            scores, positions = index.search(vectors[start:start + batch], k + 1)  # +1: the row itself
            for offset, (row_scores, row_positions) in enumerate(zip(scores, positions, strict=True)):
                indices, values = _without_self(start + offset, row_positions.tolist(), row_scores.tolist(), k)
                inputs[start + offset]["nn_indices"] = indices
                inputs[start + offset]["nn_scores"] = values
        yield inputs


def _without_self(own: int, positions: list[int], scores: list[float], k: int) -> tuple[list[int], list[float]]:
    """The ``k`` best hits that are other rows: the row's own hit is removed wherever it ranks
    (with exact copies it need not come first), ``-1`` (no hit) entries are dropped."""
    pairs = [(p, s) for p, s in zip(positions, scores, strict=True) if p != own and p != -1][:k]
    return [p for p, _ in pairs], [float(s) for _, s in pairs]
