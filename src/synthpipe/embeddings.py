"""distilabel's legacy ``distilabel.embeddings`` path (now ``distilabel.models.embeddings``): the same classes."""

from synthpipe import _compat

__all__ = _compat.available(__name__)
__getattr__, __dir__ = _compat.install(__name__, globals())
