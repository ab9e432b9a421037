"""Step signatures: what a step's output depends on, hashed.

A step's signature covers its class, every parameter that can change its output (runtime
parameters, column mappings, the data of in-memory generators) and the signatures of its
predecessors, in order. It leaves out what only changes how the work is done: replicas,
resources, timeouts, retries, error policy. Batch sizes stay in: finished work is stored
and found again batch by batch, so a step whose batches are cut differently recomputes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

NOT_IN_SIGNATURE = frozenset({
    "name", "resources", "on_error", "timeout", "load_timeout", "retries", "retry_delay",
    "max_restarts", "max_failed_rows", "max_failure_rate", "use_cache", "max_rows_in_flight",
})


def stable_form(value: Any) -> Any:
    """A JSON-able form of a field value that does not depend on object addresses."""
    if isinstance(value, type):  # a class as a value (a model class has model_dump too, unbound)
        return f"class {value.__module__}.{value.__qualname__}"
    if hasattr(value, "signature_fields"):  # a model: only what changes its output, never a key
        return {"__class__": f"{type(value).__module__}.{type(value).__qualname__}",
                **{k: stable_form(v) for k, v in value.signature_fields().items()}}
    if hasattr(value, "model_dump"):
        return {"__class__": f"{type(value).__module__}.{type(value).__qualname__}",
                **{k: stable_form(v) for k, v in value.model_dump().items()}}
    if isinstance(value, dict):
        return {str(k): stable_form(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [stable_form(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return f"{type(value).__module__}.{type(value).__qualname__}:{value!r}"


def _field_text(value: Any) -> str:
    """JSON of a field value; the C encoder first (fast on large in-memory data sets)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        return json.dumps(stable_form(value), sort_keys=True, separators=(",", ":"), default=repr)


def step_signature(step: Any, predecessor_signatures: list[str]) -> str:
    cls = type(step)
    fields = {name: _field_text(getattr(step, name)) for name in cls.model_fields if name not in NOT_IN_SIGNATURE}
    blob = json.dumps(
        {"class": f"{cls.__module__}.{cls.__qualname__}", "fields": fields, "after": predecessor_signatures},
        sort_keys=True, default=repr,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_signatures(order: list[str], steps: dict[str, Any], predecessors: dict[str, list[str]],
                    routing: dict[str, str] | None = None) -> dict[str, str]:
    """Every step's signature, computed in topological order. ``routing``: per routing step,
    what identifies its routing function (its stored decisions are only good for that one)."""
    signatures: dict[str, str] = {}
    for name in order:
        after = [signatures[p] for p in predecessors[name]]
        if routing and name in routing:
            after.append(f"routing {routing[name]}")
        signatures[name] = step_signature(steps[name], after)
    return signatures


def combined_signature(signatures: dict[str, str]) -> str:
    """One hash for a whole pipeline's outputs (finds a finished run's result)."""
    return hashlib.sha256(json.dumps(signatures, sort_keys=True).encode()).hexdigest()[:16]
