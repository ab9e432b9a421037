"""What a step gives back, checked where it is given: rows in the shape its kind promises.

A wrong shape would otherwise thin the result silently or surface later, in the engine,
as an error that names no step. Accepted besides the documented shapes, because their
meaning is plain: a ``process()`` that *returns* its list of rows instead of yielding it,
and a generator that yields lists of rows without ``is_last_batch`` (its batches then end
when it ends). Everything else stops with a ``StepOutputError`` naming the step and what was
expected (the error's record adds the batch).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from synthpipe.errors import StepOutputError


def _a(value: Any) -> str:
    name = type(value).__name__
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def step_rows(step: str, result: Any) -> list[dict[str, Any]]:
    """All the rows a ``process()`` call gave: lists of rows yielded, or one list returned."""
    if result is None:
        raise StepOutputError(f"step '{step}': process() returned None; it must yield lists of rows "
                              "(`yield rows`), or return one list of rows")
    if isinstance(result, dict):
        raise StepOutputError(f"step '{step}': process() returned one row (a dict); it must yield lists of "
                              "rows: `yield [row]` or `yield rows`")
    chunks: Iterable[Any]
    if isinstance(result, (list, tuple)) and all(isinstance(r, dict) for r in result):
        chunks = [result]  # returned instead of yielded: the same rows
    elif isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
        raise StepOutputError(f"step '{step}': process() returned {_a(result)}; it must yield lists of rows")
    else:
        chunks = result
    out: list[dict[str, Any]] = []
    for number, chunk in enumerate(chunks):
        out.extend(_chunk_rows(step, chunk, number))
    return out


def _chunk_rows(step: str, chunk: Any, number: int) -> list[dict[str, Any]]:
    if isinstance(chunk, dict):
        raise StepOutputError(f"step '{step}': process() yielded one row (a dict) as its output number {number}; "
                              "a step yields lists of rows: `yield [row]` or `yield rows`")
    if not isinstance(chunk, (list, tuple)):
        raise StepOutputError(f"step '{step}': process() yielded {_a(chunk)} as its output number {number}, "
                              "where a list of rows (dicts) was expected")
    if all(type(row) is dict for row in chunk):
        return list(chunk)
    for i, row in enumerate(chunk):
        if not isinstance(row, dict):
            raise StepOutputError(f"step '{step}': process() yielded a list whose item {i} is {_a(row)}, "
                                  "not a row (a dict of column -> value)")
    return list(chunk)


def generator_batches(step: str, produced: Any) -> Iterator[tuple[list[dict[str, Any]], bool]]:
    """``(rows, is_last_batch)`` for each batch of a generator step's ``process()``."""
    if isinstance(produced, (list, tuple)) and all(isinstance(r, dict) for r in produced):
        yield list(produced), True  # one list returned: all the rows at once
        return
    if produced is None or isinstance(produced, (dict, str, bytes)) or not isinstance(produced, Iterable):
        raise StepOutputError(f"generator step '{step}': process() returned {_a(produced)}; it must yield "
                              "(rows, is_last_batch) pairs")
    for number, item in enumerate(produced):
        if (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (list, tuple))
                and isinstance(item[1], (bool, int)) and not isinstance(item[1], dict)):
            yield _chunk_rows(step, item[0], number), bool(item[1])
        elif isinstance(item, list):  # rows alone: the batches end when the generator does
            yield _chunk_rows(step, item, number), False
        else:
            raise StepOutputError(f"generator step '{step}': process() yielded {_a(item)} as its batch number "
                                  f"{number}; a generator yields (rows, is_last_batch) pairs, e.g. "
                                  "`yield rows, False`")


def check_rows(step: str, rows: list[dict[str, Any]], declared: dict[str, bool]) -> None:
    """Column names are strings, and each required declared column is written by the batch."""
    if not rows:
        return
    if not all(isinstance(key, str) for key in set().union(*rows)):  # the rare case is then found row by row
        i, key = next((i, k) for i, row in enumerate(rows) for k in row if not isinstance(k, str))
        raise StepOutputError(f"step '{step}': output row {i} has a column named {key!r} ({_a(key)}); "
                              "column names must be strings")
    missing = [c for c, required in declared.items() if required and not any(c in row for row in rows)]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise StepOutputError(f"step '{step}': declares output column(s) {names} but wrote none in this batch's "
                              f"{len(rows)} row(s); write them, or declare them optional "
                              "(outputs={'column': False})")
