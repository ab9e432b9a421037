"""The coordinator's non-blocking sends and the batched reads, on a real socket pair: messages
arrive whole and in order, whether the socket takes them at once or they wait in the outbox;
``multiprocessing``'s own reader understands the framing."""

import socket
import threading
from multiprocessing.connection import Connection

import pytest

from synthpipe.runtime.frames import FrameReader
from synthpipe.runtime.outbox import Outbox, wait_io

pytestmark = pytest.mark.timeout(60)


def _pair():
    a, b = socket.socketpair()
    return Connection(a.detach()), Connection(b.detach())


def test_small_messages_go_at_once_and_read_several_per_call():
    coordinator, worker = _pair()
    box = Outbox(coordinator.fileno())
    messages = [bytes([i]) * (i * 37) for i in range(50)]
    for data in messages:
        box.put(data)
    assert not box.waiting
    reader = FrameReader(worker.fileno())
    got = [reader.recv() for _ in messages]
    assert got == messages
    assert not reader.pending()
    box.close()
    coordinator.close()
    with pytest.raises(EOFError):
        reader.recv()
    worker.close()


def test_a_full_socket_keeps_the_rest_in_order_until_writable():
    coordinator, worker = _pair()
    box = Outbox(coordinator.fileno())
    big = [bytes([i]) * 3_000_000 for i in range(3)]  # far more than a socket buffer holds
    for data in big:
        box.put(data)  # never blocks
    assert box.waiting
    got: list[bytes] = []
    reading = threading.Thread(target=lambda: got.extend(worker.recv_bytes() for _ in big))  # multiprocessing's reader
    reading.start()
    while box.waiting:
        _, writable = wait_io([], [box], 5.0)
        assert writable == [box]
        box.drain()
    reading.join(30)
    assert got == big
    box.close()
    coordinator.close()
    worker.close()


def test_a_message_split_across_reads_is_handed_out_whole():
    coordinator, worker = _pair()
    reader = FrameReader(worker.fileno())
    def send() -> None:  # multiprocessing's writer, on a thread: larger than the socket holds
        coordinator.send_bytes(b"x" * 1_000_000)
        coordinator.send_bytes(b"tail")

    sender = threading.Thread(target=send)
    sender.start()
    assert reader.recv() == b"x" * 1_000_000
    assert reader.recv() == b"tail"
    sender.join(10)
    coordinator.close()
    worker.close()


def test_a_gone_worker_breaks_the_outbox_without_raising():
    coordinator, worker = _pair()
    box = Outbox(coordinator.fileno())
    worker.close()
    for _ in range(3):
        box.put(b"x" * 100_000)
    assert box.broken and not box.waiting
    box.close()
    coordinator.close()


def test_a_rounds_messages_kept_for_later_go_in_one_write_in_order(monkeypatch):
    coordinator, worker = _pair()
    box = Outbox(coordinator.fileno())
    writes = []
    send = box._sock.send
    monkeypatch.setattr(box, "_sock", type("Counting", (), {
        "send": lambda self, data, flags: writes.append(len(data)) or send(data, flags),
        "fileno": lambda self: coordinator.fileno(), "close": lambda self: None})())
    kept = [bytes([i]) * (i * 11 + 1) for i in range(20)]
    for data in kept:
        box.put(data, now=False)
    assert box.waiting and writes == []  # a loop waiting for writable sockets would send them too
    box.put(b"stop")  # behind what is kept, never before it
    assert box.waiting and writes == []
    box.send()
    assert not box.waiting and len(writes) == 1
    reader = FrameReader(worker.fileno())
    assert [reader.recv() for _ in range(21)] == [*kept, b"stop"]
    box.close()
    coordinator.close()
    worker.close()
