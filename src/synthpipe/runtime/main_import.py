"""The worker imports the user's script itself, so an error there is reported like any other.

multiprocessing imports the main script in a new worker before any of our code runs there:
a script that fails to import (a typo, a missing package) killed the worker with its
traceback only on stderr, and the user got "died (exit code 1) while loading". Here the
coordinator hides its main module from multiprocessing while a worker starts, and passes
what multiprocessing would have used; the worker imports it first thing, inside the same
``try`` as the step's ``load()``, so its traceback reaches the error and ``pipeline.log``.
A script read from stdin (no file to import again) is not imported: the steps travel by
value anyway.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from multiprocessing import spawn
from typing import Any

MAIN_KEYS = ("init_main_from_name", "init_main_from_path")
_NOT_USERS = (os.path.dirname(spawn.__file__), os.path.dirname(os.__file__) + os.sep + "runpy.py", "<frozen ")


def main_to_import() -> dict[str, str]:
    """What multiprocessing would have the worker import (a module name or a script path)."""
    data = spawn.get_preparation_data("synthpipe")
    return {key: data[key] for key in MAIN_KEYS if key in data}


@contextlib.contextmanager
def hidden_main() -> Iterator[None]:
    """While a worker starts: multiprocessing sees no main module to import in it."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {key: main.__dict__[key] for key in ("__spec__", "__file__") if key in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def import_main(what: dict[str, Any] | None) -> None:
    """In the worker: import the user's script as ``__mp_main__``, as multiprocessing does."""
    if not what:
        return
    try:
        if "init_main_from_name" in what:
            spawn._fixup_main_from_name(what["init_main_from_name"])
        elif os.path.isfile(what["init_main_from_path"]):
            spawn._fixup_main_from_path(what["init_main_from_path"])
    except BaseException as exc:
        raise _users_frames_first(exc) from None


def _users_frames_first(exc: BaseException) -> BaseException:
    """Drop the frames of the import machinery before the user's own."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and _machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    return exc.with_traceback(tb)


def _machinery(filename: str) -> bool:
    import synthpipe

    return filename.startswith((os.path.dirname(os.path.abspath(synthpipe.__file__)), *_NOT_USERS))
