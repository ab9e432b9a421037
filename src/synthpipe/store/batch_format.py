"""How a finished batch is stored: columnar (an Arrow IPC stream, compressed with zstd when
large) where that is exact and cheap beside the step's own work, otherwise the pickled rows.

Exact: a resumed run hands the next steps the stored values, so they must be the very values
an uninterrupted run would have handed them: not an int turned float, a tuple turned list, a
missing key filled with ``None`` or a numpy array turned list. Arrow holds most rows of an
LLM pipeline exactly (strings, ints, floats, bools, bytes, lists and dicts of those with the
same keys in every row); for the rest, the exact pickle is stored instead.

Cheap: making the Arrow form costs five to ten times as much CPU as pickling (about 60 us for
a small batch, 1 ms for 250 KB of text), and the first one in a process needs pyarrow and
pandas imported (0.3 s). Beside LLM or embedding calls that is nothing, and compression
shrinks text about threefold; beside a step that adds a column in microseconds it would be
most of the run. So each worker keeps a ``ColumnarBudget``: the Arrow form is made only while
it has cost at most 1/``WORK_PER_ENCODING`` of the step's own time.

The two forms are told apart by their first bytes, so a store may hold both.
"""

from __future__ import annotations

import itertools
import pickle
import sys
import time
from typing import Any

ARROW_PREFIX = b"\xff\xff\xff\xff"
"""An Arrow IPC stream starts with this continuation marker; a pickle never does."""

COMPRESS_FROM_BYTES = 32 * 1024
"""Batches this large are compressed: text shrinks about threefold with zstd, at about 2.5 ns
a byte, nothing beside an LLM call; smaller batches would pay more in time than they save."""

WORK_PER_ENCODING = 20
"""The step's own time must be this many times what the Arrow forms cost (at most 5 % more)."""

FIRST_ENCODING_SECONDS = 0.3
"""What the first Arrow form costs in a process without pyarrow and pandas: importing them."""

_NONE = type(None)


class ColumnarBudget:
    """Decides, batch by batch in one worker, whether to make the Arrow form.

    The step's time earns credit (1/``WORK_PER_ENCODING`` of it); an Arrow form is made only
    when the credit covers its expected cost, and what it really cost is then spent. Over the
    worker's life the Arrow forms so cost at most that share of the step's time: an LLM step
    stores its batches columnar, a quick step none. The first one also pays for importing
    pyarrow and pandas where the step has not (done then and there: an import on a thread of
    its own could leave a step that forks with a child stuck on the import locks).
    """

    def __init__(self) -> None:
        self.credit = 0.0
        self._last = float("-inf")  # when credit was last earned

    def encode(self, rows: list[dict[str, Any]], work_seconds: float, pickled_bytes: int) -> bytes | None:
        """The Arrow form of ``rows`` (which took ``work_seconds`` to make), or None: not worth
        it (yet), or not exact.

        Only the time since credit was last earned counts: batches of an async step overlap,
        and time spent on several at once is still the worker's time once."""
        now = time.perf_counter()
        self.credit += min(work_seconds, now - self._last) / WORK_PER_ENCODING
        self._last = now
        expected = 40e-6 + 4e-9 * pickled_bytes  # measured, compression included
        if "pandas" not in sys.modules or "pyarrow" not in sys.modules:
            expected += FIRST_ENCODING_SECONDS
        if self.credit < expected:
            return None
        try:
            return encode_columnar(rows)
        finally:
            done = time.perf_counter()
            self.credit -= done - now
            self._last = done  # the encoding is not the step's work


def encode_columnar(rows: list[dict[str, Any]]) -> bytes | None:
    """``rows`` as an Arrow IPC stream, or None where Arrow would not give them back exactly."""
    if not rows or set(map(type, rows)) != {dict}:
        return None  # a dict subclass (OrderedDict) would come back a dict
    names = tuple(rows[0])
    if not names or any(tuple(row) != names for row in rows) or not _plain_keys(rows):
        return None  # Arrow would add the missing keys (as None), reorder them, or make them str
    seen = set(map(id, rows))
    if len(seen) != len(rows):
        return None  # one row object twice: a replay would give two
    import pyarrow as pa

    try:
        columns = [[row[name] for row in rows] for name in names]
        arrays = [pa.array(values) for values in columns]
        if not all(_exact(array.type, values, seen) for array, values in zip(arrays, columns, strict=True)):
            return None
        batch = pa.RecordBatch.from_arrays(arrays, names=list(names))
        large = batch.nbytes >= COMPRESS_FROM_BYTES
        options = pa.ipc.IpcWriteOptions(compression="zstd" if large else None)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema, options=options) as writer:
            writer.write_batch(batch)
        return sink.getvalue().to_pybytes()
    except Exception:  # a value Arrow cannot hold at all (an int over 64 bits, a lone surrogate)
        return None


def encode(rows: list[dict[str, Any]]) -> bytes:
    """The bytes to store for ``rows``: columnar where exact, pickled otherwise."""
    return encode_columnar(rows) or pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> list[dict[str, Any]]:
    """The rows stored in ``data``, whichever way they were stored."""
    if data[:4] == ARROW_PREFIX:
        import pyarrow as pa

        return pa.ipc.open_stream(data).read_all().to_pylist()
    return pickle.loads(data)


def is_columnar(data: bytes) -> bool:
    return data[:4] == ARROW_PREFIX


def _plain_keys(dicts: list[dict[Any, Any]]) -> bool:
    """Every key a plain str (a str subclass compares equal, but would come back a str)."""
    return set(map(type, itertools.chain.from_iterable(dicts))) <= {str}


def _exact(arrow_type: Any, values: list[Any], seen: set[int]) -> bool:
    """Whether ``values``, which Arrow converted to ``arrow_type``, come back unchanged.

    Arrow's inference coerces where Python would not: ints among floats become floats, tuples
    and numpy arrays become lists, str and float subclasses lose their class, dicts with other
    keys gain the missing ones. Each Arrow type accepts exactly one Python type here. ``seen``
    holds the ids of the batch's lists and dicts so far: one shared by two places (which a
    step could change in both at once) would come back as two copies.
    """
    import pyarrow.types as t

    if t.is_null(arrow_type):
        return True
    for is_kind, python_type in ((t.is_string, str), (t.is_int64, int), (t.is_float64, float),
                                 (t.is_boolean, bool), (t.is_binary, bytes)):
        if is_kind(arrow_type):
            return set(map(type, values)) <= {python_type, _NONE}
    present = [v for v in values if v is not None]
    if t.is_list(arrow_type):
        if set(map(type, present)) - {list} or not _unshared(present, seen):
            return False
        return _exact(arrow_type.value_type, list(itertools.chain.from_iterable(present)), seen)
    if t.is_struct(arrow_type):
        names = tuple(field.name for field in arrow_type)
        if (set(map(type, present)) - {dict} or set(map(tuple, present)) - {names} or not _plain_keys(present)
                or not _unshared(present, seen)):
            return False
        return all(_exact(arrow_type.field(i).type, [v[name] for v in present], seen)
                   for i, name in enumerate(names))
    return False  # dates, decimals and the rest: kept pickled rather than checked one by one


def _unshared(containers: list[Any], seen: set[int]) -> bool:
    ids = set(map(id, containers))
    if len(ids) != len(containers) or not ids.isdisjoint(seen):
        return False
    seen |= ids
    return True
