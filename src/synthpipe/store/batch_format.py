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
import threading
import time
from typing import Any

ARROW_PREFIX = b"\xff\xff\xff\xff"
"""An Arrow IPC stream starts with this continuation marker; a pickle never does."""

COMPRESS_FROM_BYTES = 32 * 1024
"""Batches this large are compressed: text shrinks about threefold with zstd, at about 2.5 ns
a byte, nothing beside an LLM call; smaller batches would pay more in time than they save."""

WORK_PER_ENCODING = 20
"""The step's own time must be this many times what the Arrow forms cost (at most 5 % more)."""

_NONE = type(None)


class ColumnarBudget:
    """Decides, batch by batch in one worker, whether to make the Arrow form.

    The step's time earns credit (1/``WORK_PER_ENCODING`` of it); an Arrow form is made only
    when the credit covers its expected cost, and what it really cost is then spent. Over the
    worker's life the Arrow forms so cost at most that share of the step's time: an LLM step
    stores every batch columnar, a quick step none.

    The first time the credit would pay for one, pyarrow and pandas (which its conversions
    import) are imported on a thread of their own, so that an event loop serving LLM requests
    does not stall for the 0.3 s that takes; batches stay pickled until then, and the time the
    import took is spent from the credit too.
    """

    def __init__(self) -> None:
        self.credit = 0.0
        self._ready = threading.Event()
        self._importing = False
        self._import_seconds = 0.0

    def encode(self, rows: list[dict[str, Any]], work_seconds: float, pickled_bytes: int) -> bytes | None:
        """The Arrow form of ``rows`` (which took ``work_seconds`` to make), or None: not worth
        it (yet), or not exact."""
        self.credit += work_seconds / WORK_PER_ENCODING
        if self.credit < 40e-6 + 4e-9 * pickled_bytes or not self._arrow_ready():  # measured, with compression
            return None
        started = time.perf_counter()
        try:
            return encode_columnar(rows)
        finally:
            self.credit -= time.perf_counter() - started

    def _arrow_ready(self) -> bool:
        if self._ready.is_set():
            self.credit -= self._import_seconds
            self._import_seconds = 0.0
            return True
        if not self._importing:
            self._importing = True
            if "pandas" in sys.modules and "pyarrow" in sys.modules:  # the step loaded them: at once
                self._import_arrow()
                return self._arrow_ready()
            threading.Thread(target=self._import_arrow, name="synthpipe-arrow", daemon=True).start()
        return False

    def _import_arrow(self) -> None:
        started = time.perf_counter()
        try:
            import pandas  # noqa: F401
            import pyarrow

            pyarrow.array([0])  # the first conversion sets up pyarrow's pandas support
        except Exception:  # no Arrow form, then: every batch stays pickled
            return
        self._import_seconds = time.perf_counter() - started
        self._ready.set()


def encode_columnar(rows: list[dict[str, Any]]) -> bytes | None:
    """``rows`` as an Arrow IPC stream, or None where Arrow would not give them back exactly."""
    if not rows:
        return None
    names = tuple(rows[0])
    if not names or any(tuple(row) != names for row in rows) or set(map(type, names)) != {str}:
        return None  # Arrow would add the missing keys (as None), reorder them, or make them str
    import pyarrow as pa

    try:
        columns = [[row[name] for row in rows] for name in names]
        arrays = [pa.array(values) for values in columns]
        if not all(_exact(array.type, values) for array, values in zip(arrays, columns, strict=True)):
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


def _exact(arrow_type: Any, values: list[Any]) -> bool:
    """Whether ``values``, which Arrow converted to ``arrow_type``, come back unchanged.

    Arrow's inference coerces where Python would not: ints among floats become floats, tuples
    and numpy arrays become lists, str and float subclasses lose their class, dicts with other
    keys gain the missing ones. Each Arrow type accepts exactly one Python type here.
    """
    import pyarrow.types as t

    if t.is_null(arrow_type):
        return True
    for is_kind, python_type in ((t.is_string, str), (t.is_int64, int), (t.is_float64, float),
                                 (t.is_boolean, bool), (t.is_binary, bytes)):
        if is_kind(arrow_type):
            return set(map(type, values)) <= {python_type, _NONE}
    if t.is_list(arrow_type):
        if not set(map(type, values)) <= {list, _NONE}:
            return False
        items = list(itertools.chain.from_iterable(v for v in values if v is not None))
        return _exact(arrow_type.value_type, items)
    if t.is_struct(arrow_type):
        present = [v for v in values if v is not None]
        names = tuple(field.name for field in arrow_type)
        if set(map(type, present)) - {dict} or set(map(tuple, present)) - {names}:
            return False
        return all(_exact(arrow_type.field(i).type, [v[name] for v in present]) for i, name in enumerate(names))
    return False  # dates, decimals and the rest: kept pickled rather than checked one by one
