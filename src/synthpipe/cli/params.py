"""``--param step.key=value`` (and ``step.llm.key=value``) into ``run(parameters=...)``.

An entry of a dict parameter is set on its own, as distilabel's CLI allows:
``gen.llm.generation_kwargs.temperature=0.7`` gives ``{"generation_kwargs": {"temperature": 0.7}}``.

A value is typed by the field it sets: a field that takes text keeps the text as given; any
other is read as a YAML scalar or list (``0.7`` a number, ``true`` a boolean, ``[a, b]`` a
list) and then validated by the field itself when the plan is built.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from synthpipe.errors import SynthpipeUserError


class BadParameter(SynthpipeUserError):
    """A ``--param`` that names no runtime parameter, or is not ``step.key=value``."""


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _takes_text(annotation: Any) -> bool:
    """True when the field's type accepts plain text first (str, SecretStr, a Literal of texts)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _takes_text(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return any(_takes_text(a) for a in args) and not any(a in (int, float, bool) for a in args)
    if origin is typing.Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    return annotation in (str, SecretStr)


def _takes_dict(annotation: Any) -> bool:
    """True when the field holds a dict (``generation_kwargs``): its entries may be set one by one."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _takes_dict(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_takes_dict(a) for a in typing.get_args(annotation) if a is not type(None))
    return annotation is dict or origin is dict


def nested_models(target: BaseModel) -> list[str]:
    """Fields of ``target`` holding an object with runtime parameters of its own (an LLM)."""
    return [name for name in type(target).model_fields
            if hasattr(getattr(target, name, None), "runtime_parameter_names")]


def parse_params(steps: dict[str, Any], given: list[str]) -> dict[str, dict[str, Any]]:
    """``{step: {key: value, "llm": {key: value}}}`` from ``--param`` options; an unknown step
    or key is an error naming what there is."""
    parameters: dict[str, dict[str, Any]] = {}
    for text in given:
        path, sep, raw = text.partition("=")
        parts = path.strip().split(".")
        if not sep or len(parts) < 2 or not all(parts):
            raise BadParameter(f"--param {text!r}: write it as STEP.KEY=VALUE (or STEP.llm.KEY=VALUE)")
        step_name, keys = parts[0], parts[1:]
        if step_name not in steps:
            raise BadParameter(f"--param {text!r}: the pipeline has no step '{step_name}'"
                               f"{_suggest(step_name, list(steps))}; its steps: {', '.join(steps)}")
        target: Any = steps[step_name]
        where = parameters.setdefault(step_name, {})
        who = f"step '{step_name}'"
        depth = 0
        for key in keys[:-1]:
            if key in target.runtime_parameter_names() and _takes_dict(type(target).model_fields[key].annotation):
                break  # STEP.llm.generation_kwargs.temperature=0.7: an entry of a dict parameter
            if key not in nested_models(target):
                raise BadParameter(f"--param {text!r}: {who} has no model field '{key}'"
                                   f"{_suggest(key, nested_models(target))}")
            target, who = getattr(target, key), f"{who}, {key}"
            where = where.setdefault(key, {})
            depth += 1
        if depth < len(keys) - 1:  # the rest of the path names entries inside a dict parameter
            key, entries = keys[depth], keys[depth + 1:]
            inner = where.setdefault(key, {})
            if not isinstance(inner, dict):
                raise BadParameter(f"--param {text!r}: {who}: '{key}' was given whole already")
            for entry in entries[:-1]:
                inner = inner.setdefault(entry, {})
            inner[entries[-1]] = _scalar(raw, text)
            continue
        key = keys[-1]
        allowed = target.runtime_parameter_names()
        if key not in allowed:
            kind = "is not a runtime parameter" if key in type(target).model_fields else "is unknown"
            raise BadParameter(f"--param {text!r}: {who}: '{key}' {kind}{_suggest(key, allowed)}; "
                               f"its runtime parameters: {', '.join(allowed) or 'none'}")
        annotation = type(target).model_fields[key].annotation
        where[key] = raw if _takes_text(annotation) else _scalar(raw, text)
    return parameters


def _scalar(raw: str, text: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise BadParameter(f"--param {text!r}: the value is not readable: {exc}") from None
