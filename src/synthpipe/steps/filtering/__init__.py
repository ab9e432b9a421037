"""Steps that mark or drop rows: deduplication and filtering."""

from synthpipe.steps.filtering.minhash import MinHashDedup

__all__ = ["MinHashDedup"]
