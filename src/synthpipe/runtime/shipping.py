"""Pickles a step for its worker so that the user's own lines survive the trip.

cloudpickle ships code defined in ``__main__`` (a script, a notebook cell, ``python -c``) by
value, and renames every such code object's file to ``<dynamic-code>``: a traceback in the
worker then has neither the file nor the line's text. Here each code object keeps its file
name, and the source lines the coordinator has for that file (read from disk, or a notebook
cell's text, or the ``-c`` command) travel with it and are put in the worker's ``linecache``:
the worker's traceback shows the very lines that ran, even if the file changed since.
"""

from __future__ import annotations

import io
import linecache
import sys
import types
from collections import ChainMap
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cp

MAX_SOURCE_CHARS = 2_000_000
"""Per file: a larger one (generated code, say) travels without its text."""


def dumps(obj: Any) -> bytes:
    """``cloudpickle.dumps`` that keeps code objects' file names and source lines."""
    buffer = io.BytesIO()
    _SourcePickler(buffer).dump(obj)
    return buffer.getvalue()


class _SourcePickler(cloudpickle.Pickler):
    def __init__(self, file: Any) -> None:
        self._sources: dict[str, tuple[str, ...] | None] = {}
        # looked up on the instance when the pickler starts: must be set before it does
        self.dispatch_table = ChainMap({types.CodeType: self._reduce_code}, cloudpickle.Pickler.dispatch_table)
        super().__init__(file, protocol=None)

    def _reduce_code(self, code: types.CodeType) -> Any:
        _, args = _cp._code_reduce(code)
        filename = code.co_filename
        if filename not in self._sources:  # one copy per file, shared by its code objects (pickle memo)
            self._sources[filename] = source_lines(filename)
        return _rebuild_code, (args, filename, self._sources[filename])


def source_lines(filename: str) -> tuple[str, ...] | None:
    """The coordinator's lines of ``filename``: the file, a notebook cell, or ``python -c``'s text."""
    lines = linecache.getlines(filename)
    if not lines and filename == "<string>" and sys.argv[:1] == ["-c"]:
        command = _command_text()
        lines = command.splitlines(keepends=True) if command else []
    if not lines or sum(len(line) for line in lines) > MAX_SOURCE_CHARS:
        return None
    return tuple(lines)


def _command_text() -> str | None:
    argv = getattr(sys, "orig_argv", [])
    for i, arg in enumerate(argv[:-1]):
        if arg == "-c":
            return argv[i + 1]
    return None


def _rebuild_code(args: tuple[Any, ...], filename: str, lines: tuple[str, ...] | None) -> types.CodeType:
    """In the worker: the code object under its own file name, its file's lines registered.

    A ``None`` modification time tells ``linecache.checkcache`` to keep the entry."""
    if lines is not None:
        linecache.cache[filename] = (sum(len(line) for line in lines), None, list(lines), filename)
    return types.CodeType(*args).replace(co_filename=filename)
