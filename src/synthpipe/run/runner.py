"""Runs a pipeline: plan, signatures, store, logging, executor, result.

``Pipeline.run()`` delegates here (lazily), so the definition layer stays free of the
process machinery above it.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthpipe.distiset import Distiset, settle_warm_up, warm_up
from synthpipe.errors import ColumnTypeClash, ErrorRecord, RunInterrupted
from synthpipe.models.cache import RESPONSE
from synthpipe.pipeline.plan import Plan, build_plan
from synthpipe.run.accounting import Accounting
from synthpipe.run.retry import reapply, retry_failed_rows
from synthpipe.run.warm import warm, worker_preload
from synthpipe.runtime.contract import Executor, ExecutorHooks
from synthpipe.runtime.local import LocalExecutor
from synthpipe.runtime.scheduler import Batch, Persist, Scheduler, StepSpec, StoredOutput
from synthpipe.runtime.signals import StopSignals
from synthpipe.runtime.staged import StagedExecutor
from synthpipe.runtime.worker import LEAF_STEPS, STORE_BATCHES
from synthpipe.store import batch_format
from synthpipe.store.artifacts import write_artifact
from synthpipe.store.failed_rows import FailedRowsLedger, read_failed_rows, write_failed_rows
from synthpipe.store.leaf_writer import LeafWriter, Misfit
from synthpipe.store.pipeline_store import SYNC_EVERY_SECONDS, PipelineStore
from synthpipe.store.responses import ResponseLog
from synthpipe.store.run_dir import RunDirectory, structure_signature
from synthpipe.store.signature import combined_signature, plan_signatures
from synthpipe.ui.errors import describe_failure, log_failure
from synthpipe.ui.live import LiveProgress, expected_rows
from synthpipe.ui.logs import RunLogging, level_from_env
from synthpipe.worker_context import ARTIFACT

if TYPE_CHECKING:
    from synthpipe.pipeline.base import Pipeline

logger = logging.getLogger("synthpipe")


def _capacity(step: Any, budgeted: bool) -> int:
    """Batches a worker holds at once. Under a budget an LLM task reads no rows ahead of its
    request slots: a graceful stop lets held batches finish, and rows read ahead would be
    paid for past the budget."""
    if budgeted and getattr(step, "max_rows_in_flight", 0) is None:
        return step.model_copy(update={"max_rows_in_flight": 1}).batches_at_once()
    return step.batches_at_once()


def step_specs(plan: Plan, dry_run: bool = False, budgeted: bool = False) -> list[StepSpec]:
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
                capacity=_capacity(step, budgeted),
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
    use_cache: bool = True,
    retry_failed: bool = False,
    log_level: str | int | None = None,
    dry_run_batch_size: int | None = None,
    load_groups: Any = None,
) -> Distiset:
    level = level_from_env(log_level)
    warm(pipeline)  # (Pipeline.run did already) ready by the time the plan and the store are
    plan = build_plan(pipeline, parameters, dataset, dry_run_batch_size, load_groups)
    signatures = plan_signatures(plan.order, plan.dag.nodes, {n: plan.dag.predecessors(n) for n in plan.order},
                                 {n: r.signature_form() for n, r in plan.routing.items()})
    store = PipelineStore.for_pipeline(pipeline.cache_dir, pipeline.name, structure_signature(_describe(plan)))
    store.lock()
    try:
        if dry_run_batch_size is not None:  # a try-out: it neither uses nor changes what is stored
            return _execute(pipeline, plan, signatures, store, level, durable=False)
        _invalidate(store, plan, signatures, use_cache)
        finished = store.completed_run(combined_signature(signatures))
        quiet = retry_failed
        if finished is None:  # computed now; retries done before for unchanged steps are kept
            result = _execute(pipeline, plan, signatures, store, level, durable=True, read_responses=use_cache)
            if result.failed_rows:
                finished = reapply(pipeline, plan, signatures, store, level, _execute,
                                   say=lambda text: _say(level, text))
            if finished is None and not (retry_failed and result.failed_rows):
                return result
            quiet = True
        if retry_failed:
            finished = retry_failed_rows(pipeline, plan, signatures, store, level, _execute,
                                         say=lambda text: _say(level, text))
        assert finished is not None
        return _finished_result(pipeline, plan, store, *finished, level, quiet=quiet)
    finally:
        store.close()


def _invalidate(store: PipelineStore, plan: Plan, signatures: dict[str, str], use_cache: bool) -> None:
    """Forget what is stored for steps run with use_cache=False, and for all that follows them
    (their inputs are about to change)."""
    forced = [n for n in plan.order if not use_cache or not plan.step(n).use_cache]
    for name in plan.order:
        if name in forced or any(a in forced for a in plan.dag.ancestors(name)):
            store.invalidate(name, signatures[name])


def _finished_result(pipeline: Pipeline, plan: Plan, store: PipelineStore, run_dir: Path,
                     leaves: dict[str, list[str]], level: int, quiet: bool = False) -> Distiset:
    """The result of a run that finished this very pipeline: no worker starts."""
    if not quiet:
        _say(level, f"synthpipe: pipeline '{pipeline.name}' already finished in run {run_dir.name}; "
                    "returning its result (run(use_cache=False) computes it again)")
    return Distiset.from_leaf_files(
        {leaf: [run_dir / f for f in leaves.get(leaf, [])] for leaf in plan.dag.leaves()},
        read_failed_rows(run_dir / "failed_rows.jsonl"),
        run_dir=run_dir,
    )


def _say(level: int, text: str) -> None:
    """One line on the terminal, outside a run (no run log file to go to)."""
    logs = RunLogging(level, None)
    try:
        logger.info("%s", text)
    finally:
        logs.close()


def _execute(pipeline: Pipeline, plan: Plan, signatures: dict[str, str], store: PipelineStore, level: int,
             durable: bool, read_responses: bool = True) -> Distiset:
    run_dir = store.new_run()
    logs = RunLogging(level, run_dir.log_path)
    try:
        return _execute_logged(pipeline, plan, signatures, store, level, durable, run_dir, read_responses)
    finally:
        logs.close()


def _execute_logged(pipeline: Pipeline, plan: Plan, signatures: dict[str, str], store: PipelineStore, level: int,
                    durable: bool, run_dir: RunDirectory, read_responses: bool = True) -> Distiset:
    run_id = run_dir.run_id
    leaves = plan.dag.leaves()
    ledger = FailedRowsLedger(store.failed_rows_path if durable else run_dir.failed_rows_path)
    stored = store.finished_batches(signatures) if durable else {}

    def misfits(step: str, found: list[Misfit]) -> None:
        """Leaf rows whose value cannot share its column's type: failed rows, not a lost result."""
        for row, key, seq, why in found:
            batch = stored.get(step, {}).get(seq) if seq is not None else None  # replayed: its run's entry
            error = ErrorRecord.from_diagnosis(ColumnTypeClash(f"step '{step}' produced a row that the result "
                                                               f"cannot hold: {why}"), step=step, batch=seq)
            error.retryable = False
            ledger.record(step, -1 if seq is None else seq, key, [[row]], error, keys=[[key]],
                          sig=signatures[step], run=batch.run if batch is not None else run_id, retryable=False)
            if (step, why.split(" holds")[0]) not in warned:
                warned.add((step, why.split(" holds")[0]))
                logger.warning("step '%s' produced a row its result column cannot hold (kept in the failed rows; "
                               "further ones only in the log file): %s", step, why)

    writer = LeafWriter(run_dir.data_dir, leaves, on_misfit=misfits)
    specs = step_specs(plan, dry_run=not durable, budgeted=getattr(pipeline, "max_budget", None) is not None)
    staged: StagedExecutor | None = None
    if plan.stages is not None and len(plan.stages) > 1 and durable:
        staged = StagedExecutor(specs, plan.stages, max_rows_in_flight=pipeline.max_rows_in_flight,
                                stored=lambda: _stored_outputs(_read_again(stored, store, signatures)),
                                hooks=ExecutorHooks(on_emit=lambda *a: None, on_rows_failed=lambda *a: None),
                                done=lambda stage: store.stage_done(_stage_batches(stage, stored, store, signatures)),
                                finished=lambda stage: store.mark_stage_done(
                                    _stage_batches(stage, stored, store, signatures)),
                                routers=plan.routing)
        scheduler: Any = staged
    else:
        scheduler = Scheduler(specs, max_rows_in_flight=pipeline.max_rows_in_flight, stored=_stored_outputs(stored),
                              routers=plan.routing)
    accounting = Accounting(plan, pipeline.name, store.root, run_dir.path, durable,
                            getattr(pipeline, "prices", None), getattr(pipeline, "max_budget", None))
    expected = expected_rows(plan.order, {n: plan.step(n) for n in plan.order},
                             {n: plan.dag.predecessors(n) for n in plan.order})
    for routed in plan.routing:  # how many rows take each branch is the routing function's to say
        for name in plan.dag.successors(routed):
            expected.pop(name, None)
            for below in plan.order:
                if name in plan.dag.ancestors(below):
                    expected.pop(below, None)
    progress = LiveProgress(scheduler.stats(), accounting.tally, expected,
                            activity=accounting.llm_activity)
    warned: set[tuple[str | None, str]] = set()
    responses = ResponseLog(store.responses_folder)
    synced = [time.monotonic()]

    def rows_failed(batch: Batch, error: ErrorRecord) -> None:
        ledger.record(batch.step, batch.seq, batch.row_start, batch.inputs, error, keys=batch.keys,
                      attempts=max(1, batch.attempts + batch.crashes), sig=signatures[batch.step], run=run_id)
        first = (error.step, error.type_name) not in warned
        warned.add((error.step, error.type_name))
        logger.log(logging.WARNING if first else logging.DEBUG, "%s failed, rows skipped%s: %s",
                   error.location(), "" if not first else " (further ones only in the log file)",
                   error.headline())

    def persist(action: Persist, data: bytes | None) -> None:
        accounting.stored(action.step, action.seq, action.rows, action.inputs, action.failed)
        if durable:
            store.persist(action.step, signatures[action.step], action.seq, data or batch_format.encode(action.rows),
                          len(action.rows), action.last,
                          action.failed, run_id, action.inputs, action.failed_at, action.sources, action.routed_to,
                          crc=action.crc)

    def flush() -> None:
        if durable:
            store.flush()
        accounting.flush()  # the run record's batch lines, after the batches they tell of

    def replay(step: str, seq: int) -> tuple[list[dict[str, Any]], bool]:
        batch = stored[step][seq]
        return store.read_batch(batch), batch.last

    def tick() -> None:
        warm_up()  # the result's imports, once the workers have started: not after the last step
        progress.tick()
        accounting.over_budget(scheduler.jobs_in_flight())
        if durable and time.monotonic() - synced[0] > SYNC_EVERY_SECONDS:
            ledger.sync()
            responses.sync()
            store.sync()
            synced[0] = time.monotonic()

    hooks = ExecutorHooks(
        on_emit=lambda step, seq, rows, keys: writer.write(step, rows, keys, seq),
        on_rows_failed=rows_failed,
        on_persist=persist,
        on_flush=flush,
        on_replay=replay,
        on_tick=tick,
        on_log=RunLogging.worker_line,
        on_record=lambda kind, payload: record(kind, payload),
        on_sent=accounting.sent,
        on_admit=accounting.admit if accounting.budget is not None else None,
    )

    def record(kind: str, payload: Any) -> None:
        if kind == ARTIFACT:
            folder = write_artifact(run_dir.path, payload)
            logger.info("synthpipe: step '%s' saved artifact '%s' in %s", payload["step"], payload["name"], folder)
            return
        accounting.record(kind, payload)
        if kind == RESPONSE and durable:
            responses.append(payload[0], payload[1])

    signals = StopSignals()
    accounting.on_stop = lambda: signals.request_stop("a stop request (max_budget)")
    context = ({"responses": str(store.responses_folder), "read_responses": read_responses, STORE_BATCHES: True}
               if durable else {})
    context[LEAF_STEPS] = list(leaves)
    def local(names: list[str], sched: Scheduler, eager: list[str] | None, with_hooks: ExecutorHooks) -> Executor:
        return LocalExecutor({n: plan.step(n) for n in names}, sched, with_hooks, signals=signals, log_level=level,
                             stop_grace_seconds=pipeline.stop_grace_seconds, worker_context=context,
                             preload=worker_preload([plan.step(n) for n in plan.order]), eager=eager)

    if staged is not None:
        staged.hooks, staged.signals, staged.make_executor = hooks, signals, local
        executor: Executor = staged
    else:
        executor = local(plan.order, scheduler, None, hooks)
    mode = "running" if durable else "dry run of"
    logger.info("synthpipe: %s pipeline '%s' (%d steps); run directory %s%s",
                mode, pipeline.name, len(plan.order), run_dir.path,
                f" (a working copy of {store.location})" if store.mirror is not None else "")
    reused = sum(len(batches) for batches in stored.values())
    if reused:
        logger.info("synthpipe: resuming: %d batch(es) finished by earlier runs are reused, not recomputed", reused)
    outcome = "stopped"
    interrupted: RunInterrupted | None = None
    failure: BaseException | None = None
    with signals:  # also while the run is wound up: a Ctrl+C then must not tear a file in half
        try:
            executor.run()
            writer.close()  # the last leaf rows; a type clash is this run's error
            outcome = "finished"
        except RunInterrupted as exc:
            interrupted = exc
            outcome = "stopped at its budget" if accounting.stopped_by_budget else str(exc)
        except BaseException as exc:
            outcome = f"stopped: {exc}" if str(exc) else f"stopped ({type(exc).__name__})"
            _attach_input_row(exc, scheduler)
            failure = exc
            log_failure(exc)
        finally:
            progress.stop()
            try:
                _keep_finished_rows(writer)
            finally:
                if interrupted is None and signals.received and outcome == "finished":
                    signum = signals.received[0]  # it came as the finished run was wound up
                    interrupted = RunInterrupted(signum, f"stopped by {signal.Signals(signum).name}")
                ledger.close()
                responses.close()
                usage_line = accounting.summary()
                logger.info("synthpipe: pipeline '%s' %s\n%s", pipeline.name, outcome,
                            "\n".join(progress.summary_lines() + ([usage_line] if usage_line else [])))
                accounting.finish("finished" if outcome == "finished" and interrupted is None
                                  else ("interrupted" if interrupted is not None else "failed"),
                                  dict(writer.rows_written), ledger.count)
                if ledger.count:
                    logger.warning("%s", ledger.summary())
                if interrupted is not None:
                    logger.warning("%s", _kept_message(run_dir, writer, durable))
        if interrupted is None and signals.received:  # came while the lines above were logged
            signum = signals.received[0]
            interrupted = RunInterrupted(signum, f"stopped by {signal.Signals(signum).name}")
    if interrupted is not None:
        if failure is not None:  # the run failed, and a signal came as it shut down: both are said
            logger.error("synthpipe: the run had failed before the signal came:\n%s", describe_failure(failure))
        if accounting.stopped_by_budget and interrupted.signum == signal.SIGINT and len(signals.received) == 1:
            raise accounting.budget_error() from None
        if interrupted.signum == signal.SIGINT:
            settle_warm_up()  # else the exit status of this Ctrl+C can read 1, not 130
            raise KeyboardInterrupt(str(interrupted)) from None
        raise SystemExit(128 + interrupted.signum)
    if failure is not None:
        raise failure
    files = {leaf: writer.files(leaf) for leaf in leaves}
    if not durable:
        return Distiset.from_leaf_files(files, read_failed_rows(run_dir.failed_rows_path), run_dir=run_dir.path)
    failed = store.failed_rows(None, signatures)
    write_failed_rows(run_dir.failed_rows_path, failed)  # with the run's output, as the result has them
    distiset = Distiset.from_leaf_files(files, failed, run_dir=run_dir.path)
    # only a result that could be built is recorded as the pipeline's result
    store.mark_complete(combined_signature(signatures), run_id,
                        {leaf: [str(f.relative_to(run_dir.path)) for f in fs] for leaf, fs in files.items()})
    return distiset


