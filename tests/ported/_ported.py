"""What every ported script shares: the local stand-in endpoint and the one-line result report.

A ported script is a distilabel 1.5.3 pipeline as its documentation teaches it, with
``distilabel`` changed to ``synthpipe`` in the imports and the LLM pointed at
``tests/llm_server.py``'s ``LLMTestServer`` on 127.0.0.1 instead of a hosted model. The server's
answers are scripted per script (``answers=[(regex, content)]`` or a ``responder``); everything
else (requests, parsing, the engine, the Distiset) is real.

The last stdout line of a script is ``RESULT {json}``: per leaf its columns and row count, and
the number of failed rows, which ``tests/test_ported_pipelines.py`` checks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for llm_server


def serve(**config: Any) -> Any:
    """A started ``LLMTestServer`` (stopped at exit with the process: its thread is a daemon)."""
    from llm_server import LLMTestServer

    return LLMTestServer(latency=0.0, **config).start()


def report(distiset: Any, **extra: Any) -> None:
    summary = {
        "leaves": {name: {"columns": sorted(dd["train"].column_names), "rows": dd["train"].num_rows}
                   for name, dd in distiset.items()},
        "failed_rows": len(getattr(distiset, "failed_rows", [])),
        **extra,
    }
    print("RESULT " + json.dumps(summary, sort_keys=True), flush=True)


def conversation(body: dict[str, Any]) -> str:
    """Every message's text (or the raw prompt), as the test server matches ``answers`` on it."""
    if "prompt" in body:
        return str(body["prompt"])
    return "\n".join(str(m.get("content")) for m in body.get("messages") or [])


def schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a task asked for (OpenAI's ``json_schema`` response format), if any."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return fmt["json_schema"].get("schema", {})
    return None


def plausible(schema: dict[str, Any], items: int = 2, defs: dict[str, Any] | None = None) -> Any:
    """A filled-in instance of ``schema``, as a cooperative model would write it: ``items``
    entries per array (within its bounds), mid-range integers, a sentence per string."""
    defs = schema.get("$defs", defs or {})
    if "$ref" in schema:
        return plausible(defs[schema["$ref"].rsplit("/", 1)[-1]], items, defs)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return plausible(options[0], items, defs)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: plausible(sub, items, defs) for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        n = max(schema.get("minItems", 0), min(items, schema.get("maxItems", items)))
        return [plausible(schema.get("items", {}), items, defs) for _ in range(n)]
    if kind == "integer":
        low, high = schema.get("minimum", 1), schema.get("maximum", 5)
        return max(low, min(high, 4))
    if kind == "number":
        return float(max(schema.get("minimum", 0), min(schema.get("maximum", 1), 0.8)))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "A clear, correct and complete answer."
