"""Rows as a worker sent them: its pickled bytes, unpickled only if the coordinator looks inside.

Most outputs cross the coordinator whole: a step's batch becomes the next step's batch as it
is. The coordinator then keeps the worker's bytes and sends them on as they came, instead of
unpickling every row and pickling it again. Whatever does read rows (a routing function, a
re-batch that cuts an output in two, the result's writer, the failed-rows ledger) sees an
ordinary read-only sequence, unpickled once on first use.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from typing import Any

Row = dict[str, Any]


class PackedRows(Sequence):  # type: ignore[type-arg]
    """``count`` rows pickled in ``data`` (a list, pickled on its own). Pickling it again sends
    those very bytes; the other side unpickles a plain list. ``table``: the same rows in the
    result's Arrow form, where a leaf's worker made it (``store.leaf_writer.encode_leaf_rows``)."""

    __slots__ = ("data", "table", "_count", "_rows")

    def __init__(self, data: bytes, count: int, table: bytes | None = None) -> None:
        self.data = data
        self.table = table
        self._count = count
        self._rows: list[Row] | None = None

    @property
    def rows(self) -> list[Row]:
        """The rows themselves (unpickled on first use; treat them as read-only: the bytes sent
        on are the worker's)."""
        if self._rows is None:
            self._rows = pickle.loads(self.data)
        return self._rows

    @property
    def unpacked(self) -> bool:
        return self._rows is not None

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedRows):
            return self.data == other.data or self.rows == other.rows
        return isinstance(other, Sequence) and self.rows == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return pickle.loads, (self.data,)

    def __repr__(self) -> str:
        return f"PackedRows({self._count} rows, {len(self.data)} bytes)"

