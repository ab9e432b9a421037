from synthpipe import _compat
from synthpipe.pipeline.base import Pipeline
from synthpipe.pipeline.routing import RoutingBatchFunction, routing_batch_function, sample_n_steps

__all__ = ["Pipeline", "RoutingBatchFunction", "routing_batch_function", "sample_n_steps"]

# distilabel names this package lacks: what they are here, or what to use instead (synthpipe/_compat.py)
__getattr__, __dir__ = _compat.install(__name__, globals())
