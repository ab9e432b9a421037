"""Runs a pipeline: plan, run directory, logging, executor, result.

``Pipeline.run()`` delegates here (lazily), so the definition layer stays free of the
process machinery above it.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Any

from synthpipe.distiset import Distiset
from synthpipe.errors import RunInterrupted
from synthpipe.pipeline.plan import Plan, build_plan
from synthpipe.runtime.local import ExecutorHooks, LocalExecutor
from synthpipe.runtime.scheduler import Batch, Scheduler, StepSpec
from synthpipe.runtime.signals import StopSignals
from synthpipe.store.failed_rows import FailedRowsLedger, read_failed_rows
from synthpipe.store.leaf_writer import LeafWriter
from synthpipe.store.run_dir import RunDirectory, structure_signature
from synthpipe.ui.logs import RunLogging, level_from_env
from synthpipe.ui.progress import Progress

if TYPE_CHECKING:
    from synthpipe.errors import ErrorRecord
    from synthpipe.pipeline.base import Pipeline

logger = logging.getLogger("synthpipe")


def step_specs(plan: Plan, dry_run: bool = False) -> list[StepSpec]:
    specs = []
    for name in plan.order:
        step = plan.step(name)
        size = step.batch_size if step.step_kind == "generator" else step.input_batch_size
        specs.append(
            StepSpec(
                name=name,
                kind=step.step_kind,
                predecessors=tuple(plan.dag.predecessors(name)),
                successors=tuple(plan.dag.successors(name)),
                batch_size=size,
                replicas=step.resources.replicas,
                on_error=step.effective_on_error,
                max_batches=1 if dry_run and step.step_kind == "generator" else None,
                retries=step.retries,
                retry_delay=step.retry_delay,
                max_restarts=step.max_restarts,
                max_failed_rows=step.max_failed_rows,
                max_failure_rate=step.max_failure_rate,
            )
        )
    return specs


def _describe(plan: Plan) -> dict[str, Any]:
    return {
        name: {"class": f"{type(plan.step(name)).__module__}.{type(plan.step(name)).__qualname__}",
               "after": plan.dag.predecessors(name)}
        for name in plan.order
    }


def run_pipeline(
    pipeline: Pipeline,
    *,
    parameters: dict[str, dict[str, Any]] | None = None,
    dataset: Any = None,
    log_level: str | int | None = None,
    dry_run_batch_size: int | None = None,
) -> Distiset:
    level = level_from_env(log_level)
    plan = build_plan(pipeline, parameters, dataset, dry_run_batch_size)
    run_dir = RunDirectory.create(pipeline.cache_dir, pipeline.name, structure_signature(_describe(plan)))
    logs = RunLogging(level, run_dir.log_path)
    leaves = plan.dag.leaves()
    writer = LeafWriter(run_dir.data_dir, leaves)
    ledger = FailedRowsLedger(run_dir.failed_rows_path)
    scheduler = Scheduler(
        step_specs(plan, dry_run=dry_run_batch_size is not None),
        max_rows_in_flight=pipeline.max_rows_in_flight,
    )
    progress = Progress(scheduler.stats())

    warned: set[tuple[str | None, str]] = set()

    def rows_failed(batch: Batch, error: ErrorRecord) -> None:
        ledger.record(batch.step, batch.seq, batch.row_start, batch.inputs, error,
                      attempts=max(1, batch.attempts + batch.crashes))
        first = (error.step, error.type_name) not in warned
        warned.add((error.step, error.type_name))
        logger.log(logging.WARNING if first else logging.DEBUG, "%s failed, rows skipped%s: %s",
                   error.location(), "" if not first else " (further ones only in the log file)",
                   error.headline())

    hooks = ExecutorHooks(
        on_emit=lambda step, seq, rows: writer.write(step, rows),
        on_rows_failed=rows_failed,
        on_tick=progress.tick,
        on_log=logs.worker_line,
    )
    signals = StopSignals()
    executor = LocalExecutor({n: plan.step(n) for n in plan.order}, scheduler, hooks, signals=signals,
                             log_level=level, stop_grace_seconds=pipeline.stop_grace_seconds)
    mode = "dry run of" if dry_run_batch_size is not None else "running"
    logger.info("synthpipe: %s pipeline '%s' (%d steps); run directory %s",
                mode, pipeline.name, len(plan.order), run_dir.path)
    outcome = "stopped"
    interrupted: RunInterrupted | None = None
    try:
        with signals:
            executor.run()
        outcome = "finished"
    except RunInterrupted as exc:
        interrupted = exc
        outcome = str(exc)
    except BaseException as exc:
        outcome = f"stopped: {exc}" if str(exc) else f"stopped ({type(exc).__name__})"
        raise
    finally:
        progress.stop()
        _keep_finished_rows(writer)
        ledger.close()
        logger.info("synthpipe: pipeline '%s' %s\n%s", pipeline.name, outcome, "\n".join(progress.summary_lines()))
        if ledger.count:
            logger.warning("%s", ledger.summary())
        if interrupted is not None:
            logger.warning("%s", _kept_message(run_dir, writer, ledger))
        logs.close()
    if interrupted is not None:
        if interrupted.signum == signal.SIGINT:
            raise KeyboardInterrupt(str(interrupted)) from None
        raise SystemExit(128 + interrupted.signum)
    return Distiset.from_leaf_files(
        {leaf: writer.files(leaf) for leaf in leaves},
        read_failed_rows(run_dir.failed_rows_path),
        run_dir=run_dir.path,
    )


def _keep_finished_rows(writer: LeafWriter) -> None:
    """Write out the leaf rows still buffered, whatever ended the run."""
    try:
        writer.close()
    except Exception:
        logger.exception("synthpipe: could not write the last leaf rows")
        raise


def _kept_message(run_dir: RunDirectory, writer: LeafWriter, ledger: FailedRowsLedger) -> str:
    lines = [f"synthpipe: kept what finished, in {run_dir.path}:"]
    for leaf, rows in writer.rows_written.items():
        lines.append(f"  {leaf}: {rows:,} rows in data/{leaf}/")
    if ledger.count:
        lines.append(f"  {ledger.count:,} failed rows in failed_rows.jsonl")
    lines.append("Batches still running were not finished. Run the pipeline again to compute the rest: "
                 "resuming a stopped run is not implemented yet, so a new run starts from the beginning.")
    return "\n".join(lines)
