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
    """The failed rows of one step, to run again. ``attempt`` (the how-manieth retry of that
    step) is part of the signature: a second retry of rows that failed again really runs,
    while the same pass done again (after a later step changed) is found in the store."""

    attempt: int = Field(default=1, ge=1)


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
    return Plan(dag=dag, order=order, domains=dict.fromkeys(order, name))


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
        pending = sorted((e for e in failed if e.get("step") == step), key=lambda e: (e["key"], e.get("row", 0)))
        if not pending:
            continue
        sub = retry_plan(plan, step, pending, attempt)
        sub_signatures = plan_signatures(sub.order, sub.dag.nodes, {n: sub.dag.predecessors(n) for n in sub.order})
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
        failed = [e for e in failed if e.get("step") != step] + again
        failed.sort(key=lambda e: (order.get(e.get("step"), 0), e.get("key") or 0, e.get("row", 0)))
        run_dir, leaves = _merge(store, pipeline_signature, run_dir, leaves, sub_dir, sub_leaves, keys, failed)
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


def _merge(store: PipelineStore, pipeline_signature: str, run_dir: Path, leaves: dict[str, list[str]],
           sub_dir: Path, sub_leaves: dict[str, list[str]], keys: list[int],
           failed: list[dict[str, Any]]) -> tuple[Path, dict[str, list[str]]]:
    """A new result: each leaf the retried rows reached, with them put in place by key;
    the other leaves linked as they are. Recorded as the pipeline's result."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    new = store.new_run()
    merged: dict[str, list[str]] = {}
    for leaf, files in leaves.items():
        if leaf not in sub_leaves:
            merged[leaf] = [_link(run_dir / f, new.path, f) for f in files]
            continue
        recovered = []
        for f in sub_leaves[leaf]:
            table = pq.read_table(sub_dir / f)
            mapped = pa.array([keys[k] for k in table.column(KEY_COLUMN).to_pylist()], pa.int64())
            recovered.append(table.set_column(table.column_names.index(KEY_COLUMN), KEY_COLUMN, mapped))
        merged[leaf] = _merge_leaf(run_dir, files, recovered, new.path, f"data/{leaf}")
    write_failed_rows(new.failed_rows_path, failed)
    store.mark_complete(pipeline_signature, new.run_id, merged)
    return new.path, merged


def _merge_leaf(run_dir: Path, files: list[str], recovered: list[Any], new_run: Path, folder: str) -> list[str]:
    """The leaf's chunk files with the recovered rows put in by key, one chunk at a time (a
    chunk is in key order, and the chunks follow each other): memory holds one chunk and the
    recovered rows, never the dataset; chunks that receive nothing are linked, not rewritten.
    Among rows of one key, the original ones come first."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    extra = _sorted_by_key(pa.concat_tables(recovered, promote_options="permissive")) if recovered else None
    starts = [_first_key(run_dir / f) for f in files]
    out: list[str] = []
    for n, f in enumerate(files):
        name = f"{folder}/part-{n:05d}.parquet"
        bound = starts[n + 1] if n + 1 < len(files) else None  # the next chunk's first key
        take = extra.num_rows if extra is not None and bound is None else 0
        if extra is not None and bound is not None:
            take = int(pc.sum(pc.less(extra.column(KEY_COLUMN), bound)).as_py() or 0)
        if not take:
            out.append(_link(run_dir / f, new_run, name))
            continue
        original = pq.read_table(run_dir / f)
        chunk = pa.concat_tables([original, extra.slice(0, take)], promote_options="permissive")
        extra = extra.slice(take)
        _write(new_run / name, chunk.take(pa.array(_merged_order(original.column(KEY_COLUMN).to_pylist(),
                                                                  chunk.column(KEY_COLUMN).to_pylist()[
                                                                      original.num_rows:]))))
        out.append(name)
    if extra is not None and extra.num_rows and not files:  # the leaf had no rows before
        name = f"{folder}/part-00000.parquet"
        _write(new_run / name, extra)
        out.append(name)
    return out


def _merged_order(original: list[int], recovered: list[int]) -> list[int]:
    """Row order of ``original + recovered`` merged by key: the original rows keep their order,
    each recovered row (they are sorted) goes after the original rows of keys up to its own."""
    order: list[int] = []
    j = 0
    for i, key in enumerate(original):
        while j < len(recovered) and recovered[j] < key:
            order.append(len(original) + j)
            j += 1
        order.append(i)
    order.extend(len(original) + k for k in range(j, len(recovered)))
    return order


def _sorted_by_key(table: Any) -> Any:
    import pyarrow.compute as pc

    return table.take(pc.sort_indices(table, sort_keys=[(KEY_COLUMN, "ascending")]))  # stable


def _first_key(path: Path) -> int | None:
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=[KEY_COLUMN]).column(KEY_COLUMN)
    return column[0].as_py() if len(column) else None


def _write(target: Path, table: Any) -> None:
    import pyarrow.parquet as pq

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)


def _link(source: Path, new_run: Path, file: str) -> str:
    """``source`` as ``file`` of the new run directory, without copying its bytes where possible."""
    target = new_run / file
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return file
