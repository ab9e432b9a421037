"""distilabel's older ``distilabel.steps.typing`` path: the step output types (see ``synthpipe.typing``)."""

from synthpipe import _compat

__all__ = _compat.available(__name__)
__getattr__, __dir__ = _compat.install(__name__, globals())
