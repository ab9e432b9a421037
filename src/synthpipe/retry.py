"""``run(retry_failed=True)``: give the rows that failed one more try, and only them.

For each step that failed rows (earliest first), a small pipeline runs: a generator of
exactly those rows, that step, and every step after it. It is an ordinary durable run in
the same store (its steps have their own signatures), so it resumes like any run. Its
leaf rows are then merged into the result by key (the generator row each came from), so
they land where the rows would have been had nothing failed; nothing else is recomputed.
Rows that fail again stay in the failed rows, with their original keys.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from synthpipe.errors import SynthpipeError
from synthpipe.pipeline.dag import DAG
from synthpipe.pipeline.plan import Plan
from synthpipe.steps.generators.data import LoadDataFromDicts
from synthpipe.store.failed_rows import read_failed_rows, row_of_entry, write_failed_rows
from synthpipe.store.leaf_writer import KEY_COLUMN
from synthpipe.store.signature import combined_signature, plan_signatures

if TYPE_CHECKING:
    from synthpipe.pipeline.base import Pipeline
    from synthpipe.store.pipeline_store import PipelineStore


class RetryRows(LoadDataFromDicts):
    """The failed rows of one step, to run again. ``retry_of`` (the run whose result is being
    retried) is part of the signature: a second retry of rows that failed again really runs."""

    retry_of: str = Field(default="")


def failing_steps(plan: Plan, failed: list[dict[str, Any]]) -> list[str]:
    """Steps with failed rows, in pipeline order; refuse, before anything runs, what cannot
    be retried row by row."""
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


def retry_plan(plan: Plan, step: str, pending: list[dict[str, Any]], retry_of: str) -> Plan:
    """The failed rows of ``step`` as a generator, then ``step`` and everything after it."""
    name = f"retry_{step}"
    while name in plan.dag.nodes:
        name = "_" + name
    first = plan.step(step)
    rows = RetryRows(name=name, data=[row_of_entry(e) for e in pending], retry_of=retry_of,
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
    return Plan(dag=dag, order=order, domains=dict.fromkeys(order, name))


def retry_failed_rows(
    pipeline: Pipeline,
    plan: Plan,
    signatures: dict[str, str],
    store: PipelineStore,
    level: int,
    execute: Any,
    say: Callable[[str], None],
) -> tuple[Path, dict[str, list[str]]]:
    """Retry every step's failed rows; record each merged result as the pipeline's result.

    ``execute(pipeline, plan, signatures, store, level, durable)`` runs a plan (the runner's).
    Returns the run directory and leaf files of the final result.
    """
    pipeline_signature = combined_signature(signatures)
    current = store.completed_run(pipeline_signature)
    assert current is not None, "retry_failed needs a finished result"
    run_dir, leaves = current
    failed = read_failed_rows(run_dir / "failed_rows.jsonl")
    steps = failing_steps(plan, failed)
    if not steps:
        say(f"synthpipe: retry_failed: no failed rows to retry in pipeline '{pipeline.name}'")
        return current
    for step in steps:
        pending = sorted((e for e in failed if e.get("step") == step), key=lambda e: (e["key"], e.get("row", 0)))
        sub = retry_plan(plan, step, pending, retry_of=run_dir.name)
        sub_signatures = plan_signatures(sub.order, sub.dag.nodes, {n: sub.dag.predecessors(n) for n in sub.order})
        say(f"synthpipe: retry_failed: {len(pending)} failed row(s) of step '{step}' run again through "
            + ", ".join(repr(n) for n in sub.order[1:]))
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
        failed = [e for e in failed if e.get("step") != step] + again
        order = {name: i for i, name in enumerate(plan.order)}
        failed.sort(key=lambda e: (order.get(e.get("step"), 0), e.get("key") or 0, e.get("row", 0)))
        run_dir, leaves = _merge(store, pipeline_signature, run_dir, leaves, sub_dir, sub_leaves, keys, failed)
        recovered = len(pending) - sum(1 for e in again if e.get("step") == step)
        say(f"synthpipe: retry_failed: step '{step}': {recovered} of {len(pending)} row(s) went through this "
            f"time; {len(again)} row(s) failed again in it or after it; result in {run_dir}")
    return run_dir, leaves


def _merge(store: PipelineStore, pipeline_signature: str, run_dir: Path, leaves: dict[str, list[str]],
           sub_dir: Path, sub_leaves: dict[str, list[str]], keys: list[int],
           failed: list[dict[str, Any]]) -> tuple[Path, dict[str, list[str]]]:
    """A new result: each leaf the retried rows reached, with them put in place by key;
    the other leaves linked as they are. Recorded as the pipeline's result."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    new = store.new_run()
    merged: dict[str, list[str]] = {}
    for leaf, files in leaves.items():
        if leaf not in sub_leaves:
            merged[leaf] = [_link(run_dir, new.path, f) for f in files]
            continue
        tables = [pq.read_table(run_dir / f) for f in files]
        for f in sub_leaves[leaf]:
            table = pq.read_table(sub_dir / f)
            mapped = pa.array([keys[k] for k in table.column(KEY_COLUMN).to_pylist()], pa.int64())
            index = table.column_names.index(KEY_COLUMN)
            tables.append(table.set_column(index, KEY_COLUMN, mapped))
        tables = [t for t in tables if t.num_rows] or tables[:1]
        target = new.data_dir / leaf / "part-00000.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        if tables:
            table = pa.concat_tables(tables, promote_options="permissive")
            order = pc.sort_indices(table, sort_keys=[(KEY_COLUMN, "ascending")])  # stable: retried rows last
            tmp = target.with_suffix(".tmp")
            pq.write_table(table.take(order), tmp)
            os.replace(tmp, target)
            merged[leaf] = [str(target.relative_to(new.path))]
        else:
            merged[leaf] = []
    write_failed_rows(new.failed_rows_path, failed)
    store.mark_complete(pipeline_signature, new.run_id, merged)
    return new.path, merged


def _link(old_run: Path, new_run: Path, file: str) -> str:
    """The same file in the new run directory, without copying its bytes where possible."""
    target = new_run / file
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(old_run / file, target)
    except OSError:
        shutil.copy2(old_run / file, target)
    return file