def _stored_outputs(stored: dict[str, dict[int, Any]]) -> dict[str, dict[int, StoredOutput]]:
    """What the scheduler needs to know of the stored batches."""
    return {step: {seq: StoredOutput(b.rows, b.inputs, b.failed, tuple(b.failed_at or ()), b.sources,
                                     b.routed_to)
                   for seq, b in batches.items()} for step, batches in stored.items()}


def _read_again(stored: dict[str, dict[int, Any]], store: PipelineStore,
                signatures: dict[str, str]) -> dict[str, dict[int, Any]]:
    """Before a load stage: the batches the stages before it stored, for it to replay."""
    stored.clear()
    stored.update(store.finished_batches(signatures))
    return stored


def _stage_batches(stage: list[str], stored: dict[str, dict[int, Any]], store: PipelineStore,
                   signatures: dict[str, str]) -> dict[str, tuple[str, int]]:
    """A load stage's steps, as a stage marker in the store names them: signature, batches stored."""
    _read_again(stored, store, signatures)
    return {name: (signatures[name], len(stored.get(name, {}))) for name in stage}


def _attach_input_row(exc: BaseException, scheduler: Scheduler) -> None:
    """Give the error that ends a run the input row that triggered it (its first, when the
    failure does not say which), for the message the user reads."""
    batch = getattr(scheduler, "failed_batch", None)
    record = getattr(exc, "record", None)
    if batch is None or record is None or not batch.inputs or not batch.inputs[0]:
        return
    rows = batch.inputs[0]
    index = record.rows[0] - batch.row_start if record.rows else 0
    try:
        exc.input_row = rows[index if 0 <= index < len(rows) else 0]  # type: ignore[attr-defined]
    except Exception:
        pass


def _keep_finished_rows(writer: LeafWriter) -> None:
    """Write out the leaf rows still buffered, whatever ended the run; a failure here is
    reported but never replaces the error that ended the run."""
    try:
        writer.close()
    except Exception as exc:
        logger.error("synthpipe: could not write the last leaf rows: %s", exc)


def _kept_message(run_dir: RunDirectory, writer: LeafWriter, durable: bool) -> str:
    lines = [f"synthpipe: kept what finished, in {run_dir.path}:"]
    for leaf, rows in writer.rows_written.items():
        lines.append(f"  {leaf}: {rows:,} rows in data/{leaf}/")
    if durable:
        lines.append("Every finished batch of every step is stored. Run the same pipeline again to resume: "
                     "finished batches are reused, only the rest is computed.")
    return "\n".join(lines)
