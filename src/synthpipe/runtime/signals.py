"""Ctrl+C and SIGTERM for the coordinator: the handler only records the signal and writes a
byte to a wake-up pipe, which the executor waits on beside its workers' pipes."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """While entered (in the main thread), SIGINT and SIGTERM are recorded, not raised.

    The previous handlers are put back on exit, whatever happened in between.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self._read_fd = self._write_fd = -1
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._read_fd, self._write_fd = os.pipe()  # here, so that leaving always closes them
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            outer = getattr(self._previous[signal.SIGINT], "__self__", None)
            if isinstance(outer, StopSignals) and outer.received:  # came before this part began: ours now
                self.received.extend(outer.received)
                outer.received.clear()
                os.write(self._write_fd, b"\0")
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        try:
            os.write(self._write_fd, b"\0")
        except OSError:  # pipe full: a wake-up is already pending
            pass

    reason: str | None = None  # set when the coordinator asked for the stop itself

    def request_stop(self, reason: str) -> None:
        """Stop as for a first Ctrl+C, asked by the coordinator itself (a budget reached)."""
        self.reason = reason
        self._handle(signal.SIGINT, None)

    def fileno(self) -> int:
        return self._read_fd

    def clear_wakeups(self) -> None:
        try:
            while os.read(self._read_fd, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    @property
    def first(self) -> int | None:
        return self.received[0] if self.received else None


def start_fork_server() -> None:
    """Start multiprocessing's helpers so that no stop signal can kill them half-started.

    The resource tracker is started first, on its own: its start-up unblocks SIGINT and SIGTERM
    when it returns, and, run inside the fork server's start, it would leave the fork server to
    import its preload modules with SIGINT at its default action (a Ctrl+C to the terminal
    then killed it, and the run failed with an EOFError). With the tracker running, the fork
    server starts with both signals blocked, inherits the mask, ignores SIGINT once it is ready
    and never unblocks; a worker it forks unblocks them itself (``worker_main``).
    """
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Around the whole of ``run()``: a stop signal that comes while the run is still being set
    up (imports, the plan, the store) is kept, not raised where it lands, and handed to the
    run's own ``StopSignals``, which stops at once. One that no run took (it came after the
    run ended) ends the program as the signal would have, with no traceback of ours."""
    with StopSignals() as early:
        yield
    if early.received:
        signum = early.received[0]
        if signum == signal.SIGINT:
            raise KeyboardInterrupt("stopped by SIGINT")
        raise SystemExit(128 + signum)
