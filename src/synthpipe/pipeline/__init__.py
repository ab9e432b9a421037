from synthpipe.pipeline.base import Pipeline

__all__ = ["Pipeline"]
