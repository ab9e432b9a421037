"""``run(retry_failed=True)``: give the rows that failed one more try, and only them.

For each step that failed rows (earliest first), a small pipeline runs: a generator of
exactly those rows, that step, and every step after it. It is an ordinary durable run in
the same store (its steps have their own signatures), so it resumes like any run. Its
leaf rows are then merged into the result by key (the generator row each came from), so
they land where the rows would have been had nothing failed; nothing else is recomputed.
Rows that fail again stay in the failed rows, with their original keys.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from synthpipe.errors import SynthpipeError
from synthpipe.pipeline.dag import DAG
from synthpipe.pipeline.loader import LoadDataFromDicts
from synthpipe.pipeline.plan import Plan
from synthpipe.store.failed_rows import read_failed_rows, row_of_entry
from synthpipe.store.leaf_merge import merge_retried
from synthpipe.store.signature import combined_signature, plan_signatures

if TYPE_CHECKING:
    from synthpipe.pipeline.base import Pipeline
    from synthpipe.store.pipeline_store import PipelineStore


class RetryRows(LoadDataFromDicts):
    """The failed rows of one step, to run again. ``attempt`` (the how-manieth retry of that
    step) is part of the signature: a second retry of rows that failed again really runs,
    while the same pass done again (after a later step changed) is found in the store."""

    attempt: int = Field(default=1, ge=1)


def failing_steps(plan: Plan, failed: list[dict[str, Any]]) -> list[str]:
    """Steps with failed rows, in pipeline order; refuse, before anything runs, what cannot
    be retried row by row."""
    failed = [e for e in failed if e.get("retryable", True)]  # a row the result cannot hold: rerunning changes nothing
    steps = [name for name in plan.order if any(e.get("step") == name for e in failed)]
    problems = []
    for name in steps:
        below = _descendants(plan, name)
        if len(plan.dag.predecessors(name)) > 1:
            problems.append(f"step '{name}' joins branches: its failed rows cannot be retried on their own")
        for d in below:
            outside = [p for p in plan.dag.predecessors(d) if p != name and p not in below]
            if outside:
                problems.append(f"rows retried in step '{name}' would reach step '{d}', which also takes rows "
                                f"from {', '.join(repr(p) for p in outside)}: that join cannot be redone for them")
            if plan.step(d).step_kind == "global":
                problems.append(f"rows retried in step '{name}' would reach the global step '{d}', which needs "
                                "every row at once")
        if any(e.get("key") is None for e in failed if e.get("step") == name):
            problems.append(f"step '{name}': its failed rows were recorded by an older version (no row keys)")
    if problems:
        raise SynthpipeError("retry_failed cannot retry these rows:\n  " + "\n  ".join(problems)
                             + "\nrun the pipeline with use_cache=False for those steps instead")
    return steps


def _descendants(plan: Plan, name: str) -> set[str]:
    seen: set[str] = set()
    todo = plan.dag.successors(name)
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(plan.dag.successors(node))
    return seen


def retry_plan(plan: Plan, step: str, pending: list[dict[str, Any]], attempt: int) -> Plan:
    """The failed rows of ``step`` as a generator, then ``step`` and everything after it."""
    name = f"retry_{step}"
    while name in plan.dag.nodes:
        name = "_" + name
    first = plan.step(step)
    rows = RetryRows(name=name, data=[row_of_entry(e) for e in pending], attempt=attempt,
                     batch_size=getattr(first, "input_batch_size", 50))
    dag = DAG()
    dag.add_node(name, rows)
    keep = {step} | _descendants(plan, step)
    for node in plan.order:
        if node in keep:
            dag.add_node(node, plan.step(node))
    dag.add_edge(name, step)
    for node in plan.order:
        if node in keep and node != step:
            for pred in plan.dag.predecessors(node):
                dag.add_edge(pred, node)
    order = dag.topological_order()
    routing = {n: r for n, r in plan.routing.items() if n in keep}  # retried rows are routed afresh
    return Plan(dag=dag, order=order, domains=dict.fromkeys(order, name), routing=routing)


def retry_failed_rows(
    pipeline: Pipeline,
    plan: Plan,
    signatures: dict[str, str],
    store: PipelineStore,
    level: int,
    execute: Any,
    say: Callable[[str], None],
    passes: list[tuple[str, int]] | None = None,
) -> tuple[Path, dict[str, list[str]]]:
    """Retry every step's failed rows; record each merged result as the pipeline's result.

    ``execute(pipeline, plan, signatures, store, level, durable)`` runs a plan (the runner's).
    ``passes``: (step, attempt) to do again, in order, instead of a new attempt per step
    (``reapply``). Returns the run directory and leaf files of the final result.
    """
    pipeline_signature = combined_signature(signatures)
    current = store.completed_run(pipeline_signature)
    assert current is not None, "retry_failed needs a finished result"
    run_dir, leaves = current
    failed = read_failed_rows(run_dir / "failed_rows.jsonl")
    new_passes = passes is None
    if passes is None:
        steps = failing_steps(plan, failed)
        if not steps:
            say(f"synthpipe: retry_failed: no failed rows to retry in pipeline '{pipeline.name}'")
            return current
        done = store.retry_passes(signatures)
        passes = [(step, 1 + sum(1 for s, _ in done if s == step)) for step in steps]
    order = {name: i for i, name in enumerate(plan.order)}
    for step, attempt in passes:
        pending = sorted((e for e in failed if e.get("step") == step and e.get("retryable", True)),
                         key=lambda e: (e["key"], e.get("row", 0)))
        if not pending:
            continue
        sub = retry_plan(plan, step, pending, attempt)
        sub_signatures = plan_signatures(sub.order, sub.dag.nodes, {n: sub.dag.predecessors(n) for n in sub.order},
                                         {n: r.signature_form() for n, r in sub.routing.items()})
        say(f"synthpipe: retry_failed: {len(pending)} failed row(s) of step '{step}' run again (attempt {attempt}) "
            "through " + ", ".join(repr(n) for n in sub.order[1:]))
        if store.completed_run(combined_signature(sub_signatures)) is None:
            execute(pipeline, sub, sub_signatures, store, level, True)
        sub_run = store.completed_run(combined_signature(sub_signatures))
        assert sub_run is not None
        sub_dir, sub_leaves = sub_run
        keys = [e["key"] for e in pending]
        again = []
        for entry in read_failed_rows(sub_dir / "failed_rows.jsonl"):
            entry["key"] = keys[entry["key"]] if entry.get("key") is not None else None
            entry["retry_run"] = sub_dir.name
            again.append(entry)
        failed = [e for e in failed if e.get("step") != step or not e.get("retryable", True)] + again
        failed.sort(key=lambda e: (order.get(e.get("step"), 0), e.get("key") or 0, e.get("row", 0)))
        run_dir, leaves = merge_retried(store, pipeline_signature, run_dir, leaves, sub_dir, sub_leaves, keys, failed)
        if new_passes:
            store.record_retry_pass(step, signatures[step], attempt)
        recovered = len(pending) - sum(1 for e in again if e.get("step") == step)
        say(f"synthpipe: retry_failed: step '{step}': {recovered} of {len(pending)} row(s) went through this "
            f"time; {len(again)} row(s) failed again in it or after it; result in {run_dir}")
    return run_dir, leaves


def reapply(pipeline: Pipeline, plan: Plan, signatures: dict[str, str], store: PipelineStore, level: int,
            execute: Any, say: Callable[[str], None]) -> tuple[Path, dict[str, list[str]]] | None:
    """After a run rebuilt the result (a later step changed), the retries done before for
    steps that did not change are done again, from the store: their recovered rows stay."""
    passes = store.retry_passes(signatures)
    if not passes:
        return None
    say(f"synthpipe: re-applying {len(passes)} earlier retry pass(es): rows they recovered are kept")
    return retry_failed_rows(pipeline, plan, signatures, store, level, execute, say, passes=passes)
