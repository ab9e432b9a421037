"""Finding the pipeline a command names: a pipeline file (YAML/JSON, a path or an http(s) URL)
or a Python script defining one at module level (imported without running its __main__ block)."""

from __future__ import annotations

import runpy
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from synthpipe.errors import SynthpipeUserError
from synthpipe.pipeline import Pipeline

SCRIPT_RUN_NAME = "__synthpipe_script__"  # not "__main__": the script's own run() block stays out


def load_pipeline(source: str, *, pipeline_name: str | None = None, trust: list[str] | None = None,
                  allow_custom: bool = False) -> Pipeline:
    """The pipeline ``source`` describes. A script may define several: ``pipeline_name`` picks one."""
    if source.startswith(("http://", "https://")):
        return _from_url(source, allow_custom or trust or False)
    path = Path(source).expanduser()
    if not path.exists():
        raise SynthpipeUserError(f"{source!r} does not exist")
    if path.suffix == ".py":
        return _from_script(path, pipeline_name)
    return Pipeline.from_file(path, allow_custom=allow_custom or trust or False)


def _from_url(url: str, allow_custom: Any) -> Pipeline:
    suffix = ".json" if url.split("?", 1)[0].endswith(".json") else ".yaml"
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - the user's own URL
            text = answer.read()
    except OSError as exc:
        raise SynthpipeUserError(f"could not read the pipeline file at {url}: {exc}") from None
    with tempfile.NamedTemporaryFile("wb", suffix=suffix, delete=False) as fh:
        fh.write(text)
    try:
        return Pipeline.from_file(fh.name, allow_custom=allow_custom)
    finally:
        Path(fh.name).unlink(missing_ok=True)


def _from_script(path: Path, pipeline_name: str | None) -> Pipeline:
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the script's own imports (a steps module beside it)
    namespace = runpy.run_path(str(path), run_name=SCRIPT_RUN_NAME)
    found: dict[str, Pipeline] = {}
    for value in namespace.values():
        if isinstance(value, Pipeline):
            found.setdefault(value.name, value)
    if not found:
        raise SynthpipeUserError(
            f"{path} defines no Pipeline at module level (one built inside `if __name__ == \"__main__\":` or a "
            "function is not seen); build it at the top level, or save it as a pipeline file")
    if pipeline_name is not None:
        if pipeline_name not in found:
            raise SynthpipeUserError(f"{path} has no pipeline named {pipeline_name!r}; it has: {', '.join(found)}")
        return found[pipeline_name]
    if len(found) > 1:
        raise SynthpipeUserError(f"{path} defines {len(found)} pipelines ({', '.join(found)}); "
                                 "pick one with --pipeline NAME")
    return next(iter(found.values()))
