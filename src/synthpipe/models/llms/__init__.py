"""The LLM backends at distilabel's ``distilabel.models.llms`` path; each backend's module is
imported only when its class is asked for."""

from synthpipe import _compat

__all__ = _compat.available(__name__)
__getattr__, __dir__ = _compat.install(__name__, globals())
