"""The composition root: runs a pipeline (plan, signatures, store, logging, the executor, the
result) and plans ``retry_failed``. The top of the layers: it may import any layer below it."""

from synthpipe.run.runner import run_pipeline, step_specs

__all__ = ["run_pipeline", "step_specs"]
