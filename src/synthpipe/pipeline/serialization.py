"""Pipeline files: a pipeline written out as YAML or JSON, and built again from one.

The file names every step (and every model inside one: an LLM, its structured output, the
step's resources) by its class's import path, with each pydantic field's value. Nothing is
per class: a step or model added later round-trips as long as its fields hold plain data.
A loaded pipeline has the same steps with the same values, so the same signatures, and it
finds the original's stored results.

What is never written: secrets (``SecretStr`` fields such as ``api_key``, credentials inside
URLs, ``Authorization``-like headers). They are left out, listed under ``secrets_left_out``,
and the class's default supplies them at load (for built-in backends: the environment).

Loading someone else's file is safe: YAML is read by PyYAML's safe loader (no tags, and no
aliases either), JSON by ``json``; no ``eval``, no pickle. A class is imported only by its
``module:qualname`` path, only from synthpipe unless the caller allows more
(``allow_custom=True``, or a list of module names), and must be a step or a pydantic model.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union, get_args

from pydantic import BaseModel, SecretStr, ValidationError

from synthpipe.errors import PipelineDefinitionError, PipelineFileError

if TYPE_CHECKING:
    from synthpipe.pipeline.base import Pipeline

FORMAT_KEY = "synthpipe_pipeline_format"
FORMAT_VERSION = 1
"""Raised when the file's shape changes; ``MIGRATIONS`` turns an older file into the next format."""

MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
"""format N -> a function taking a format-N document and returning a format-(N+1) one."""

PIPELINE_FIELDS = ("name", "description", "cache_dir", "max_rows_in_flight", "stop_grace_seconds")
OPTIONAL_FIELDS = ("prices", "max_budget")  # written only when set
_MODEL, _TYPE, _DICT = "__model__", "__class__", "__dict__"  # markers: a model, a class, a dict holding a marker
_SENSITIVE_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"})
_SENSITIVE_KWARGS = frozenset({"api_key", "apikey", "token", "hf_token", "access_token", "auth_token", "password",
                               "secret", "client_secret"})

AllowCustom = Union[bool, Iterable[str]]
Format = Literal["yaml", "json"]


# -- writing ---------------------------------------------------------------------------


def dump_pipeline(pipeline: Pipeline) -> dict[str, Any]:
    """The pipeline as plain data (what ``save`` writes)."""
    from synthpipe import __version__

    steps = []
    for name, step in pipeline.dag.nodes.items():
        where = f"step '{name}'"
        left_out: list[str] = []
        params = _encode_fields(step, where, left_out, skip=("name",))
        entry: dict[str, Any] = {"name": name, "class": class_path(type(step), where), "params": params}
        if left_out:
            entry["secrets_left_out"] = left_out
        steps.append(entry)
    body: dict[str, Any] = {field: getattr(pipeline, field) for field in PIPELINE_FIELDS}
    body.update({field: getattr(pipeline, field) for field in OPTIONAL_FIELDS if getattr(pipeline, field, None)})
    body["steps"] = steps
    body["connections"] = [{"from": src, "to": dst} for src, dst in pipeline.dag.edges()]
    if pipeline.routing:  # sample_n_steps by its n, another function by its import path
        body["routing"] = [route.dump() for route in pipeline.routing.values()]
    return {FORMAT_KEY: FORMAT_VERSION, "synthpipe_version": __version__, "pipeline": body}


def save_pipeline(pipeline: Pipeline, path: str | os.PathLike[str], format: Format | None = None) -> Path:
    """Write the pipeline file (YAML unless ``format`` or a ``.json`` suffix says JSON); it
    replaces ``path`` whole, never leaving half a file."""
    path = Path(path)
    chosen = format or ("json" if path.suffix.lower() == ".json" else "yaml")
    if chosen not in ("yaml", "json"):
        raise ValueError(f"format must be 'yaml' or 'json', not {format!r}")
    document = dump_pipeline(pipeline)
    if chosen == "json":
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    else:
        import yaml

        text = yaml.dump(document, Dumper=_dumper(), sort_keys=False, allow_unicode=True, width=120)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
    return path


