"""Writes leaf steps' rows to Parquet chunk files as they arrive, so the coordinator's
memory holds at most one chunk per leaf, not the dataset.

Each row's key (the generator row it came from) is kept in a column of its own,
``KEY_COLUMN``, so rows retried later can be put back in order; the result drops it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from synthpipe.errors import SynthpipeError
from synthpipe.store.chunk_writer import ChunkWriter
from synthpipe.store.result_stream import KEY_COLUMN, RESULT_FOLDER, LeafStream

__all__ = ["KEY_COLUMN", "LeafWriter", "Misfit", "encode_leaf_rows", "find_misfits", "rows_to_table"]

def encode_leaf_rows(rows: list[dict[str, Any]]) -> bytes | None:
    """In a leaf's worker: ``rows`` as the result's Arrow form (an IPC stream of the one struct
    conversion ``_as_one`` does, ``_struct_table``), or None where that conversion fails (the
    coordinator then converts the rows, and sets aside those that fit no column)."""
    import pyarrow as pa

    try:
        table = _struct_table(rows)
        if table is None:
            return None
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()
    except Exception:  # noqa: BLE001 - whatever Arrow cannot hold, the coordinator sorts out
        return None


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


Misfit = tuple[dict[str, Any], int, "int | None", str]
"""A row set aside: (row, key, batch, why)."""


class LeafWriter:
    """Buffers a leaf's rows and writes them out in order, ``chunk_rows`` at a time.

    ``on_misfit(step, misfits)``: where rows go whose value no single column type can hold
    together with the column's other rows (an int among strings): they are set aside, and
    the others written, so one odd value never costs the rest of the result. Without it,
    such a chunk is an error naming the step and the column."""

    def __init__(self, data_dir: Path, leaves: list[str], chunk_rows: int = 10_000,
                 on_misfit: Callable[[str, list[Misfit]], None] | None = None,
                 result_dir: Path | None = None) -> None:
        self.data_dir = data_dir
        # each chunk also goes to the leaf's Arrow stream, which the result maps (result_stream)
        result_dir = result_dir if result_dir is not None else data_dir.parent / RESULT_FOLDER
        self._streams = {leaf: LeafStream(result_dir / f"{leaf}.arrow") for leaf in leaves}
        self.chunk_rows = chunk_rows
        self.on_misfit = on_misfit
        # per leaf: the rows buffered, as they came (a worker's Arrow form beside them, if it sent one)
        self._buffers: dict[str, list[tuple[Sequence[dict[str, Any]], bytes | None]]] = {leaf: [] for leaf in leaves}
        self._buffered: dict[str, int] = dict.fromkeys(leaves, 0)
        self._chunks = ChunkWriter()
        self._keys: dict[str, list[int]] = {leaf: [] for leaf in leaves}
        self._seqs: dict[str, list[int | None]] = {leaf: [] for leaf in leaves}
        self._files: dict[str, list[Path]] = {leaf: [] for leaf in leaves}
        self._schemas: dict[str, Any] = {}  # per leaf: the column types of the chunks so far
        self.rows_written: dict[str, int] = dict.fromkeys(leaves, 0)

    def write(self, step: str, rows: Sequence[dict[str, Any]], keys: list[int], seq: int | None = None) -> None:
        """``rows``: a list, or rows as their worker sent them (``runtime.packed``), with the
        Arrow form it made of them (``encode_leaf_rows``) where it did."""
        if not len(rows):
            return
        self._buffers[step].append((rows, getattr(rows, "table", None)))
        self._buffered[step] += len(rows)
        self._keys[step].extend(keys)
        self._seqs[step].extend([seq] * len(rows))
        if self._buffered[step] >= self.chunk_rows:
            self._flush(step)

    def close(self) -> None:
        """Write out what is buffered and wait for every chunk to be written (again: nothing)."""
        try:
            for step in self._buffers:
                self._flush(step)
        finally:
            self._chunks.close()
        for stream in self._streams.values():
            try:
                stream.finish()
            except OSError:
                stream.drop()  # the result is then made from the chunks

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
        pieces, keys = self._buffers[step], self._keys[step]
        if not pieces:
            return
        import pyarrow as pa

        table = self._from_workers(step, pieces)
        if table is None:
            rows = [row for piece, _ in pieces for row in piece]
            arrays: dict[str, Any] | None = None
            if self.on_misfit is not None:
                rows, keys, arrays = self._set_aside_misfits(step, rows, keys)
            if rows:
                # the columns converted while looking for misfits, when none was found: not made twice
                table = pa.table(arrays) if arrays is not None else rows_to_table(rows, step)
        self._buffers[step], self._keys[step], self._seqs[step], self._buffered[step] = [], [], [], 0
        if table is None:
            return
        table = table.append_column(KEY_COLUMN, pa.array(keys, pa.int64()))
        self._check_types(step, table.schema)
        folder = self.data_dir / step
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"part-{len(self._files[step]):05d}.parquet"
        self._chunks.put(table, final, self._streams[step])
        self._files[step].append(final)
        self.rows_written[step] += table.num_rows

    def _from_workers(self, step: str, pieces: list[tuple[Sequence[dict[str, Any]], bytes | None]]) -> Any:
        """The chunk as one table made of the Arrow forms its workers sent, when every piece has
        one and their columns fit together and with the earlier chunks'; else None."""
        if not all(form is not None for _, form in pieces):
            return None
        import pyarrow as pa

        try:
            tables = [pa.ipc.open_stream(form).read_all() for _, form in pieces]
            table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None
        return table if _fits_earlier(table.schema, self._schemas.get(step)) else None

    def _set_aside_misfits(self, step: str, rows: list[dict[str, Any]], keys: list[int]
                           ) -> tuple[list[dict[str, Any]], list[int], dict[str, Any] | None]:
        """The rows that fit, their keys, and (when all fit) their columns as Arrow arrays."""
        misfits, arrays = _check_columns(rows, self._schemas.get(step))
        if not misfits:
            return rows, keys, arrays
        seqs = self._seqs[step]
        assert self.on_misfit is not None
        self.on_misfit(step, [(rows[i], keys[i], seqs[i], why) for i, why in sorted(misfits.items())])
        kept = [i for i in range(len(rows)) if i not in misfits]
        return [rows[i] for i in kept], [keys[i] for i in kept], None


