"""``Pipeline``: a context manager collecting steps and the edges between them."""

from __future__ import annotations

import contextvars
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from synthpipe.errors import RUN_IN_WORKER_EXIT_CODE, RUN_IN_WORKER_MESSAGE, PipelineDefinitionError
from synthpipe.pipeline.dag import DAG

if TYPE_CHECKING:
    from synthpipe.distiset import Distiset
    from synthpipe.pipeline.routing import RoutingBatchFunction
    from synthpipe.pipeline.stages import LoadGroups
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
    long running batches may finish after a first Ctrl+C or SIGTERM. ``prices`` (per million
    tokens, per model name; or a file of them) turn token usage into cost; ``max_budget`` (money,
    or ``{"tokens": N}``) stops a run gracefully before it would pass it.
    """

    def __init__(
        self,
        name: str = "pipeline",
        description: str | None = None,
        *,
        cache_dir: str | None = None,
        max_rows_in_flight: int = 20_000,
        stop_grace_seconds: float = 10.0,
        prices: dict[str, dict[str, float]] | str | None = None,
        max_budget: float | dict[str, float] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.cache_dir = cache_dir
        self.max_rows_in_flight = max_rows_in_flight
        self.stop_grace_seconds = stop_grace_seconds
        self.prices = prices  # {model: {"input": X, "output": Y}} per million tokens, or a YAML/JSON file of it
        self.max_budget = max_budget  # money, {"cost": X} or {"tokens": N}: the run stops before passing it
        self.dag = DAG()
        self.routing: dict[str, RoutingBatchFunction] = {}  # step name -> what routes its batches
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

    # -- pipeline files -------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """The pipeline as plain data: every step's class and fields, and the connections
        (secrets left out). ``Pipeline.from_dict`` builds it again."""
        from synthpipe.pipeline.serialization import dump_pipeline

        return dump_pipeline(self)

    def save(self, path: str | os.PathLike[str], format: Literal["yaml", "json"] | None = None) -> Path:
        """Write the pipeline file: YAML, or JSON when ``format="json"`` or the path ends in
        ``.json``. Secrets are never written (see README, "Pipeline files")."""
        from synthpipe.pipeline.serialization import save_pipeline

        return save_pipeline(self, path, format)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, allow_custom: bool | Iterable[str] = False) -> Pipeline:
        """The pipeline a ``dump()`` describes. Classes outside synthpipe are imported only
        when allowed: ``allow_custom=True``, or the module names to trust (``["my_steps"]``)."""
        from synthpipe.pipeline.serialization import pipeline_from_dict

        return pipeline_from_dict(cls, data, allow_custom, "the pipeline data")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, allow_custom: bool | Iterable[str] = False) -> Pipeline:
        """Load a pipeline file, YAML or JSON (told by its suffix, else by its content)."""
        return cls._from_file(path, None, allow_custom)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], *, allow_custom: bool | Iterable[str] = False) -> Pipeline:
        return cls._from_file(path, "yaml", allow_custom)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str], *, allow_custom: bool | Iterable[str] = False) -> Pipeline:
        return cls._from_file(path, "json", allow_custom)

    @classmethod
    def _from_file(cls, path: str | os.PathLike[str], fmt: Literal["yaml", "json"] | None,
                   allow_custom: bool | Iterable[str]) -> Pipeline:
        from synthpipe.pipeline.serialization import pipeline_from_dict, read_file

        return pipeline_from_dict(cls, read_file(path, fmt), allow_custom, f"pipeline file {str(path)!r}")

    # -- running --------------------------------------------------------------------

    def run(
        self,
        parameters: dict[str, dict[str, Any]] | None = None,
        dataset: Any = None,
        *,
        use_cache: bool = True,
        retry_failed: bool = False,
        log_level: str | None = None,
        load_groups: LoadGroups | None = None,
    ) -> Distiset:
        """Validate, run every step in worker processes, return the leaf datasets.

        ``parameters`` sets runtime parameters per step name; ``dataset`` (a list of
        dicts, a ``datasets.Dataset`` or a pandas DataFrame) feeds a pipeline whose
        first step is not a generator. Every finished batch is stored: running the same
        pipeline again resumes, reusing them; ``use_cache=False`` computes everything again.
        ``retry_failed=True`` gives the rows that failed (see ``Distiset.failed_rows``) one more
        try, through the step that failed them and every step after it, and puts what comes
        out back in its place in the result; nothing else is computed again.
        ``load_groups`` (lists of steps or step names, or ``"sequential_step_execution"``) runs
        the steps in load stages, one after the other: a stage's workers start only once those
        of the stage before have finished and exited (see README, "Load stages").
        """
        _refuse_inside_a_worker()
        from synthpipe.run.stops import stops_deferred

        with stops_deferred():  # a Ctrl+C from here on stops the run, wherever it comes
            from synthpipe.run.warm import warm

            warm(self)  # the workers' fork server starts while the run is set up
            from synthpipe.run import run_pipeline

            distiset = run_pipeline(
                self, parameters=parameters, dataset=dataset, use_cache=use_cache, retry_failed=retry_failed,
                log_level=log_level, load_groups=load_groups,
            )
            distiset.pipeline = self  # what push_to_hub's card and pipeline.yaml describe
            return distiset

    def dry_run(
        self,
        parameters: dict[str, dict[str, Any]] | None = None,
        batch_size: int = 1,
        dataset: Any = None,
    ) -> Distiset:
        """Run one batch of ``batch_size`` rows through the whole pipeline, to try it out."""
        from synthpipe.run import run_pipeline

        distiset = run_pipeline(
            self,
            parameters=parameters,
            dataset=dataset,
            dry_run_batch_size=batch_size,
        )
        distiset.pipeline = self
        return distiset

    def estimate(self, sample: int = 10, *, rows: int | None = None,
                 parameters: dict[str, dict[str, Any]] | None = None, dataset: Any = None) -> Any:
        """Run ``sample`` rows through the pipeline (a dry run against the real LLMs: it is paid
        for) and project tokens, cost and time for the whole input (``rows``, else what the
        generators hold). Returns an ``Estimate``; ``print()`` it to see the assumptions."""
        _refuse_inside_a_worker()
        from synthpipe.run.estimate import estimate_pipeline

        return estimate_pipeline(self, sample, rows, parameters, dataset)


def _refuse_inside_a_worker() -> None:
    """Workers import the user's script again (as any multiprocessing program does): a run
    started at its top level would start in every worker. The worker is usually still importing
    the script, before it can send the coordinator anything, so it says why by its exit code
    (and on stderr), and the coordinator reports that instead of a bare "exit code 1"."""
    import multiprocessing

    if multiprocessing.current_process().name.startswith("synthpipe:"):
        print(f"synthpipe: {RUN_IN_WORKER_MESSAGE}", file=sys.stderr, flush=True)
        os._exit(RUN_IN_WORKER_EXIT_CODE)  # not SystemExit: inside a step, that would be the batch's error
