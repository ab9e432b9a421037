"""The embedding models at distilabel's ``distilabel.models.embeddings`` path, imported when asked for."""

from synthpipe import _compat

__all__ = _compat.available(__name__)
__getattr__, __dir__ = _compat.install(__name__, globals())
