"""Messages on a worker's socket, framed as ``multiprocessing.Connection`` frames them (a 4-byte
big-endian length, or -1 and an 8-byte length, then the bytes), read many at a time.

``Connection.recv_bytes`` costs two system calls a message (the length, then the bytes) and
``poll`` a third; a ``FrameReader`` reads whatever the socket holds in one call and hands out
the complete messages in it, keeping a partial one for the next read.
"""

from __future__ import annotations

import os
import select
import struct

_SHORT = struct.Struct("!i")
_LONG = struct.Struct("!Q")
_LARGE = 0x7FFFFFFF
READ_SIZE = 1 << 18


def frame(data: bytes) -> bytes:
    """``data`` as ``Connection.recv_bytes`` (and a ``FrameReader``) expects it."""
    if len(data) > _LARGE:
        return _SHORT.pack(-1) + _LONG.pack(len(data)) + data
    return _SHORT.pack(len(data)) + data


class FrameReader:
    """Reads framed messages from a file descriptor (blocking or not, as the caller waits)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()
        self._start = 0  # where the first message not handed out begins
        self.closed = False  # the other end closed: nothing more will come
        self._poller: select.poll | None = None

    def pending(self) -> bool:
        """A complete message is already read, waiting to be handed out."""
        available = len(self._buffer) - self._start
        if available < 4:
            return False
        (size,) = _SHORT.unpack_from(self._buffer, self._start)
        if size == -1:
            return available >= 12 and available >= 12 + _LONG.unpack_from(self._buffer, self._start + 4)[0]
        return available >= 4 + size

    def readable(self) -> bool:
        """The descriptor has bytes (or its end) to read now, without waiting."""
        if self.closed:
            return False
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.fd, select.POLLIN)
        return bool(self._poller.poll(0))

    def next(self) -> bytes | None:
        """The next complete message already read, or None."""
        buffer, start = self._buffer, self._start
        available = len(buffer) - start
        if available < 4:
            return None
        (size,) = _SHORT.unpack_from(buffer, start)
        head = 4
        if size == -1:
            if available < 12:
                return None
            (size,) = _LONG.unpack_from(buffer, start + 4)
            head = 12
        end = start + head + size
        if len(buffer) < end:
            return None
        with memoryview(buffer) as view:
            data = bytes(view[start + head:end])
        if end == len(buffer):
            buffer.clear()
            self._start = 0
        else:
            self._start = end
        return data

    def fill(self) -> bool:
        """Read what the descriptor holds (one call; it blocks if the descriptor does and holds
        nothing). False at the end of the stream."""
        if self._start:
            del self._buffer[:self._start]
            self._start = 0
        data = os.read(self.fd, READ_SIZE)
        if not data:
            self.closed = True
            return False
        self._buffer += data
        return True

    def recv(self) -> bytes:
        """The next message, waiting for it as long as it takes; EOFError at the end."""
        while True:
            data = self.next()
            if data is not None:
                return data
            if not self.fill():
                raise EOFError("the other end closed the connection")
