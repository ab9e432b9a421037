"""Steps that mark or drop rows: deduplication and filtering, and the neighbour search they use."""

from synthpipe.steps.filtering.deita import DeitaFiltering
from synthpipe.steps.filtering.embedding_dedup import EmbeddingDedup
from synthpipe.steps.filtering.faiss_nn import FaissNearestNeighbour
from synthpipe.steps.filtering.minhash import MinHashDedup

__all__ = ["DeitaFiltering", "EmbeddingDedup", "FaissNearestNeighbour", "MinHashDedup"]
