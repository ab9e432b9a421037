"""A small OpenAI-compatible HTTP server for tests and benchmarks (aiohttp.web, 127.0.0.1 only).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings``,
``GET /v1/models``, and Anthropic's ``POST /v1/messages``; control: ``GET /_stats``,
``POST /_reset``, ``POST /_config`` (JSON body of :class:`ServerConfig` fields).

Answers are deterministic: a chat choice is ``"echo: <last user message>"`` (choice ``i > 0``:
``"echo <i>: ..."``), cut to ``max_tokens`` words (``finish_reason="length"``). With
``response_format={"type": "json_schema", ...}`` the content is a minimal JSON instance of the
schema; with ``{"type": "json_object"}`` it is ``{"text": ...}``, and with TGI's grammar form
(``{"type": "json" | "json_object", "value": schema}``) an instance of that schema. Embeddings are
unit vectors derived from a SHA-256 of the text (``dimensions`` from the request, else
``config.embedding_dim``).

``/v1/messages`` speaks Anthropic's Messages format: the answer is
``{"type": "message", "content": [{"type": "text", "text": "echo: ..."}], "stop_reason", "usage":
{"input_tokens", "output_tokens"}}`` (cut to ``max_tokens`` words, ``stop_reason="max_tokens"``);
with ``tool_choice={"type": "tool", "name": N}`` the content is one ``tool_use`` block whose
``input`` is a minimal instance of that tool's ``input_schema`` (``[[badjson]]``: an input that
does not match it); with ``output_config={"format": {"type": "json_schema", "schema": ...}}`` the
text is such an instance. ``model``, ``max_tokens`` and ``messages`` are required. Errors are
``{"type": "error", "error": {"type": "rate_limit_error" | "overloaded_error" | ..., "message"}}``;
status 529 means overloaded.

Faults, per request, as markers inside the last user message (or an embeddings input). Attempts
are counted per prompt text (the whole text, marker included), from 1:

* ``[[429:2]]`` -- answer 429 with ``Retry-After`` to the first 2 attempts, then succeed.
  Any 3-digit status works (``[[500:1]]``, ``[[503:always]]``, ``[[529:1]]``); with no count
  (``[[400]]``) it is every attempt. 4xx/5xx bodies are OpenAI-style
  ``{"error": {"message", "type", "code"}}`` (Anthropic-style on ``/v1/messages``).
* ``[[hang]]`` / ``[[hang:1]]`` -- never answer (until the client gives up or the server stops).
* ``[[drop]]`` / ``[[drop:1]]`` -- close the TCP connection without an answer.
* ``[[badjson]]`` / ``[[badjson:1]]`` -- structured output that is not valid JSON.
* ``[[notjson]]`` -- a 200 whose body is an HTML page, not JSON.
* ``[[truncate]]`` -- a 200 whose headers promise the whole answer, then ``TRUNCATE_AT`` bytes of
  it and the connection closed (chat completions, messages).
* ``[[delay:0.5]]`` -- answer 0.5 s later than the configured latency.
* ``[[onechoice]]`` -- one choice whatever ``n`` asks for; ``[[refuse]]`` -- a choice with
  ``content: null`` and ``finish_reason: "content_filter"`` (chat completions).

Server-wide faults (:class:`ServerConfig`): ``fail_first=K`` fails the first K requests,
``fail_rate=p`` fails each request with probability p (seeded with ``seed``), both with
``fail_status`` (default 429) and, for 429/503, ``Retry-After: retry_after`` (``None``: no header).
``retry_after_style`` picks how ``Retry-After`` is sent: ``"seconds"``, ``"ms"`` (as
``retry-after-ms``), ``"date"`` (an HTTP date) or ``"none"``.

Two ways to run it:

* in-process, on a background thread with its own loop::

      with LLMTestServer(latency=0.0) as server:
          server.base_url            # http://127.0.0.1:PORT/v1
          server.stats()             # counters (see ServerState.stats)
          server.configure(fail_rate=1.0)
          server.reset()

* as a process: ``python tests/llm_server.py --port 0 --latency 0.1`` prints the port as its
  first stdout line and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import email.utils
import hashlib
import json
import math
import random
import re
import signal
import sys
import threading
import time
from collections import Counter, deque
from typing import Any

from aiohttp import web

MARKER_RE = re.compile(r"\[\[(\w+)(?::([\w.]+))?\]\]")
DEFAULT_MODEL = "test-model"
TRUNCATE_AT = 10  # bytes of a [[truncate]]d answer that are sent


@dataclasses.dataclass
class ServerConfig:
    latency: float = 0.0  # seconds per request (asyncio.sleep)
    model: str = DEFAULT_MODEL
    embedding_dim: int = 8
    fail_status: int = 429
    fail_first: int = 0  # the first K requests (of any kind) fail with fail_status
    fail_rate: float = 0.0  # each request fails with this probability
    seed: int = 0
    retry_after: float | None = 0.05  # seconds advertised on 429/503 answers; None: no header
    retry_after_style: str = "seconds"  # seconds | ms | date | none
    hang_seconds: float = 600.0  # how long a [[hang]] lasts at most
    keep_requests: int = 50  # how many recent request records to keep
    # Scripted answers, for tasks that parse a format: (regex, content) pairs tried in order on the
    # whole conversation (every message's text, system included, joined by newlines; the prompt
    # of /v1/completions); the first that matches gives every choice's content verbatim, also
    # when a JSON format was asked for (so a test can send a malformed one). ``{i}`` in the content
    # becomes the choice's index. In-process only: ``responder(body) -> str | None`` is asked first.
    answers: list = dataclasses.field(default_factory=list)
    cost_per_token: float | None = None  # when set, chat answers report usage.cost (as OpenRouter does)
    responder: Any = None


def _error_body(status: int, message: str) -> dict[str, Any]:
    kinds = {
        400: ("invalid_request_error", "invalid_request"),
        401: ("authentication_error", "invalid_api_key"),
        404: ("invalid_request_error", "model_not_found"),
        429: ("rate_limit_error", "rate_limit_exceeded"),
        503: ("server_error", "overloaded"),
    }
    kind, code = kinds.get(status, ("server_error" if status >= 500 else "invalid_request_error", str(status)))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


_ANTHROPIC_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_RETRY_AFTER_STATUSES = (429, 503, 529)


def _anthropic_error_body(status: int, message: str) -> dict[str, Any]:
    kind = _ANTHROPIC_ERRORS.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _words(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------- JSON schema -> instance


def instance_of(schema: Any, text: str = "echo", root: Any = None, depth: int = 0) -> Any:
    """A small value that satisfies ``schema`` (the subset LLM structured outputs use)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 32:
        return None
    if "$ref" in schema:
        ref = schema["$ref"]
        target: Any = root
        if ref.startswith("#"):
            for part in ref.lstrip("#").strip("/").split("/"):
                if part:
                    target = target.get(part, {}) if isinstance(target, dict) else {}
        return instance_of(target, text, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [s for s in schema[key] if not (isinstance(s, dict) and s.get("type") == "null")]
            return instance_of((options or schema[key])[0], text, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props = schema.get("properties", {})
        return {name: instance_of(sub, text, root, depth + 1) for name, sub in props.items()}
    if kind == "array":
        count = int(schema.get("minItems", 1))
        count = min(count, int(schema.get("maxItems", count)))
        item = schema.get("items", {"type": "string"})
        return [instance_of(item, text, root, depth + 1) for _ in range(count)]
    if kind == "string":
        value = text
        if "maxLength" in schema:
            value = value[: int(schema["maxLength"])]
        return value.ljust(int(schema.get("minLength", 0)), "x")
    if kind in ("integer", "number"):
        value: float = 0
        if "minimum" in schema:
            value = max(value, schema["minimum"])
        if "exclusiveMinimum" in schema and not isinstance(schema["exclusiveMinimum"], bool):
            value = max(value, schema["exclusiveMinimum"] + 1)
        if "maximum" in schema:
            value = min(value, schema["maximum"])
        return int(math.ceil(value)) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    return None


# ---------------------------------------------------------------- state and handlers


class ServerState:
    """Config and counters. Mutated on the server loop; read from any thread through a lock."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self.stopping: asyncio.Event | None = None  # created on the server loop
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.total_requests = 0
        self.per_prompt: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.dropped = 0
        self.hung = 0
        self.requests: deque[dict[str, Any]] = deque(maxlen=self.config.keep_requests)

    def reset(self) -> None:
        with self._lock:
            self._rng = random.Random(self.config.seed)
            self._reset_counters()

    def configure(self, **changes: Any) -> ServerConfig:
        names = {f.name for f in dataclasses.fields(ServerConfig)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown server config field(s): {sorted(unknown)}")
        with self._lock:
            for key, value in changes.items():
                setattr(self.config, key, value)
            if "seed" in changes:
                self._rng = random.Random(self.config.seed)
            if "keep_requests" in changes:
                self.requests = deque(self.requests, maxlen=self.config.keep_requests)
        return self.config

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total_requests": self.total_requests,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "per_prompt": dict(self.per_prompt),
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "dropped": self.dropped,
                "hung": self.hung,
            }

    def recent_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    # -- called on the loop ------------------------------------------------------------

    def _arrive(self, path: str, headers: dict[str, str], body: Any, prompt: str) -> tuple[int, bool]:
        with self._lock:
            self.total_requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.per_prompt[prompt] += 1
            self.requests.append({"path": path, "headers": headers, "body": body})
            cfg = self.config
            server_fault = self.total_requests <= cfg.fail_first or (
                cfg.fail_rate > 0 and self._rng.random() < cfg.fail_rate
            )
            return self.per_prompt[prompt], server_fault

    def _leave(self, status: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.statuses[status] += 1


def _retry_after_headers(config: ServerConfig, seconds: float | None) -> dict[str, str]:
    if seconds is None or config.retry_after_style == "none":
        return {}
    if config.retry_after_style == "ms":
        return {"retry-after-ms": str(int(seconds * 1000))}
    if config.retry_after_style == "date":
        return {"Retry-After": email.utils.formatdate(time.time() + seconds, usegmt=True)}
    return {"Retry-After": f"{seconds:g}"}


def _markers(prompt: str, attempt: int) -> dict[str, str | None]:
    """Markers active for this attempt: kind -> argument."""
    active: dict[str, str | None] = {}
    for kind, arg in MARKER_RE.findall(prompt):
        if kind == "delay":
            active[kind] = arg
        elif not arg or arg == "always" or (arg.isdigit() and attempt <= int(arg)):
            active.setdefault(kind, arg)
    return active


def scripted_answer(cfg: ServerConfig, body: dict[str, Any], index: int = 0) -> str | None:
    """The scripted content for this request (see ``ServerConfig.answers``), or None."""
    if cfg.responder is not None:
        answer = cfg.responder(body)
        if answer is not None:
            return str(answer).replace("{i}", str(index))
    if not cfg.answers:
        return None
    if "messages" in body:
        parts = [_text_of(body.get("system"))] if body.get("system") else []
        parts += [_text_of(m.get("content")) for m in body.get("messages") or [] if isinstance(m, dict)]
        whole = "\n".join(parts)
    else:
        whole = _text_of(body.get("prompt"))
    for pattern, content in cfg.answers:
        if re.search(pattern, whole, re.S):
            return str(content).replace("{i}", str(index))
    return None


def _chat_answer(cfg: ServerConfig, body: dict[str, Any], prompt: str, bad_json: bool) -> dict[str, Any]:
    n = 1 if "[[onechoice]]" in prompt else int(body.get("n") or 1)  # a server that ignores n
    max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
    fmt = body.get("response_format") or {}
    choices, completion_tokens = [], 0
    if "[[refuse]]" in prompt:  # a content filter: no text at all
        n = 0
        choices.append({"index": 0, "message": {"role": "assistant", "content": None}, "logprobs": None,
                        "finish_reason": "content_filter"})
    for i in range(n):
        text = f"echo: {prompt}" if i == 0 else f"echo {i}: {prompt}"
        finish = "stop"
        words = text.split()
        scripted = scripted_answer(cfg, body, i)
        if scripted is not None:
            content = scripted
        elif fmt.get("type") in ("json_schema", "json_object", "json"):
            if bad_json:
                content = '{"answer": "' + text[:40] + '", "broken'
            elif fmt.get("type") == "json_schema":
                schema = (fmt.get("json_schema") or {}).get("schema") or {}
                content = json.dumps(instance_of(schema, text))
            elif isinstance(fmt.get("value"), dict):  # TGI's grammar: {"type": "json", "value": schema}
                content = json.dumps(instance_of(fmt["value"], text))
            else:
                content = json.dumps({"text": text})
        else:
            if max_tokens is not None and len(words) > int(max_tokens):
                words = words[: int(max_tokens)]
                finish = "length"
            content = " ".join(words)
        completion_tokens += _words(content)
        choices.append(
            {
                "index": i,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish,
            }
        )
    prompt_tokens = sum(_words(_text_of(m.get("content"))) for m in body.get("messages") or [] if isinstance(m, dict))
    digest = hashlib.sha1(f"{prompt}|{n}".encode()).hexdigest()[:24]
    return {
        "id": f"chatcmpl-{digest}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or cfg.model,
        "system_fingerprint": "fp_synthpipe_test",
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            **({"cost": cfg.cost_per_token * (prompt_tokens + completion_tokens)}
               if cfg.cost_per_token is not None else {}),
        },
    }


def _messages_answer(cfg: ServerConfig, body: dict[str, Any], prompt: str, bad_json: bool) -> dict[str, Any]:
    """An Anthropic Messages answer: a text block, or the forced tool's ``tool_use`` block."""
    text = f"echo: {prompt}"
    choice = body.get("tool_choice") or {}
    tools = {t.get("name"): t for t in body.get("tools") or [] if isinstance(t, dict)}
    fmt = (body.get("output_config") or {}).get("format") or {}
    scripted = scripted_answer(cfg, body)
    if choice.get("type") == "tool" and choice.get("name") in tools:
        name = choice["name"]
        schema = tools[name].get("input_schema") or {}
        value = {"broken": text[:40]} if bad_json else instance_of(schema, text)
        if scripted is not None:
            try:
                value = json.loads(scripted)
            except ValueError:
                value = {"unparsable": scripted}
        digest = hashlib.sha1(f"{prompt}|{name}".encode()).hexdigest()[:24]
        content: list[dict[str, Any]] = [{"type": "tool_use", "id": f"toolu_{digest}", "name": name, "input": value}]
        stop_reason, output_tokens = "tool_use", _words(json.dumps(value))
    else:
        stop_reason = "end_turn"
        if scripted is not None:
            out = scripted
        elif fmt.get("type") == "json_schema" and bad_json:
            out = '{"answer": "' + text[:40] + '", "broken'
        elif fmt.get("type") == "json_schema":
            out = json.dumps(instance_of(fmt.get("schema") or {}, text))
        else:
            words = text.split()
            if len(words) > int(body["max_tokens"]):
                words, stop_reason = words[: int(body["max_tokens"])], "max_tokens"
            out = " ".join(words)
        content = [{"type": "text", "text": out}]
        output_tokens = _words(out)
    system = body.get("system")
    input_tokens = _words(_text_of(system)) + sum(
        _words(_text_of(m.get("content"))) for m in body.get("messages") or [] if isinstance(m, dict))
    return {
        "id": "msg_" + hashlib.sha1(prompt.encode()).hexdigest()[:24],
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or cfg.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def _completion_answer(cfg: ServerConfig, body: dict[str, Any], prompt: str) -> dict[str, Any]:
    n = int(body.get("n") or 1)
    max_tokens = body.get("max_tokens")
    choices, completion_tokens = [], 0
    for i in range(n):
        words = (f"echo: {prompt}" if i == 0 else f"echo {i}: {prompt}").split()
        finish = "stop"
        scripted = scripted_answer(cfg, body, i)
        if scripted is not None:
            completion_tokens += _words(scripted)
            choices.append({"index": i, "text": scripted, "logprobs": None, "finish_reason": finish})
            continue
        if max_tokens is not None and len(words) > int(max_tokens):
            words, finish = words[: int(max_tokens)], "length"
        completion_tokens += len(words)
        choices.append({"index": i, "text": " ".join(words), "logprobs": None, "finish_reason": finish})
    prompt_tokens = _words(prompt)
    return {
        "id": "cmpl-" + hashlib.sha1(prompt.encode()).hexdigest()[:24],
        "object": "text_completion",
        "created": int(time.time()),
        "model": body.get("model") or cfg.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def embedding_of(text: str, dim: int) -> list[float]:
    """Deterministic unit vector for ``text``."""
    raw: list[float] = []
    counter = 0
    while len(raw) < dim:
        block = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        raw.extend(b / 127.5 - 1.0 for b in block)
        counter += 1
    vec = raw[:dim]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    raw = body.get("input")
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list):
        if raw and all(isinstance(x, int) for x in raw):  # one tokenized input
            return [" ".join(map(str, raw))]
        return [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
    return []


def _embedding_answer(cfg: ServerConfig, body: dict[str, Any], inputs: list[str]) -> dict[str, Any]:
    dim = int(body.get("dimensions") or cfg.embedding_dim)
    tokens = sum(_words(t) for t in inputs)
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": embedding_of(t, dim)} for i, t in enumerate(inputs)],
        "model": body.get("model") or cfg.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def build_app(state: ServerState) -> web.Application:
    dumps = json.dumps

    def reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=status, body=dumps(payload).encode(), content_type="application/json", headers=headers
        )

    async def handle(request: web.Request, kind: str) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            body, bad_body = {}, str(exc)
        else:
            bad_body = None
        if kind in ("chat", "messages"):
            prompt = _last_user_text(body)
        elif kind == "completions":
            prompt = _text_of(body.get("prompt"))
        else:
            prompt = "\n".join(_embedding_inputs(body))
        attempt, server_fault = state._arrive(request.path, dict(request.headers), body, prompt)
        error_body = _anthropic_error_body if kind == "messages" else _error_body
        status = 200
        try:
            cfg = state.config
            markers = _markers(prompt, attempt)
            delay = cfg.latency + (float(markers["delay"] or 0) if "delay" in markers else 0.0)
            if delay > 0:
                await asyncio.sleep(delay)
            if bad_body is not None:
                status = 400
                return reply(400, error_body(400, f"could not parse the request body: {bad_body}"))
            if server_fault:
                status = cfg.fail_status
                extra = _retry_after_headers(cfg, cfg.retry_after) if status in _RETRY_AFTER_STATUSES else {}
                return reply(status, error_body(status, "server-wide injected fault"), extra)
            if "hang" in markers:
                status = 0
                with state._lock:
                    state.hung += 1
                assert state.stopping is not None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(state.stopping.wait(), cfg.hang_seconds)
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=504)
            if "drop" in markers:
                status = 0
                with state._lock:
                    state.dropped += 1
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=500)
            for marker in markers:
                if marker.isdigit() and len(marker) == 3:
                    status = int(marker)
                    extra = _retry_after_headers(cfg, cfg.retry_after) if status in _RETRY_AFTER_STATUSES else {}
                    message = f"injected fault {status} (attempt {attempt}) for prompt {prompt[:200]!r}"
                    return reply(status, error_body(status, message), extra)
            if "notjson" in markers:  # a proxy's error page where the answer should be
                return web.Response(status=200, text="<html><body>502 Bad Gateway</body></html>",
                                    content_type="text/html")
            if "truncate" in markers and kind in ("chat", "messages") and request.transport is not None:
                answer = _chat_answer if kind == "chat" else _messages_answer
                whole = dumps(answer(cfg, body, prompt, False)).encode()
                cut = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
                cut.content_length = len(whole)
                await cut.prepare(request)
                await cut.write(whole[:TRUNCATE_AT])
                request.transport.close()  # the headers promised more: the connection ends part-way
                return cut
            if kind == "chat":
                if not body.get("messages"):
                    status = 400
                    return reply(400, _error_body(400, "'messages' is required"))
                return reply(200, _chat_answer(cfg, body, prompt, "badjson" in markers))
            if kind == "messages":
                missing = [k for k in ("model", "max_tokens", "messages") if not body.get(k)]
                if missing or not isinstance(body.get("max_tokens"), int):
                    status = 400
                    problem = f"{missing[0]}: Field required" if missing else "max_tokens: must be an integer"
                    return reply(400, error_body(400, problem))
                return reply(200, _messages_answer(cfg, body, prompt, "badjson" in markers))
            if kind == "completions":
                return reply(200, _completion_answer(cfg, body, prompt))
            inputs = _embedding_inputs(body)
            if not inputs:
                status = 400
                return reply(400, _error_body(400, "'input' is required"))
            return reply(200, _embedding_answer(cfg, body, inputs))
        except asyncio.CancelledError:
            status = -1  # the client went away (handler cancellation)
            raise
        finally:
            state._leave(status)

    async def chat(request: web.Request) -> web.StreamResponse:
        return await handle(request, "chat")

    async def completions(request: web.Request) -> web.StreamResponse:
        return await handle(request, "completions")

    async def embeddings(request: web.Request) -> web.StreamResponse:
        return await handle(request, "embeddings")

    async def messages(request: web.Request) -> web.StreamResponse:
        return await handle(request, "messages")

    async def models(request: web.Request) -> web.Response:
        model = {"id": state.config.model, "object": "model", "created": 0, "owned_by": "synthpipe-tests"}
        return reply(200, {"object": "list", "data": [model]})

    async def stats(request: web.Request) -> web.Response:
        out = state.stats()
        out["requests"] = state.recent_requests()[-5:]
        return reply(200, out)

    async def reset(request: web.Request) -> web.Response:
        state.reset()
        return reply(200, {"ok": True})

    async def config(request: web.Request) -> web.Response:
        try:
            cfg = state.configure(**(await request.json()))
        except (TypeError, ValueError) as exc:
            return reply(400, _error_body(400, str(exc)))
        return reply(200, dataclasses.asdict(cfg))

    async def on_startup(app: web.Application) -> None:
        state.stopping = asyncio.Event()

    app = web.Application(client_max_size=64 * 1024**2)
    app.on_startup.append(on_startup)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/_config", config)
    return app


async def start_site(state: ServerState, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(build_app(state), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    return runner, runner.addresses[0][1]


async def stop_site(state: ServerState, runner: web.AppRunner) -> None:
    if state.stopping is not None:
        state.stopping.set()  # releases every [[hang]]
    await runner.cleanup()


# ---------------------------------------------------------------- in-process server


class LLMTestServer:
    """The server on a background thread with its own event loop. Use as a context manager."""

    def __init__(self, latency: float = 0.0, *, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the test server binds 127.0.0.1 only")
        self.host = "127.0.0.1"
        self.state = ServerState(ServerConfig(latency=latency, **config))
        self._requested_port = port
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def config(self) -> ServerConfig:
        return self.state.config

    def start(self, timeout: float = 10.0) -> LLMTestServer:
        if self._thread is not None:
            raise RuntimeError("the server is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._runner, self.port = loop.run_until_complete(
                    start_site(self.state, self.host, self._requested_port)
                )
            except BaseException as exc:  # reported by start()
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=2.0))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=serve, name="llm-test-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"the test server did not start within {timeout}s")
        if failure:
            self._thread.join(timeout)
            self._thread = None
            raise failure[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop, runner = self._thread, self._loop, self._runner
        if thread is None or loop is None:
            return
        try:
            if runner is not None and not loop.is_closed():
                future = asyncio.run_coroutine_threadsafe(stop_site(self.state, runner), loop)
                with contextlib.suppress(Exception):
                    future.result(timeout)
        finally:
            if not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError("the test server thread did not stop")
            self._thread = self._loop = self._runner = None
            self.port = None

    def __enter__(self) -> LLMTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- counters and config ---------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def reset(self) -> None:
        """Zero the counters (and re-seed the fault RNG); the config stays."""
        self.state.reset()

    def configure(self, **changes: Any) -> ServerConfig:
        return self.state.configure(**changes)

    @property
    def total_requests(self) -> int:
        return self.state.total_requests

    @property
    def in_flight(self) -> int:
        return self.state.in_flight

    @property
    def max_in_flight(self) -> int:
        return self.state.max_in_flight

    def attempts(self, prompt: str) -> int:
        """Requests seen for this exact prompt text."""
        with self.state._lock:
            return self.state.per_prompt.get(prompt, 0)

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Recent requests, oldest first: ``{"path", "headers", "body"}``."""
        return self.state.recent_requests()

    @property
    def last_request(self) -> dict[str, Any] | None:
        recent = self.state.recent_requests()
        return recent[-1] if recent else None


# ---------------------------------------------------------------- separate process


async def _serve_forever(args: argparse.Namespace) -> None:
    config = ServerConfig(
        latency=args.latency,
        fail_rate=args.fail_rate,
        fail_first=args.fail_first,
        fail_status=args.fail_status,
        seed=args.seed,
        embedding_dim=args.embedding_dim,
    )
    state = ServerState(config)
    runner, port = await start_site(state, "127.0.0.1", args.port)
    print(port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await stop_site(state, runner)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenAI-compatible test server (127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=0, help="0: the OS picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--fail-status", type=int, default=429)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embedding-dim", type=int, default=8)
    args = parser.parse_args(argv)
    asyncio.run(_serve_forever(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
