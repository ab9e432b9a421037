"""``RuntimeParameter`` at distilabel's path: annotate a step's or model's field with it, and
``pipeline.run(parameters=...)`` can set it."""

from synthpipe import _compat

__all__ = _compat.available(__name__)
__getattr__, __dir__ = _compat.install(__name__, globals())