def class_path(cls: type, where: str) -> str:
    """``module:qualname`` of a class, checked to lead back to it: a class that cannot be
    imported by that path (defined in ``__main__``, a notebook or a function) is refused now,
    at save time, with how to fix it, rather than failing whoever loads the file."""
    module, qualname = cls.__module__, cls.__qualname__
    fix = ("move it into a module of its own (e.g. my_steps.py, importable from where the pipeline is loaded) "
           "and import it from there")
    if module.startswith("__"):  # __main__, __mp_main__
        raise PipelineFileError(
            f"{where}: class {qualname} is defined in {module} (a script run directly, or a notebook), which "
            f"cannot be imported again to load the file; {fix}")
    if "<locals>" in qualname:
        raise PipelineFileError(f"{where}: class {qualname} is defined inside a function, so no import path leads "
                                f"to it; {fix}")
    try:
        found = _lookup(module, qualname)
    except (ImportError, AttributeError):
        found = None
    if found is not cls:
        raise PipelineFileError(f"{where}: class {qualname} is not found again at {module}:{qualname} (made at run "
                                f"time?); {fix}")
    return f"{module}:{qualname}"


def _encode_fields(model: BaseModel, where: str, left_out: list[str], skip: Iterable[str] = ()) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        if name in skip:
            continue
        here = f"{where}.{name}"
        value = getattr(model, name)
        if isinstance(value, SecretStr) or _mentions_secret(info.annotation):
            if value is not None:
                left_out.append(here.split(".", 1)[1])
            continue  # left out even when unset, so the default (the environment) decides at load
        if isinstance(value, str) and _has_userinfo(value):
            left_out.append(here.split(".", 1)[1])
            continue
        if isinstance(value, dict):  # headers, or engine kwargs holding a token (model_kwargs={"token": ...})
            names = _SENSITIVE_HEADERS if "header" in name else _SENSITIVE_KWARGS
            sensitive = [k for k, v in value.items() if str(k).lower() in names and isinstance(v, (str, SecretStr))]
            left_out.extend(f"{here.split('.', 1)[1]}.{k}" for k in sensitive)
            value = {k: v for k, v in value.items() if k not in sensitive}
        # a field stored under another name keeps its constructor spelling (GroupColumns' output_columns)
        params[info.alias or name] = _encode(value, here, left_out)
    return params


def _encode(value: Any, where: str, left_out: list[str]) -> Any:
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, SecretStr):
        raise PipelineFileError(f"{where}: holds a secret inside a container; pipeline files never hold secrets")
    if isinstance(value, BaseModel):
        return {_MODEL: class_path(type(value), where), "params": _encode_fields(value, where, left_out)}
    if isinstance(value, type):  # a class as a parameter (a pydantic model as an answer's schema, say)
        return {_TYPE: class_path(value, where)}
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise PipelineFileError(f"{where}: dict key {bad[0]!r} is not a string; pipeline files hold string keys")
        encoded = {str.__str__(k): _encode(v, f"{where}.{k}", left_out) for k, v in value.items()}
        return {_DICT: encoded} if {_MODEL, _TYPE, _DICT} & encoded.keys() else encoded
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{where}[{i}]", left_out) for i, v in enumerate(value)]
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    try:
        plain = to_jsonable_python(value)
    except PydanticSerializationError:
        raise PipelineFileError(
            f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot be written to a pipeline file "
            "(only plain data, pydantic models and what pydantic serializes as JSON)") from None
    return _encode(str.__str__(plain) if isinstance(plain, str) else plain, where, left_out)


def _mentions_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_mentions_secret(arg) for arg in get_args(annotation))


def _has_userinfo(text: str) -> bool:
    if "://" not in text:
        return False
    authority = text.split("://", 1)[1].split("/", 1)[0]
    return "@" in authority


def _dumper() -> type:
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return Dumper


# -- reading ---------------------------------------------------------------------------


def load_text(text: str, fmt: Format, source: str) -> dict[str, Any]:
    """The document in a file's text; any problem reading it is a ``PipelineFileError``."""
    if fmt == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise PipelineFileError(f"{source} is not valid JSON: {exc}") from None
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader, refusing aliases too
    except yaml.YAMLError as exc:
        raise PipelineFileError(f"{source} is not a YAML file synthpipe reads: {exc}") from None


