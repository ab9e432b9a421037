"""Shared bits for tasks whose answer has a shape: reading JSON out of an answer, reading
``Key: value`` lines, and the sentence that asks for JSON when structured output is on.

Every reader raises ``UnparsableAnswer`` (never anything else), so a task that uses them
fails the row alone, with the raw text kept.
"""

from __future__ import annotations

import json
import re
from typing import Any

from synthpipe.steps.tasks.base import UnparsableAnswer

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def json_answer(text: str | None, what: str) -> dict[str, Any]:
    """The JSON object in ``text`` (bare, or inside a fenced block)."""
    if text is None:
        raise UnparsableAnswer(f"{what}: the model returned no text", text)
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise UnparsableAnswer(f"{what}: the answer is not a JSON object", text)


def ask_for_json(schema: dict[str, Any]) -> str:
    """The closing sentence of a prompt when the answer is constrained to ``schema``."""
    return ("Answer with one JSON object that follows this JSON schema, and nothing else:\n"
            + json.dumps(schema, separators=(",", ":")))


def integer_in(value: Any, low: int, high: int) -> int | None:
    """``value`` as an int in [low, high], else None (a rating of 7 on a 1-5 scale is not read)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = re.match(r"\s*\[?\s*(-?\d+)(?:\.0+)?(?![\d.])", value)
        if match is None:
            return None
        value = int(match.group(1))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and low <= value <= high:
        return value
    return None


def require_text(value: Any, step: str, column: str) -> str:
    """A row's column as text; a clear error naming the step and column otherwise."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"step '{step}': column '{column}' must be a non-empty string, got {value!r}")
    return value
