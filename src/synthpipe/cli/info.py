"""``synthpipe pipeline info``: steps, connections and runtime parameters (type, default, doc)."""

from __future__ import annotations

import re
import typing
from typing import Any

from synthpipe.cli.param_docs import doc_of
from synthpipe.cli.params import nested_models
from synthpipe.pipeline import Pipeline


def type_name(annotation: Any) -> str:
    """``RuntimeParameter[int]`` -> ``int``: the type a user gives, without the marker."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    text = annotation.__name__ if isinstance(annotation, type) else repr(annotation)
    text = re.sub(r"\btyping\.|\bpydantic\.types\.|<class '([^']+)'>", lambda m: m.group(1) or "", text)
    match = re.fullmatch(r"Optional\[(.*)\]", text)
    if match:
        text = match.group(1)
    return text


def runtime_parameters(target: Any, prefix: str = "") -> list[dict[str, Any]]:
    """Every runtime parameter of a step and of the models in it, as ``key`` for ``--param``."""
    found = []
    fields = type(target).model_fields
    for name in target.runtime_parameter_names():
        info = fields[name]
        default = info.get_default(call_default_factory=True)
        current = getattr(target, name, None)
        found.append({
            "key": prefix + name, "type": type_name(info.annotation),
            "default": _shown(default), "value": _shown(current),
            "optional": not info.is_required(), "doc": doc_of(name, info.description),
        })
    for name in nested_models(target):
        found.extend(runtime_parameters(getattr(target, name), f"{prefix}{name}."))
    return found


_SECRET_KEYS = ("key", "token", "secret", "password", "authorization", "cookie")


def _shown(value: Any) -> Any:
    """A value as ``info`` may print it: secrets masked, credentials cut out of URLs, secret-like
    entries of dicts (headers, client kwargs) masked."""
    if hasattr(value, "get_secret_value"):
        return "**********"
    if isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    if isinstance(value, dict):
        return {k: "**********" if any(w in str(k).lower() for w in _SECRET_KEYS) else _shown(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shown(v) for v in value]
    return value


def describe(pipeline: Pipeline) -> dict[str, Any]:
    steps = []
    for name, step in pipeline.steps.items():
        steps.append({
            "name": name, "class": f"{type(step).__module__}.{type(step).__qualname__}",
            "kind": step.step_kind, "after": pipeline.dag.predecessors(name),
            "to": pipeline.dag.successors(name), "runtime_parameters": runtime_parameters(step),
        })
    return {"name": pipeline.name, "description": pipeline.description, "steps": steps,
            "connections": [{"from": a, "to": b} for a, b in pipeline.dag.edges()]}


def render(info: dict[str, Any]) -> Any:
    """A rich renderable of ``describe()``."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text(f"Pipeline '{info['name']}'" + (f": {info['description']}" if info["description"]
                                                             else ""), style="bold")]
    steps = Table(title="Steps", title_justify="left")
    for column in ("step", "class", "kind", "after"):
        steps.add_column(column)
    for s in info["steps"]:
        steps.add_row(s["name"], s["class"], s["kind"], ", ".join(s["after"]) or "-")
    parts.append(steps)
    connections = Table(title="Connections", title_justify="left")
    connections.add_column("from step")
    connections.add_column("to steps")
    for s in info["steps"]:
        connections.add_row(s["name"], ", ".join(s["to"]) or "No downstream steps")
    parts.append(connections)
    params = Table(title="Runtime parameters (--param STEP.KEY=VALUE)", title_justify="left")
    for column in ("step", "key", "type", "default", "value", "optional", "doc"):
        params.add_column(column, overflow="fold")
    for s in info["steps"]:
        for p in s["runtime_parameters"]:
            params.add_row(s["name"], p["key"], p["type"], repr(p["default"]), repr(p["value"]),
                           "Yes" if p["optional"] else "No", p["doc"])
    parts.append(params)
    return Group(*parts)
