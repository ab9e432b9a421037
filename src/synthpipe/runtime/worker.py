"""The worker process: load one step, then run the batches the coordinator sends.

A worker holds no pipeline state. The coordinator never blocks on a send to it (``outbox``),
so a worker may read its socket between batches, in its main thread, while its own sends
block until the coordinator reads them: no two processes can each wait on the other. A
thread only watches for the coordinator's end of the socket to close, to end the worker
even in the middle of a batch (where the system cannot tell, a thread reads the messages).
It ignores the terminal's Ctrl+C (the coordinator decides when to stop) and dies with its parent.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import queue
import select
import signal
import sys
import threading
import time
import zlib
from multiprocessing.connection import Connection
from typing import Any

import synthpipe
from synthpipe.errors import ErrorRecord, UnpicklableOutput, trim_internal_frames
from synthpipe.runtime import messages as m
from synthpipe.runtime.frames import FrameReader
from synthpipe.runtime.main_import import import_main
from synthpipe.store.batch_format import ColumnarBudget
from synthpipe.worker_context import (  # noqa: F401 (public here too)  # noqa: F401 (public here too)
    _CONTEXT,
    _PUBLISHER,
    _ROW_START,
    STORE_BATCHES,
    context,
    current_row_start,
    publish,
)

_PACKAGE_DIR = os.path.dirname(os.path.abspath(synthpipe.__file__)) + os.sep
_PR_SET_PDEATHSIG = 1


MAIN_MODULE = "main_module"
"""Set in the run context: the user's main script, for the worker to import (``main_import``)."""
LEAF_STEPS = "leaf_steps"
"""Set in the run context: the steps whose rows make the result (their workers send its Arrow form)."""
LEAF_FORM_MIN_ROWS = 256
"""A leaf's worker sends its batch's Arrow form too from this many rows on: inferring the
columns' types costs about 0.25 ms a call, beside about 0.5 us a row, so for small batches it
is cheaper done once per chunk by the coordinator than once per batch here."""
_CHANNEL: list[_Channel] = []
_COLUMNAR = ColumnarBudget()


def _die_with_parent(parent_pid: int) -> None:
    """On Linux the kernel kills us when our parent dies, even mid-batch.

    ``parent_pid`` is the coordinator's pid when it is our parent (spawn), else 0.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)  # the coordinator died before the line above took effect


class _Channel:
    """Sends messages to the coordinator from any thread of the worker."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, data: bytes) -> None:
        with self.lock:
            self.conn.send_bytes(data)