def _loader() -> type:
    import yaml

    class NoAliasSafeLoader(yaml.SafeLoader):
        """The safe loader (plain data only), refusing ``*alias`` references too: a few lines
        of them can stand for billions of values."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(None, None, "pipeline files do not use YAML aliases",
                                                  event.start_mark)
            return super().compose_node(parent, index)

    return NoAliasSafeLoader


def read_file(path: str | os.PathLike[str], fmt: Format | None = None) -> dict[str, Any]:
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if fmt is None:
        suffix = path.suffix.lower()
        fmt = "json" if suffix == ".json" else "yaml" if suffix in (".yaml", ".yml") else (
            "json" if text.lstrip().startswith("{") else "yaml")
    return load_text(text, fmt, f"pipeline file {str(path)!r}")


def pipeline_from_dict(cls: type[Pipeline], data: Any, allow_custom: AllowCustom = False,
                       source: str = "the pipeline file") -> Pipeline:
    """Build the pipeline a document describes (see the module docstring for what is allowed)."""
    body = _current_format(data, source)
    allowed = _allowed(allow_custom)
    kwargs = {field: body[field] for field in (*PIPELINE_FIELDS, *OPTIONAL_FIELDS) if field in body}
    name = kwargs.get("name", "pipeline")
    if not isinstance(name, str) or not name or any(c in name for c in "/\\\0") or name in (".", ".."):
        raise PipelineFileError(f"{source}: the pipeline's name {name!r} must be a plain name (it names a folder "
                                "of the cache), without '/' or '\\'")
    try:
        pipeline = cls(**kwargs)
    except TypeError as exc:
        raise PipelineFileError(f"{source}: the pipeline's settings are wrong: {exc}") from None
    steps = body.get("steps")
    if not isinstance(steps, list):
        raise PipelineFileError(f"{source}: 'pipeline.steps' must be a list of steps")
    for i, entry in enumerate(steps):
        _build_step(pipeline, entry, i, allowed, source)
    connections = body.get("connections") or []
    if not isinstance(connections, list):
        raise PipelineFileError(f"{source}: 'pipeline.connections' must be a list of {{from, to}}")
    for edge in connections:
        nodes = pipeline.dag.nodes
        if not (isinstance(edge, dict) and edge.get("from") in nodes and edge.get("to") in nodes):
            raise PipelineFileError(f"{source}: connection {edge!r} must be {{from: <step>, to: <step>}} naming "
                                    "steps of the file")
        try:
            pipeline._add_edge(edge["from"], edge["to"])
        except PipelineDefinitionError as exc:
            raise PipelineFileError(f"{source}: {exc}") from None
    routing = body.get("routing") or []
    if not isinstance(routing, list):
        raise PipelineFileError(f"{source}: 'pipeline.routing' must be a list of {{step, function}}")
    from synthpipe.pipeline.routing import routing_from_data

    for entry in routing:
        routing_from_data(pipeline, entry, lambda path, where: resolve_class(path, allowed, None, where), source)
    return pipeline


def _current_format(data: Any, source: str) -> dict[str, Any]:
    """The ``pipeline`` part of a document in this synthpipe's format, migrating older ones."""
    if not isinstance(data, dict) or FORMAT_KEY not in data:
        if isinstance(data, dict) and "distilabel" in data:
            raise PipelineFileError(
                f"{source} was written by distilabel; synthpipe reads its own pipeline files. Build the pipeline "
                "in Python with synthpipe imports (usually only the import prefix changes) and save() it")
        raise PipelineFileError(f"{source} is not a synthpipe pipeline file (it has no '{FORMAT_KEY}' key)")
    version = data[FORMAT_KEY]
    written_by = data.get("synthpipe_version", "an unknown version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PipelineFileError(f"{source}: '{FORMAT_KEY}' must be a whole number from 1, not {version!r}")
    if version > FORMAT_VERSION:
        raise PipelineFileError(
            f"{source} is in pipeline-file format {version}, written by synthpipe {written_by}; this synthpipe "
            f"reads formats up to {FORMAT_VERSION}: upgrade synthpipe to load it")
    while version < FORMAT_VERSION:
        if version not in MIGRATIONS:
            raise PipelineFileError(f"{source} is in pipeline-file format {version} (synthpipe {written_by}), "
                                    "which this synthpipe cannot read any more")
        data = MIGRATIONS[version](data)
        version += 1
    body = data.get("pipeline")
    if not isinstance(body, dict):
        raise PipelineFileError(f"{source}: 'pipeline' must be a mapping with the pipeline's settings and steps")
    return body


def _build_step(pipeline: Pipeline, entry: Any, index: int, allowed: Callable[[str], bool], source: str) -> None:
    from synthpipe.steps.base import _Step

    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or "class" not in entry:
        raise PipelineFileError(f"{source}: step #{index + 1} must be a mapping with 'name', 'class' and 'params'")
    name = entry["name"]
    where = f"{source}, step '{name}'"
    cls = resolve_class(entry["class"], allowed, _Step, where)
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise PipelineFileError(f"{where}: 'params' must be a mapping")
    decoded = {key: _decode(value, f"{where}.{key}", allowed) for key, value in params.items()}
    try:
        cls(pipeline=pipeline, name=name, **decoded)
    except (ValidationError, TypeError, ValueError) as exc:
        raise PipelineFileError(f"{where} ({entry['class']}) cannot be built from the file: {exc}") from None


def _decode(value: Any, where: str, allowed: Callable[[str], bool]) -> Any:
    if isinstance(value, list):
        return [_decode(v, f"{where}[{i}]", allowed) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    if _MODEL in value:
        cls = resolve_class(value[_MODEL], allowed, BaseModel, where)
        params = value.get("params") or {}
        if not isinstance(params, dict):
            raise PipelineFileError(f"{where}: 'params' of {value[_MODEL]} must be a mapping")
        try:
            return cls(**{k: _decode(v, f"{where}.{k}", allowed) for k, v in params.items()})
        except (ValidationError, TypeError, ValueError) as exc:
            raise PipelineFileError(f"{where} ({value[_MODEL]}) cannot be built from the file: {exc}") from None
    if _TYPE in value and len(value) == 1:
        return resolve_class(value[_TYPE], allowed, object, where)
    if _DICT in value and len(value) == 1 and isinstance(value[_DICT], dict):
        value = value[_DICT]
    return {k: _decode(v, f"{where}.{k}", allowed) for k, v in value.items()}


def resolve_class(path: Any, allowed: Callable[[str], bool], base: type | None, where: str) -> Any:
    """The class at ``module:qualname``, imported only when its module is allowed, and only
    if it is a subclass of ``base`` (``base=None``: any object there, such as a function)."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise PipelineFileError(f"{where}: {'class ' if base else ''}{path!r} must be written "
                                f"'package.module:{'ClassName' if base else 'name'}'")
    module, qualname = path.split(":")
    if not allowed(module):
        top = module.split(".")[0]
        raise PipelineFileError(
            f"{where}: {'class ' if base else ''}{path} comes from outside synthpipe, and loading it would run "
            "that module's code. "
            f"If you trust this file, load it with allow_custom=['{top}'] (or allow_custom=True)")
    try:
        found = _lookup(module, qualname)
    except ImportError as exc:
        raise PipelineFileError(f"{where}: module {module} of class {path} cannot be imported: {exc}") from None
    except AttributeError:
        raise PipelineFileError(f"{where}: module {module} has no {'class ' if base else ''}{qualname}") from None
    if base is None:
        return found
    if not (isinstance(found, type) and issubclass(found, base)):
        kind = {BaseModel: "pydantic model class", object: "class"}.get(base, "step class")
        raise PipelineFileError(f"{where}: {path} is not a {kind}")
    return found


def _lookup(module: str, qualname: str) -> Any:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _allowed(allow_custom: AllowCustom) -> Callable[[str], bool]:
    if allow_custom is True:
        return lambda module: True
    if allow_custom is False or allow_custom is None:
        prefixes: tuple[str, ...] = ()
    elif isinstance(allow_custom, str):
        prefixes = (allow_custom,)
    else:
        prefixes = tuple(allow_custom)
    prefixes = ("synthpipe", *prefixes)
    return lambda module: any(module == p or module.startswith(p + ".") for p in prefixes)
