"""``RuntimeParameter`` at distilabel's path: annotate a step's or model's field with it to set it at ``pipeline.run(parameters=...)``."""

from synthpipe import _compat

__all__ = _compat.available(__name__)
__getattr__, __dir__ = _compat.install(__name__, globals())
