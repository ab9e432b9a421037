"""``distilabel.models.llms.openai``: the same classes, from synthpipe's backends."""

from synthpipe import _compat

__all__ = _compat.available(__name__)
__getattr__, __dir__ = _compat.install(__name__, globals())
