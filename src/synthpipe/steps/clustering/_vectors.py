"""What both clustering steps share: the check they make first (a column of equal-length number
vectors) and how they keep their fitted model."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any


def vectors(step: str, rows: list[dict[str, Any]], column: str, at_least: int = 1) -> Any:
    """``rows[i][column]`` as an ``(n_rows, dim)`` float array; a clear error naming the step,
    the column and the first bad row otherwise (before any fitting starts)."""
    import numpy as np

    if not rows:
        return np.zeros((0, 0))
    width: int | None = None
    for index, row in enumerate(rows):
        if column not in row:
            raise KeyError(f"step '{step}': row {index} has no column '{column}' (it has {sorted(row)})")
        value = row[column]
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(x, numbers.Real) and not isinstance(x, bool) for x in value)):
            raise TypeError(f"step '{step}': column '{column}' must hold lists of numbers; row {index} holds "
                            f"{type(value).__name__} {value!r:.80}")
        if width is None:
            width = len(value)
            if width < at_least:
                raise ValueError(f"step '{step}': column '{column}' needs at least {at_least} numbers per row; "
                                 f"row {index} has {width}")
        elif len(value) != width:
            raise ValueError(f"step '{step}': column '{column}' must hold vectors of one length; row 0 has "
                             f"{width} numbers, row {index} has {len(value)}")
    array = np.asarray([row[column] for row in rows], dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise ValueError(f"step '{step}': column '{column}' must hold finite numbers; row {int(bad[0])} holds "
                         f"{rows[int(bad[0])][column]!r:.80}")
    return array


def keep_fitted_model(step: Any, artifact: str, filename: str, model: Any, metadata: dict[str, Any]) -> None:
    """``model`` pickled with joblib as ``filename`` in the step's artifact ``artifact``."""
    import joblib

    def write(folder: Path) -> None:
        with open(folder / filename, "wb") as fh:
            joblib.dump(model, fh)

    step.save_artifact(artifact, write, metadata)
