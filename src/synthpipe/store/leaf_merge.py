"""A retried run's leaf rows merged into the result by key (the generator row each came from),
chunk by chunk: Parquet work beside the leaf writer that wrote those chunks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthpipe.store.failed_rows import write_failed_rows
from synthpipe.store.leaf_writer import KEY_COLUMN

if TYPE_CHECKING:
    from synthpipe.store.pipeline_store import PipelineStore


def merge_retried(store: PipelineStore, pipeline_signature: str, run_dir: Path, leaves: dict[str, list[str]],
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
