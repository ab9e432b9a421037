"""Reading JSON out of a model's text answer: bare, in a fenced block, or amid prose."""

from __future__ import annotations

import json
import re
from typing import Any

from synthpipe.steps.tasks.base import UnparsableAnswer

_FENCE = re.compile(r"```(?:json|python)?\s*\n?(.*?)```", re.S)


def loads_answer(text: str | None, kind: type = dict, what: str = "a JSON object") -> Any:
    """The JSON value of ``kind`` in ``text``; ``UnparsableAnswer`` (raw text kept) otherwise.

    Tried in order: the whole text, each fenced block, the span from the first opening
    bracket to the last closing one. Models often wrap JSON in prose or a code fence."""
    if text is None:
        raise UnparsableAnswer(f"expected {what}, the model returned no text", text)
    candidates = [text.strip(), *(m.strip() for m in _FENCE.findall(text))]
    opening, closing = ("{", "}") if kind is dict else ("[", "]")
    start, end = text.find(opening), text.rfind(closing)
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, kind):
            return value
    raise UnparsableAnswer(f"expected {what}", text)


def string_fields(value: dict[str, Any], keys: list[str], text: str, step: str) -> dict[str, Any]:
    """``keys`` of ``value``, each a non-empty string; ``UnparsableAnswer`` naming the first
    missing one."""
    out = {}
    for key in keys:
        field = value.get(key)
        if isinstance(field, (int, float)) and not isinstance(field, bool):
            field = str(field)
        if not isinstance(field, str) or not field.strip():
            raise UnparsableAnswer(f"step '{step}': the answer has no text for '{key}'", text)
        out[key] = field
    return out


def object_schema(keys: list[str]) -> dict[str, Any]:
    """The JSON schema of an object of required string fields ``keys``."""
    return {"type": "object", "properties": {k: {"type": "string"} for k in keys},
            "required": list(keys), "additionalProperties": False}