def _compatible(a: Any, b: Any) -> bool:
    import pyarrow as pa

    try:
        pa.unify_schemas([pa.schema([("x", a)]), pa.schema([("x", b)])], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return False
    return True


def find_misfits(rows: list[dict[str, Any]], earlier: Any = None) -> dict[int, str]:
    """Rows whose value in some column fits no type the column's other rows (and ``earlier``,
    the schema of the chunks written before) can share: row index -> why."""
    return _check_columns(rows, earlier)[0]


def _check_columns(rows: list[dict[str, Any]], earlier: Any) -> tuple[dict[int, str], dict[str, Any] | None]:
    """``find_misfits``, and every column as the Arrow array made to check it (None unless
    every column converted as a whole): the chunk's table, without converting it again."""
    import pyarrow as pa

    whole = _as_one(rows, earlier)
    if whole is not None:
        return {}, whole
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    misfits: dict[int, str] = {}
    arrays: dict[str, Any] | None = {}
    for column in columns:
        if not isinstance(column, str):
            arrays = None
            continue  # a key Arrow cannot name: the step's own output is wrong (checked in the worker)
        values = [row.get(column) for row in rows]
        known = earlier.field(column).type if earlier is not None and column in earlier.names else None
        try:
            array = pa.array(values)
            inferred = array.type
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            inferred = None
        if inferred is not None and (known is None or known == inferred or _compatible(known, inferred)):
            if arrays is not None:
                arrays[column] = array
            continue
        arrays = None
        target = known if known is not None else _majority_type(values)
        for i, value in enumerate(values):
            if value is None or i in misfits or (target is not None and _fits(value, target)):
                continue
            shown = repr(value)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            name = type(value).__name__
            article = "an" if name[:1] in "aeiou" else "a"
            misfits[i] = (f"column '{column}' holds {article} {name} ({shown}) where the column's other "
                          f"rows hold {target}: a result column has one type")
    return misfits, arrays


def _as_one(rows: list[dict[str, Any]], earlier: Any) -> dict[str, Any] | None:
    """The common case, in one conversion: every row at once as an Arrow struct (converted in
    C++, an order of magnitude faster than a Python list per column; columns in the order they
    first appear, as ``rows_to_table`` has them), when every column converts and fits the
    earlier chunks' types. None: the column by column search for misfits decides."""
    table = _struct_table(rows)
    if table is None or not _fits_earlier(table.schema, earlier):
        return None
    return {name: table.column(name) for name in table.column_names}


def _struct_table(rows: list[dict[str, Any]]) -> Any:
    """``rows`` converted at once as an Arrow struct, as a table; None where that fails, gives no
    column or a column name that is not a str."""
    import pyarrow as pa

    try:
        table = pa.Table.from_struct_array(pa.array(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, TypeError, ValueError):
        return None
    if table.num_columns == 0 or not all(isinstance(name, str) for name in table.column_names):
        return None
    return table


def _fits_earlier(schema: Any, earlier: Any) -> bool:
    """Every column of ``schema`` that the earlier chunks (``earlier``, None: none) had too is
    of their type or one that promotes with it."""
    if earlier is None:
        return True
    for field in schema:
        if field.name in earlier.names:
            known = earlier.field(field.name).type
            if known != field.type and not _compatible(known, field.type):
                return False
    return True


def _majority_type(values: list[Any]) -> Any:
    import pyarrow as pa

    counts: dict[str, list[Any]] = {}
    for value in values:
        if value is None:
            continue
        try:
            arrow_type = pa.array([value]).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            continue
        counts.setdefault(str(arrow_type), [0, arrow_type])[0] += 1
    if not counts:
        return None
    return max(counts.values(), key=lambda c: c[0])[1]


def _fits(value: Any, arrow_type: Any) -> bool:
    import pyarrow as pa

    try:
        pa.array([value], type=arrow_type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return False
    return True
