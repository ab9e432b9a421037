"""Load stages at run time: one scheduler and one executor per stage, one stage after the other.

A stage runs the steps it names; the steps of the stages before it are in its plan too, but only
as what they stored: their batches are given back from the store (``Replay``), so the rows of a
finished stage reach the next one from disk, under the same backpressure as any other rows, and
their workers never start again. A stage's executor returns only once every worker it started
has exited (``LocalExecutor._shutdown``): its models' memory is free before the next stage loads.

A batch of an earlier stage that the store cannot give back (damaged data) is computed again by
a worker started for it then (``needs_worker``), rather than waited for forever.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from synthpipe.errors import RunInterrupted
from synthpipe.runtime.contract import ExecutorHooks, StepSpec
from synthpipe.runtime.scheduler import Scheduler, StepStats, StoredOutput
from synthpipe.runtime.scheduler.forming import _feeders_of_joins

logger = logging.getLogger("synthpipe.runtime")

MakeExecutor = Callable[[list[str], Scheduler, list[str], ExecutorHooks], Any]
"""(steps of the stage's plan, its scheduler, steps to start at once, hooks) -> an executor."""


def needs_worker(scheduler: Scheduler, step: str) -> bool:
    """``step`` has work waiting and no worker to take it (its workers were not started)."""
    st = scheduler.states[step]
    if st.workers or st.finished:
        return False
    if st.spec.kind == "generator":
        return st.diverged and st.last_seq is None
    return bool(st.ready)


class _WholePlanRouter:
    """A routing step's router as the whole plan sees it: it chooses among all of the step's
    successors, also those of later stages (its decision is stored; they get the batch then)."""

    def __init__(self, router: Any, successors: tuple[str, ...]) -> None:
        self.router = router
        self.name = router.name
        self.successors = successors

    def choose(self, steps: Sequence[str]) -> list[str]:
        return self.router.choose(list(self.successors))


class StagedExecutor:
    """Runs ``stages`` in order; answers the runner's questions (``stats``, ``jobs_in_flight``,
    ``failed_batch``) as its scheduler would, for the stage running now."""

    def __init__(self, specs: Sequence[StepSpec], stages: list[list[str]], *, max_rows_in_flight: int,
                 stored: Callable[[], dict[str, dict[int, StoredOutput]]], hooks: ExecutorHooks,
                 signals: Any = None, done: Callable[[list[str]], bool] = lambda stage: False,
                 finished: Callable[[list[str]], None] = lambda stage: None,
                 routers: dict[str, Any] | None = None) -> None:
        """``stored``: what the store holds now, read again before each stage (the stages before
        it have just added to it); ``done``: whether an earlier run finished a stage (its workers
        then start only if the store cannot give a batch back); ``finished``: a stage finished;
        ``routers``: the plan's routing steps, as the scheduler of a single-stage run gets them."""
        self.specs = {s.name: s for s in specs}
        self.order = [s.name for s in specs]
        self.stages = stages
        self.max_rows_in_flight = max_rows_in_flight
        self.stored = stored
        self.hooks = hooks
        self.signals = signals
        self.done = done
        self.finished = finished
        self.make_executor: MakeExecutor | None = None
        self.current: Scheduler | None = None
        self._stats = {name: StepStats() for name in self.order}
        self.routers = dict(routers or {})
        self._feeders = _feeders_of_joins(self.specs, set(self.routers))  # as in the whole plan

    # -- what the runner asks of a scheduler ----------------------------------------------

    def stats(self) -> dict[str, StepStats]:
        return self._stats

    def jobs_in_flight(self) -> int:
        return self.current.jobs_in_flight() if self.current is not None else 0

    @property
    def failed_batch(self) -> Any:
        return getattr(self.current, "failed_batch", None)

    # -- running --------------------------------------------------------------------------

    def _ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.specs[name].predecessors)
        while todo:
            pred = todo.pop()
            if pred not in seen:
                seen.add(pred)
                todo.extend(self.specs[pred].predecessors)
        return seen

    def stage_scheduler(self, stage: list[str]) -> tuple[list[str], Scheduler]:
        """The plan of one stage: its steps and every step before them (replayed from the store)."""
        members = set(stage)
        for name in stage:
            members |= self._ancestors(name)
        names = [n for n in self.order if n in members]
        specs = [replace(self.specs[n], successors=tuple(s for s in self.specs[n].successors if s in members))
                 for n in names]
        scheduler = Scheduler(specs, max_rows_in_flight=self.max_rows_in_flight, stored=dict(self.stored()),
                              routers={n: _WholePlanRouter(r, self.specs[n].successors)
                                       for n, r in self.routers.items() if n in members})
        scheduler.split_at_origin = self._feeders & members
        for name in stage:  # the earlier stages' replays are not counted twice
            scheduler.states[name].stats = self._stats[name]
        return names, scheduler

    def run(self) -> None:
        assert self.make_executor is not None, "set make_executor before run()"
        leaves = {n for n, s in self.specs.items() if not s.successors}
        on_emit = self.hooks.on_emit
        for index, stage in enumerate(self.stages):
            if self.signals is not None and self.signals.received:  # came as the last stage wound up
                signum = self.signals.first
                raise RunInterrupted(signum, f"stopped by {signal.Signals(signum).name}")
            names, scheduler = self.stage_scheduler(stage)
            self.current = scheduler
            results = leaves & set(stage)  # a leaf's rows go to the result in its own stage only
            hooks = replace(self.hooks, on_emit=lambda step, seq, rows, keys, results=results, emit=on_emit:
                            emit(step, seq, rows, keys) if step in results else None)
            reused = self.done(stage)
            logger.info("synthpipe: load stage %d of %d: %s%s", index + 1, len(self.stages), ", ".join(stage),
                        " (finished by an earlier run: its stored batches are reused)" if reused else "")
            self.make_executor(names, scheduler, [] if reused else stage, hooks).run()
            self.finished(stage)
            logger.debug("synthpipe: load stage %d finished; its workers have exited", index + 1)