class _ForwardingHandler(logging.Handler):
    """Ships log lines to the coordinator, the only writer of the run's log file."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.send(m.encode((m.LOG, record.levelno, record.name, self.format(record))))
        except Exception:  # the coordinator is gone; nothing useful to do
            pass


def _receiver(conn: Connection) -> Any:
    """The next message from the coordinator, read from the socket several at a time."""
    reader = FrameReader(conn.fileno())

    def receive() -> tuple[Any, ...]:
        try:
            return m.decode(reader.recv())
        except (EOFError, OSError):
            # The coordinator is gone: end now, even in the middle of a batch; nobody waits
            # for its result.
            os._exit(1)

    return receive


_HANGUP = getattr(select, "POLLRDHUP", 0)


def _watch_coordinator(conn: Connection) -> bool:
    """End this worker the moment the coordinator's end of the socket closes (it died), even in
    the middle of a batch: a thread that waits for that alone, reading nothing, so the main
    thread reads its messages itself. (Under the fork server the kernel's parent-death signal
    does not help: our parent is the fork server, which lives as long as we hold its pipe.)
    False where the system cannot tell a closed peer apart from data to read."""
    if not _HANGUP:
        return False
    poller = select.poll()
    poller.register(conn.fileno(), _HANGUP)

    def watch() -> None:
        while True:
            try:
                events = poller.poll()
            except OSError:
                os._exit(1)
            if any(event & (_HANGUP | select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, event in events):
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="coordinator-watch").start()
    return True


def _read_inbox(conn: Connection, put: Any) -> None:
    """On a thread of its own: where no parent-death signal exists, this is how a worker busy
    with a batch learns that the coordinator is gone."""
    receive = _receiver(conn)
    while True:
        put(receive())


def _find_unpicklable(rows: list[dict[str, Any]]) -> tuple[int, str, Any] | None:
    for i, row in enumerate(rows):
        for column, value in row.items():
            try:
                pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                return i, column, value
    return None


def _pickle_rows(step_name: str, rows: list[dict[str, Any]]) -> bytes:
    """The rows as bytes, pickled on their own: the coordinator stores exactly these."""
    try:
        return pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        culprit = _find_unpicklable(rows)
        if culprit is None:
            raise UnpicklableOutput(
                f"step '{step_name}' produced output that cannot be sent to another process: {exc}"
            ) from None
        row, column, value = culprit
        raise UnpicklableOutput(
            f"step '{step_name}' produced a value that cannot be sent to another process: "
            f"column '{column}' of output row {row} holds a {type(value).__module__}."
            f"{type(value).__qualname__} ({exc})"
        ) from None


def _done(step_name: str, ticket: int, rows: list[dict[str, Any]], last: bool, started: float,
          failed: list[tuple[int, ErrorRecord]] | tuple[()] = (), sources: list[int | None] | None = None) -> bytes:
    """The DONE message for ``rows`` (made from ``started``, a ``perf_counter`` time). Where the
    run stores its batches and the step's work makes it worth it, the columnar form to store
    is made here, in parallel with the other workers, rather than by the coordinator."""
    work = time.perf_counter() - started
    data = _pickle_rows(step_name, rows)
    stored = None
    if _CONTEXT.get(STORE_BATCHES):
        stored = _COLUMNAR.encode(rows, work, len(data))
    leaf = None
    if len(rows) >= LEAF_FORM_MIN_ROWS and step_name in _CONTEXT.get(LEAF_STEPS, ()):
        from synthpipe.store.leaf_writer import encode_leaf_rows  # here: most workers never need it

        leaf = encode_leaf_rows(rows)  # made here, beside the other workers, not in the coordinator
    checksum = zlib.crc32(stored or data)  # of the bytes the store keeps, made here rather than there
    return m.encode((m.DONE, ticket, data, last, failed, sources, stored, len(rows), leaf, checksum, work))


def _record(exc: BaseException, **where: Any) -> ErrorRecord:
    return ErrorRecord.from_exception(trim_internal_frames(exc, _PACKAGE_DIR), **where)


def worker_main(
    conn: Connection, payload: bytes, step_name: str, replica: int, log_level: int, parent_pid: int,
    run_context: dict[str, Any] | None = None,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # blocked by whoever started us (the fork server keeps both blocked): SIGTERM ends a worker
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _die_with_parent(parent_pid)
    channel = _Channel(conn)
    _CHANNEL[:] = [channel]
    _PUBLISHER[:] = [lambda kind, payload: channel.send(m.encode((m.RECORD, kind, payload)))]
    _CONTEXT.update(run_context or {})
    _CONTEXT["step"] = step_name  # what the worker hands back (answers for the tally) says whose it is
    handler = _ForwardingHandler(channel)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Other libraries only speak up for warnings; synthpipe and the steps at the run's level.
    root.setLevel(max(log_level, logging.WARNING))
    logging.getLogger("synthpipe").setLevel(log_level)

    phase = "import"
    try:
        import_main(_CONTEXT.get(MAIN_MODULE))  # the user's script, as multiprocessing would have
        phase = "load"
        import cloudpickle  # noqa: F401  (classes pickled by value need it to load)

        step = pickle.loads(payload)
        step.load()
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the user
        channel.send(m.encode((m.LOAD_FAILED, _record(exc, step=step_name, replica=replica, phase=phase))))
        return
    try:
        if getattr(step, "is_async", False):
            import asyncio  # here: a worker of a plain step (and the fork server) need not import it

            asyncio.run(_serve_async(step, step_name, replica, channel, conn))
        elif _watch_coordinator(conn):
            receive = _receiver(conn)  # read here, between batches: the coordinator never blocks on a send
            channel.send(m.encode((m.READY,)))
            _serve(step, step_name, replica, channel, receive)
        else:
            inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
            threading.Thread(target=_read_inbox, args=(conn, inbox.put), daemon=True, name="inbox").start()
            channel.send(m.encode((m.READY,)))
            _serve(step, step_name, replica, channel, inbox.get)
    finally:
        try:
            step.unload()
        except Exception:
            logging.getLogger("synthpipe.worker").exception("step '%s': unload() failed", step_name)
    # Everything is sent (sends are synchronous). Skip the interpreter's teardown (joining
    # pool threads, freeing every module): it is a good part of a short run's time.
    try:  # what the teardown must still do: multiprocessing's finalizers (named semaphores)
        from multiprocessing import util

        util._exit_function()
    except Exception:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)


def _serve(step: Any, step_name: str, replica: int, channel: _Channel, receive: Any) -> None:
    generator = None
    exhausted = False
    while True:
        message = receive()
        if message is None or message[0] == m.STOP:
            return
        kind, ticket, seq = message[0], message[1], message[2]
        if kind == m.GENERATE:
            started = time.perf_counter()
            try:
                if generator is None:  # resuming: start after the rows already stored
                    generator = step.generate_applying_mappings(offset=message[3])
                rows, last = ([], True) if exhausted else next(generator, ([], True))
                exhausted = exhausted or last
                data = _done(step_name, ticket, rows, last, started)
            except BaseException as exc:  # noqa: BLE001
                record = _record(exc, step=step_name, replica=replica, batch=seq, phase="generate")
                data = m.encode((m.FAILED, ticket, record))
            channel.send(data)
            continue
        row_start, inputs = message[3], message[4]
        n = len(inputs[0]) if inputs else 0
        where = {"step": step_name, "replica": replica, "batch": seq,
                 "rows": (row_start, row_start + n - 1) if n else None}
        started = time.perf_counter()
        try:
            rows = step.process_applying_mappings(*inputs)
            data = _done(step_name, ticket, rows, False, started)
        except BaseException as exc:  # noqa: BLE001
            data = m.encode((m.FAILED, ticket, _record(exc, **where)))
        channel.send(data)


async def _serve_async(step: Any, step_name: str, replica: int, channel: _Channel, conn: Connection) -> None:
    """Every batch as its own task on one event loop: a step waiting on LLM requests keeps
    them flowing across batches, and answers each batch as soon as it is complete."""
    import asyncio

    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    threading.Thread(target=_read_inbox, args=(conn, lambda msg: loop.call_soon_threadsafe(inbox.put_nowait, msg)),
                     daemon=True, name="inbox").start()
    running: set[asyncio.Task[None]] = set()
    channel.send(m.encode((m.READY,)))
    try:
        while True:
            message = await inbox.get()
            if message is None or message[0] == m.STOP:
                return
            task = asyncio.create_task(_run_batch(step, step_name, replica, channel, *message[1:]))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def _run_batch(step: Any, step_name: str, replica: int, channel: _Channel, ticket: int, seq: int,
                     row_start: int, inputs: list[list[dict[str, Any]]]) -> None:
    import asyncio

    n = len(inputs[0]) if inputs else 0
    where = {"step": step_name, "replica": replica, "batch": seq,
             "rows": (row_start, row_start + n - 1) if n else None}
    _ROW_START.set(row_start)  # this batch's task has a context of its own
    started = time.perf_counter()
    try:
        rows, failures, sources = await step.aprocess_applying_mappings(*inputs)
        failed = [
            (index, _record(error, step=step_name, replica=replica, batch=seq,
                            rows=(row_start + index, row_start + index)))
            for index, error in failures
        ]
        data = _done(step_name, ticket, rows, False, started, failed, sources)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the user
        data = m.encode((m.FAILED, ticket, _record(exc, **where)))
    await asyncio.to_thread(channel.send, data)  # a full pipe must not stall the other batches
