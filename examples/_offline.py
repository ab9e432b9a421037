"""The offline stand-in endpoint for the recipes: synthpipe's OpenAI-compatible test server
(tests/llm_server.py) on 127.0.0.1, started in this process.

Generators get its echo answers; a judge gets answers that a ``responder(body)`` writes in the
format the task asked for. The HTTP client, the structured-output request and validation, the
parsing, the engine and the result are all real; the *judgements* are scripted, so the numbers
in an offline run say nothing about quality. Pass ``--base-url URL --model NAME`` to a recipe
for real ones.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def scripted_server(responder: Callable[[dict[str, Any]], str | None]) -> Any:
    """A started test server answering with ``responder(body)`` (None: its echo answer)."""
    from llm_server import LLMTestServer  # tests/llm_server.py

    return LLMTestServer(latency=0.0, responder=responder).start()


def user_text(body: dict[str, Any]) -> str:
    return "\n".join(str(m.get("content")) for m in body.get("messages") or [] if m.get("role") == "user")


def wants_json(body: dict[str, Any]) -> bool:
    return (body.get("response_format") or {}).get("type") in ("json_schema", "json_object")


def dumps(value: Any) -> str:
    return json.dumps(value)
