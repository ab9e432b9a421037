"""The result's form on disk: per leaf, one Arrow stream file (``<run>/result/<leaf>.arrow``)
that the result memory-maps, beside the Parquet chunks that stay the durable record.

The leaf writer appends each chunk to it as the chunk is written, so the result is in hand
the moment the last chunk is; a stamp (the chunks it holds, by name, size and time) says
which chunks those are. Where the stamp does not match the chunks (a retry merged rows in, a
column's type widened half-way, a run from before this file existed), the file is made again
from the chunks, one record batch at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RESULT_FOLDER = "result"
KEY_COLUMN = "__synthpipe_key__"  # the leaf writer's: which generator row a leaf row came from


def stamp(files: list[Path]) -> str:
    return json.dumps([[f"{f.parent.name}/{f.name}", f.stat().st_size, f.stat().st_mtime_ns] for f in files])


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".sources.json")


def is_current(target: Path, files: list[Path]) -> bool:
    try:
        return target.exists() and _stamp_path(target).read_text() == stamp(files)
    except OSError:
        return False


def _result_schema(schema: Any) -> Any:
    if KEY_COLUMN in schema.names:
        schema = schema.remove(schema.get_field_index(KEY_COLUMN))
    return schema.remove_metadata()


def write_from_parquet(files: list[Path], target: Path) -> None:
    """``target`` made from the Parquet chunks, streamed: memory holds one record batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _result_schema(pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")  # two processes may build it at once
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=65_536):
                writer.write_batch(conform(batch, schema))
    os.replace(tmp, target)
    _stamp_path(target).write_text(stamp(files))


def conform(batch: Any, schema: Any) -> Any:
    """``batch`` with the leaf's columns, in order and of the leaf's types (a column a chunk
    lacks is all nulls there, as ``concat_tables`` would have made it)."""
    import pyarrow as pa

    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        column = batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, field.type)
        columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class LeafStream:
    """One leaf's Arrow stream file, written chunk by chunk as the leaf writer writes them.

    A chunk whose columns widen the leaf's types (nulls first, strings later) cannot go into
    a stream whose schema is fixed: the stream is then dropped, and the result made from the
    chunks when it is asked for."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self._tmp = target.with_name(f"{target.name}.{os.getpid()}.partial")
        self._sink: Any = None
        self._writer: Any = None
        self._schema: Any = None
        self._files: list[Path] = []
        self.broken = False

    def add(self, table: Any, file: Path) -> None:
        import pyarrow as pa

        if self.broken:
            return
        schema = _result_schema(table.schema)
        if self._writer is None:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._sink = pa.OSFile(str(self._tmp), "wb")
            self._writer = pa.ipc.new_stream(self._sink, schema)
            self._schema = schema
        elif schema != self._schema:
            try:
                same = pa.unify_schemas([self._schema, schema], promote_options="permissive") == self._schema
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                same = False
            if not same:
                self.drop()
                return
        for batch in table.drop_columns([c for c in (KEY_COLUMN,) if c in table.column_names]).to_batches():
            self._writer.write_batch(conform(batch, self._schema))
        self._files.append(file)

    def finish(self) -> None:
        """The file in place, with the stamp of the chunks it holds."""
        if self._writer is None or self.broken:
            return
        self._writer.close()
        self._sink.close()
        self._writer = self._sink = None
        os.replace(self._tmp, self.target)
        _stamp_path(self.target).write_text(stamp(self._files))

    def drop(self) -> None:
        self.broken = True
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None
        self._tmp.unlink(missing_ok=True)
