"""Helpers the column steps share: clear errors that name the step, column and row."""

from __future__ import annotations

from typing import Any

METADATA_KEY = "distilabel_metadata"


def missing_column(step: Any, column: str, row_index: int, row: dict[str, Any]) -> KeyError:
    return KeyError(
        f"step '{step.name}': row {row_index} has no column '{column}' (it has {sorted(row)})"
    )


def wrong_type(step: Any, column: str, row_index: int, expected: str, value: Any) -> TypeError:
    return TypeError(
        f"step '{step.name}': column '{column}' must hold {expected}; row {row_index} holds "
        f"{type(value).__name__} {value!r:.80}"
    )


def merge_metadata(target: dict[str, Any], source: dict[str, Any]) -> None:
    """Union of two rows' ``distilabel_metadata`` dicts, so neither branch's statistics are lost."""
    theirs = source.get(METADATA_KEY)
    if isinstance(theirs, dict):
        mine = target.get(METADATA_KEY)
        target[METADATA_KEY] = {**(mine if isinstance(mine, dict) else {}), **theirs}
