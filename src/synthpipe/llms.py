"""distilabel's legacy ``distilabel.llms`` path (now ``distilabel.models.llms``): the same LLM classes."""

from synthpipe import _compat

__all__ = _compat.available(__name__)
__getattr__, __dir__ = _compat.install(__name__, globals())
