"""Sending to a worker without ever blocking the coordinator, and without a thread.

A message is written straight to the worker's socket with ``MSG_DONTWAIT``: almost always the
socket takes it whole, at the cost of one system call. When it does not (a worker whose step
holds the GIL reads nothing for a while, and its socket's buffer is full), what is left waits
in the outbox, in order, and the executor's loop waits for the socket to be writable beside
the workers' results, then sends more (``drain``). The framing is ``multiprocessing``'s own
(``frames``), so the worker may read with ``recv_bytes`` or a ``FrameReader``.
"""

from __future__ import annotations

import os
import select
import socket
from collections import deque
from collections.abc import Iterable
from typing import Any

from synthpipe.runtime.frames import frame

_FLAGS = socket.MSG_DONTWAIT | getattr(socket, "MSG_NOSIGNAL", 0)  # never a SIGPIPE, whatever its handler


class Outbox:
    """The coordinator's sending end of one worker's connection."""

    def __init__(self, fileno: int) -> None:
        self._sock = socket.socket(fileno=os.dup(fileno))
        self._pending: deque[memoryview] = deque()
        self.broken = False  # the worker is gone: its sentinel says how; what is sent goes nowhere

    @property
    def waiting(self) -> bool:
        """Some bytes wait for the socket to be writable."""
        return bool(self._pending) and not self.broken

    def fileno(self) -> int:
        return self._sock.fileno()

    def put(self, data: bytes, now: bool = True) -> None:
        """Send ``data`` after what waits already. ``now=False``: keep it for ``send`` (the
        executor gathers a round's messages to a worker, to send them in one system call);
        until then the outbox is ``waiting``, so a loop that waits for writable sockets sends
        it all the same."""
        if self.broken:
            return
        self._pending.append(memoryview(frame(data)))
        if now and len(self._pending) == 1:
            self.drain()

    def send(self) -> None:
        """Send what waits, joined into one write."""
        if len(self._pending) > 1:
            joined = memoryview(b"".join(self._pending))
            self._pending.clear()
            self._pending.append(joined)
        self.drain()

    def drain(self) -> None:
        """Send what waits, as far as the socket takes it now."""
        try:
            while self._pending:
                head = self._pending[0]
                sent = self._sock.send(head, _FLAGS)
                if sent < len(head):
                    self._pending[0] = head[sent:]
                    return
                self._pending.popleft()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.broken = True
            self._pending.clear()

    def close(self) -> None:
        self._pending.clear()
        self.broken = True
        try:
            self._sock.close()
        except OSError:
            pass


def wait_io(readers: Iterable[Any], writers: Iterable[Outbox], timeout: float | None) -> tuple[list[Any], list[Outbox]]:
    """Like ``multiprocessing.connection.wait`` for ``readers`` (connections, sentinels, file
    descriptors), and also for ``writers`` whose socket can take more: the ready ones of each.
    One ``poll`` call, nothing to set up or tear down."""
    poller = select.poll()
    reading: dict[int, Any] = {}
    writing: dict[int, Outbox] = {}
    for obj in readers:
        fd = obj if isinstance(obj, int) else obj.fileno()
        reading[fd] = obj
        poller.register(fd, select.POLLIN)
    for box in writers:
        writing[box.fileno()] = box
        poller.register(box.fileno(), select.POLLOUT)
    events = poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
    readable = [reading[fd] for fd, _ in events if fd in reading]
    writable = [writing[fd] for fd, _ in events if fd in writing]
    return readable, writable
