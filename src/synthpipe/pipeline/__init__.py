from synthpipe import _compat
from synthpipe.pipeline.base import Pipeline

__all__ = ["Pipeline"]

# distilabel names this package lacks: what they are here, or what to use instead (synthpipe/_compat.py)
__getattr__, __dir__ = _compat.install(__name__, globals())
