"""Reading a column of vectors (or of neighbour lists) into numpy, checked before any work.

Why its own module: the three near-neighbour steps read the same kinds of columns and must
all fail the same way on bad input — one clear error naming the step, the column and the
first bad row — instead of a numpy or faiss message from deep inside the search.
"""

from __future__ import annotations

from typing import Any

_SEQUENCE = (list, tuple)


def _is_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "ndim")


def _describe(value: Any) -> str:
    if _is_array(value):
        return f"an array of {value.dtype}"
    return type(value).__name__


def _bad_element(values: Any) -> str | None:
    """What the first element that is not a real number is ("a str"), or None when all are."""
    if _is_array(values):
        return None if values.dtype.kind in "fiu" else _describe(values)
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            if type(item).__module__ == "numpy" and getattr(item, "dtype", None) is not None \
                    and item.dtype.kind in "fiu":
                continue
            return f"a {type(item).__name__}"
    return None


def vector_matrix(step: str, rows: list[dict[str, Any]], column: str) -> Any:
    """The ``column`` of every row as one float32 matrix (rows x dimensions).

    Raises ``TypeError`` (a value that is not a list of numbers) or ``ValueError`` (an empty
    vector, vectors of different lengths, NaN or infinity), naming the step, the column and the
    first bad row, so a run stops before any index is built."""
    import numpy as np

    if not rows:
        return np.zeros((0, 0), dtype=np.float32)
    width: int | None = None
    for i, row in enumerate(rows):
        value = row.get(column)
        if not (isinstance(value, _SEQUENCE) or (_is_array(value) and value.ndim == 1)):
            raise TypeError(f"step '{step}': column '{column}' must hold lists of numbers; row {i} holds "
                            f"{_describe(value)}")
        if len(value) == 0:
            raise ValueError(f"step '{step}': column '{column}' holds an empty vector in row {i}")
        if width is None:
            width = len(value)
        elif len(value) != width:
            raise ValueError(f"step '{step}': column '{column}' holds vectors of different lengths: row 0 has "
                             f"{width} values, row {i} has {len(value)}")
    try:
        matrix = np.asarray([row[column] for row in rows])
    except ValueError:  # a nested list somewhere
        matrix = np.empty(0, dtype=object)
    if matrix.dtype.kind not in "fiu":  # a string, None or bool somewhere: find the first one
        for i, row in enumerate(rows):
            bad = _bad_element(row[column])
            if bad is not None:
                raise TypeError(f"step '{step}': column '{column}' must hold lists of numbers; row {i} "
                                f"holds {bad}")
        raise TypeError(f"step '{step}': column '{column}' must hold lists of numbers")  # pragma: no cover
    matrix = matrix.astype(np.float32)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(f"step '{step}': column '{column}' holds NaN or infinity in row {i}")
    return matrix


def neighbour_lists(step: str, rows: list[dict[str, Any]], indices: str, scores: str) -> list[tuple[Any, Any]]:
    """Each row's neighbour positions and scores as numpy arrays, checked to pair up and to
    point at rows of this input (``-1``, faiss' "no neighbour", is dropped)."""
    import numpy as np

    out = []
    n = len(rows)
    for i, row in enumerate(rows):
        idx, sc = row.get(indices), row.get(scores)
        for name, value in ((indices, idx), (scores, sc)):
            if not (isinstance(value, _SEQUENCE) or (_is_array(value) and value.ndim == 1)):
                raise TypeError(f"step '{step}': column '{name}' must hold lists; row {i} holds "
                                f"{_describe(value)}")
            bad = _bad_element(value)
            if bad is not None:
                raise TypeError(f"step '{step}': column '{name}' must hold lists of numbers; row {i} holds "
                                f"{bad}")
        if len(idx) != len(sc):
            raise ValueError(f"step '{step}': row {i} has {len(idx)} '{indices}' but {len(sc)} '{scores}'")
        idx_arr = np.asarray(idx, dtype=np.float64)
        if idx_arr.size and not (np.mod(idx_arr, 1) == 0).all():
            raise TypeError(f"step '{step}': column '{indices}' must hold whole row positions; row {i} does not")
        idx_arr = idx_arr.astype(np.int64)
        sc_arr = np.asarray(sc, dtype=np.float64)
        present = idx_arr != -1
        idx_arr, sc_arr = idx_arr[present], sc_arr[present]
        out_of_range = (idx_arr < 0) | (idx_arr >= n)
        if out_of_range.any():
            raise ValueError(f"step '{step}': column '{indices}' in row {i} points at row "
                             f"{int(idx_arr[out_of_range][0])}, but the input has {n} rows (0-{n - 1})")
        out.append((idx_arr, sc_arr))
    return out
