"""What the formatting steps share: prompt ids, the first user turn, checked columns."""

from __future__ import annotations

import hashlib
from typing import Any


def prompt_id(prompt: str) -> str:
    """SHA-256 hex of the prompt, as the alignment-handbook style datasets key prompts."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def require(step: Any, row: dict[str, Any], index: int, column: str, kind: type | tuple[type, ...],
            what: str) -> Any:
    if column not in row:
        raise KeyError(f"step '{step.name}': row {index} has no column '{column}' (it has {sorted(row)})")
    value = row[column]
    if not isinstance(value, kind):
        raise TypeError(f"step '{step.name}': column '{column}' must hold {what}; row {index} holds "
                        f"{type(value).__name__} {value!r:.80}")
    return value


def first_user_turn(step: Any, messages: list[Any], index: int) -> str:
    for turn in messages:
        if isinstance(turn, dict) and turn.get("role") == "user" and isinstance(turn.get("content"), str):
            return turn["content"]
    raise ValueError(f"step '{step.name}': the 'messages' of row {index} hold no user turn with text content")


def system_then_user(system_prompt: Any, instruction: str) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": instruction}]
    if isinstance(system_prompt, str) and system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages
