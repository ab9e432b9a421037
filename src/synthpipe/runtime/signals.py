"""Ctrl+C and SIGTERM for the coordinator: the handler only records the signal and writes a
byte to a wake-up pipe, which the executor waits on beside its workers' pipes."""

from __future__ import annotations

import os
import signal
import threading
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
