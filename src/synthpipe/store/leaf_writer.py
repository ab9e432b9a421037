"""Writes leaf steps' rows to Parquet chunk files as they arrive, so the coordinator's
memory holds at most one chunk per leaf, not the dataset.

Each row's key (the generator row it came from) is kept in a column of its own,
``KEY_COLUMN``, so rows retried later can be put back in order; the result drops it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from synthpipe.errors import SynthpipeError

KEY_COLUMN = "__synthpipe_key__"


def rows_to_table(rows: list[dict[str, Any]], step: str) -> Any:
    import pyarrow as pa

    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    data = {c: [row.get(c) for row in rows] for c in columns}
    try:
        return pa.table(data)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        bad = next((c for c in columns if not _converts(data[c])), None)
        where = f" column '{bad}'" if bad else ""
        raise SynthpipeError(
            f"step '{step}' produced{where} values that do not fit one column type: {exc}"
        ) from exc


def _converts(values: list[Any]) -> bool:
    import pyarrow as pa

    try:
        pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


class LeafWriter:
    """Buffers a leaf's rows and writes them out in order, ``chunk_rows`` at a time."""

    def __init__(self, data_dir: Path, leaves: list[str], chunk_rows: int = 10_000) -> None:
        self.data_dir = data_dir
        self.chunk_rows = chunk_rows
        self._buffers: dict[str, list[dict[str, Any]]] = {leaf: [] for leaf in leaves}
        self._keys: dict[str, list[int]] = {leaf: [] for leaf in leaves}
        self._files: dict[str, list[Path]] = {leaf: [] for leaf in leaves}
        self._schemas: dict[str, Any] = {}  # per leaf: the column types of the chunks so far
        self.rows_written: dict[str, int] = dict.fromkeys(leaves, 0)

    def write(self, step: str, rows: list[dict[str, Any]], keys: list[int]) -> None:
        buffer = self._buffers[step]
        buffer.extend(rows)
        self._keys[step].extend(keys)
        if len(buffer) >= self.chunk_rows:
            self._flush(step)

    def close(self) -> None:
        for step in self._buffers:
            self._flush(step)

    def files(self, step: str) -> list[Path]:
        return list(self._files[step])

    def _check_types(self, step: str, schema: Any) -> None:
        """A column must keep one type across chunks, or the result cannot be put together:
        say so now, naming the step and the column, rather than when the Distiset is built."""
        import pyarrow as pa

        earlier = self._schemas.get(step)
        if earlier is None:
            self._schemas[step] = schema
            return
        try:
            self._schemas[step] = pa.unify_schemas([earlier, schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            clash = next((f.name for f in schema if f.name in earlier.names
                          and not _compatible(earlier.field(f.name).type, f.type)), None)
            where = f" column '{clash}'" if clash else ""
            raise SynthpipeError(
                f"step '{step}' produced{where} values of another type than in its earlier rows "
                f"(after row {self.rows_written[step]:,}): {exc}"
            ) from exc

    def _flush(self, step: str) -> None:
        import pyarrow.parquet as pq

        rows = self._buffers[step]
        if not rows:
            return
        import pyarrow as pa

        table = rows_to_table(rows, step)
        table = table.append_column(KEY_COLUMN, pa.array(self._keys[step], pa.int64()))
        self._check_types(step, table.schema)
        folder = self.data_dir / step
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"part-{len(self._files[step]):05d}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        self._files[step].append(final)
        self.rows_written[step] += len(rows)
        self._buffers[step] = []
        self._keys[step] = []


def _compatible(a: Any, b: Any) -> bool:
    import pyarrow as pa

    try:
        pa.unify_schemas([pa.schema([("x", a)]), pa.schema([("x", b)])], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True
