"""The fork server the local executor's workers are forked from, and its early start.

Starting the fork server means starting an interpreter and importing what workers need (the
preload): a good part of a short run's time to its first step. ``warm_fork_server`` starts it
in a thread as the run begins, so it gets ready while the coordinator builds the plan and opens
the store; the first worker started then finds it waiting (multiprocessing's own lock makes a
worker start wait for a start already under way, never start a second server).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
from collections.abc import Iterable

from synthpipe.runtime.signals import start_fork_server

logger = logging.getLogger("synthpipe.runtime")

START_METHODS = ("spawn", "forkserver")
FORKSERVER_PRELOAD = ("synthpipe.runtime.worker", "cloudpickle")
"""Imported once by the fork server, so a worker forked from it starts in milliseconds; the
runner adds the upper layers' modules its workers will need (``preload``): the runtime names none."""
DEFAULT_START_METHOD = "forkserver" if sys.platform.startswith("linux") else "spawn"
"""A fork server is started (with SIGINT blocked, like every worker) on first use and kept for
the life of the process: later workers, and later runs, fork from it instead of starting a
new interpreter. Where it does not exist (macOS, Windows), spawn."""

_WARMING: list[threading.Thread] = []


def start_method(chosen: str | None = None) -> str:
    """The start method a run uses: the one asked for, else ``SYNTHPIPE_START_METHOD``, else the default."""
    method = chosen or os.environ.get("SYNTHPIPE_START_METHOD", DEFAULT_START_METHOD)
    if method not in START_METHODS:
        raise ValueError(f"start method must be one of {START_METHODS}, not {method!r}")
    return method


def preload_list(extra: Iterable[str] = ()) -> list[str]:
    return [*FORKSERVER_PRELOAD, *(p for p in dict.fromkeys(extra) if p not in FORKSERVER_PRELOAD)]


def ensure_fork_server(preload: list[str]) -> None:
    """The fork server running (started now with ``preload`` if it is not)."""
    mp.get_context("forkserver").set_forkserver_preload(preload)
    start_fork_server()


def warm_fork_server(extra: Iterable[str] = ()) -> None:
    """Start the fork server in a thread, if this run's workers are forked from one and none
    runs yet. A failure here is no failure: the first worker start tries again and says why."""
    try:
        if start_method() != "forkserver" or _running():
            return
    except ValueError:
        return  # said by the executor, where it matters
    if any(t.is_alive() for t in _WARMING):
        return
    preload = preload_list(extra)

    def warm() -> None:
        try:
            ensure_fork_server(preload)
        except Exception as exc:  # noqa: BLE001
            logger.debug("synthpipe: early fork server start failed: %s", exc)

    thread = threading.Thread(target=warm, name="synthpipe-forkserver", daemon=True)
    _WARMING[:] = [thread]
    thread.start()


def _running() -> bool:
    """Whether a fork server was started in this process (whether it still lives is for
    multiprocessing to find out when a worker starts: reaping it here would confuse it)."""
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None) is not None
