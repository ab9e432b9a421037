"""Spawned workers that start with SIGINT blocked, as forked ones do.

A spawned worker is a new interpreter (``python -c "from multiprocessing.spawn import ..."``):
it does not keep the mask of the thread that started it (multiprocessing's exec resets it), so a
terminal's Ctrl+C that reached the whole process group during the second it spends starting up
raised a KeyboardInterrupt inside it, and its traceback joined the coordinator's on the screen.
Here the child is started by ``posix_spawn`` with SIGINT in its signal mask; ``worker_main``
ignores SIGINT before it unblocks it, which drops the one that came in the meantime. The
coordinator alone decides what a Ctrl+C means.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from multiprocessing import context, popen_spawn_posix, util


def _spawn_with_sigint_blocked(path: str, args: Sequence[str], passfds: Sequence[int]) -> int:
    """What ``multiprocessing.util.spawnv_passfds`` does, with the child's SIGINT blocked."""
    fds = sorted(set(map(int, passfds)))
    for fd in fds:
        os.set_inheritable(fd, True)
    try:
        return os.posix_spawn(path, list(args), os.environ, setsigmask={signal.SIGINT})
    finally:
        for fd in fds:
            os.set_inheritable(fd, False)


class _MaskedPopen(popen_spawn_posix.Popen):
    def _launch(self, process_obj: object) -> None:
        # the stdlib's launch, with its one call that starts the child swapped for ours
        original = util.spawnv_passfds
        util.spawnv_passfds = _spawn_with_sigint_blocked
        try:
            super()._launch(process_obj)
        finally:
            util.spawnv_passfds = original


class MaskedSpawnProcess(context.SpawnProcess):
    """A spawn-method process whose interpreter starts with SIGINT blocked."""

    @staticmethod
    def _Popen(process_obj: object) -> popen_spawn_posix.Popen:  # noqa: N802  (multiprocessing's name)
        return _MaskedPopen(process_obj)
