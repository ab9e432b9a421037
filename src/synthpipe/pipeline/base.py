"""``Pipeline``: a context manager collecting steps and the edges between them."""

from __future__ import annotations

import contextvars
import os
import sys
from typing import TYPE_CHECKING, Any

from synthpipe.errors import RUN_IN_WORKER_EXIT_CODE, RUN_IN_WORKER_MESSAGE, PipelineDefinitionError
from synthpipe.pipeline.dag import DAG

if TYPE_CHECKING:
    from synthpipe.distiset import Distiset
    from synthpipe.steps.base import _Step

_current: contextvars.ContextVar[Pipeline | None] = contextvars.ContextVar(
    "synthpipe_current_pipeline", default=None
)


def current_pipeline() -> Pipeline | None:
    """The pipeline of the innermost ``with Pipeline(...)`` block, if any."""
    return _current.get()


class Pipeline:
    """A DAG of steps. Steps created inside ``with Pipeline(...):`` join it on their own.

    ``run()`` starts one worker process per step replica and returns a ``Distiset``.
    ``max_rows_in_flight`` bounds the rows held between steps; ``stop_grace_seconds`` is how
    long running batches may finish after a first Ctrl+C or SIGTERM.
    """

    def __init__(
        self,
        name: str = "pipeline",
        description: str | None = None,
        *,
        cache_dir: str | None = None,
        max_rows_in_flight: int = 20_000,
        stop_grace_seconds: float = 10.0,
    ) -> None:
        self.name = name
        self.description = description
        self.cache_dir = cache_dir
        self.max_rows_in_flight = max_rows_in_flight
        self.stop_grace_seconds = stop_grace_seconds
        self.dag = DAG()
        self._tokens: list[contextvars.Token[Pipeline | None]] = []

    def __enter__(self) -> Pipeline:
        self._tokens.append(_current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._tokens.pop())

    def __repr__(self) -> str:
        return f"Pipeline(name={self.name!r}, steps={list(self.dag)})"

    # -- building -------------------------------------------------------------------

    @property
    def steps(self) -> dict[str, _Step]:
        return dict(self.dag.nodes)

    def _add_step(self, step: _Step) -> None:
        if step.name is None:
            base = step.default_name()
            index = sum(1 for n in self.dag if n.rsplit("_", 1)[0] == base)
            while f"{base}_{index}" in self.dag.nodes:
                index += 1
            step.name = f"{base}_{index}"
        elif step.name in self.dag.nodes:
            raise PipelineDefinitionError(
                f"pipeline '{self.name}' already has a step named '{step.name}'"
            )
        step._pipeline = self
        self.dag.add_node(step.name, step)

    def _add_edge(self, src: str, dst: str) -> None:
        if src == dst:
            raise PipelineDefinitionError(f"step '{src}' cannot feed itself")
        self.dag.add_edge(src, dst)

    # -- running --------------------------------------------------------------------

    def run(
        self,
        parameters: dict[str, dict[str, Any]] | None = None,
        dataset: Any = None,
        *,
        use_cache: bool = True,
        retry_failed: bool = False,
        log_level: str | None = None,
    ) -> Distiset:
        """Validate, run every step in worker processes, return the leaf datasets.

        ``parameters`` sets runtime parameters per step name; ``dataset`` (a list of
        dicts, a ``datasets.Dataset`` or a pandas DataFrame) feeds a pipeline whose
        first step is not a generator. Every finished batch is stored: running the same
        pipeline again resumes, reusing them; ``use_cache=False`` computes everything again.
        ``retry_failed=True`` gives the rows that failed (see ``Distiset.failed_rows``) one more
        try, through the step that failed them and every step after it, and puts what comes
        out back in its place in the result; nothing else is computed again.
        """
        _refuse_inside_a_worker()
        from synthpipe.run import run_pipeline

        return run_pipeline(
            self, parameters=parameters, dataset=dataset, use_cache=use_cache, retry_failed=retry_failed,
            log_level=log_level,
        )

    def dry_run(
        self,
        parameters: dict[str, dict[str, Any]] | None = None,
        batch_size: int = 1,
        dataset: Any = None,
    ) -> Distiset:
        """Run one batch of ``batch_size`` rows through the whole pipeline, to try it out."""
        from synthpipe.run import run_pipeline

        return run_pipeline(
            self,
            parameters=parameters,
            dataset=dataset,
            dry_run_batch_size=batch_size,
        )


def _refuse_inside_a_worker() -> None:
    """Workers import the user's script again (as any multiprocessing program does): a run
    started at its top level would start in every worker. The worker is usually still importing
    the script, before it can send the coordinator anything, so it says why by its exit code
    (and on stderr), and the coordinator reports that instead of a bare "exit code 1"."""
    import multiprocessing

    if multiprocessing.current_process().name.startswith("synthpipe:"):
        print(f"synthpipe: {RUN_IN_WORKER_MESSAGE}", file=sys.stderr, flush=True)
        os._exit(RUN_IN_WORKER_EXIT_CODE)  # not SystemExit: inside a step, that would be the batch's error
