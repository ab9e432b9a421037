"""Runs APIGen function calls; executed as a separate interpreter by ``APIGenExecutionChecker``.

It reads ``{"libpath", "calls", "check_is_dangerous"}`` as JSON on stdin and writes
``[{"keep": bool, "execution_result": str}, ...]`` as JSON on stdout. It imports nothing from
synthpipe (it runs with ``python -I``), so the generated calls see none of the worker's state.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any

_DANGEROUS = ("subprocess.", "os.system(", "input(", "threading.Thread(", "exec(", "argparse.ArgumentParser(",
              ".setLevel(", "unittest.main(", "sys.exit(", "exit(", "raise SystemExit(", "multiprocessing.Pool(")


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _function(libpath: Path, name: str) -> Any:
    if libpath.suffix == ".py":
        return getattr(_load(libpath), name, None)
    candidate = libpath / f"{name}.py"
    return getattr(_load(candidate), name, None) if candidate.is_file() else None


def _run(libpath: Path, call: Any, check_is_dangerous: bool) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return {"keep": False, "execution_result": f"Not a function call: {call!r}"}
    name, arguments = call["name"], call.get("arguments") or {}
    try:
        function = _function(libpath, name)
    except Exception as exc:  # the library itself does not import
        return {"keep": False, "execution_result": f"Function '{name}' could not be loaded: {exc!r}"}
    if function is None or not callable(function):
        return {"keep": False, "execution_result": f"Function '{name}' not found."}
    if check_is_dangerous:
        try:
            source = inspect.getsource(function)
        except (OSError, TypeError):
            source = ""
        if any(marker in source for marker in _DANGEROUS):
            return {"keep": False, "execution_result": f"Function '{name}' not run: it looks unsafe."}
    if not isinstance(arguments, dict):
        return {"keep": False, "execution_result": f"Arguments of '{name}' are not an object: {arguments!r}"}
    try:
        result = function(**arguments)
    except Exception as exc:
        return {"keep": False, "execution_result": f"{type(exc).__name__}: {exc}"}
    return {"keep": True, "execution_result": str(result)}


def _watchdog(seconds: float) -> None:
    """The child ends itself past its limit too, so it never outlives a worker that was killed
    before it could kill the child (a thread for sleeps and loops, a CPU limit for the rest)."""
    import os
    import resource
    import threading

    limit = max(1, int(seconds) + 2)
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 1))
    except (ValueError, OSError):
        pass
    timer = threading.Timer(seconds + 1.0, lambda: os._exit(124))
    timer.daemon = True
    timer.start()


def main() -> None:
    request = json.loads(sys.stdin.read())
    _watchdog(float(request.get("timeout", 60.0)))
    libpath = Path(request["libpath"])
    real_stdout, sys.stdout = sys.stdout, sys.stderr  # what the functions print stays out of the answer
    out = [_run(libpath, call, bool(request.get("check_is_dangerous", True))) for call in request["calls"]]
    sys.stdout = real_stdout
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
