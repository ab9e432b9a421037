"""The composition root: runs a pipeline (plan, signatures, store, logging, the executor, the
result) and plans ``retry_failed``. The top of the layers: it may import any layer below it.

The runner is imported only when asked for, so ``Pipeline.run`` can first take over stop
signals (``synthpipe.run.stops``) and a Ctrl+C during that import still stops cleanly."""

from typing import Any

__all__ = ["run_pipeline", "step_specs"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from synthpipe.run import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'synthpipe.run' has no attribute {name!r}")
