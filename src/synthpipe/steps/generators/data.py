"""Generators over data the user already holds in memory. The in-memory loader lives in the
definition layer (``synthpipe.pipeline.loader``: ``Pipeline.run(dataset=...)`` needs it); this is
its public library path."""

from synthpipe.pipeline.loader import LoadDataFromDicts

__all__ = ["LoadDataFromDicts"]
