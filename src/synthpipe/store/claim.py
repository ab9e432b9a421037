"""One machine at a time on a remote store.

Two machines running one pipeline on one remote store would each drop the other's work (a
copy that falls behind gives way to the remote), and the lock file guards one machine only.
So a run claims the store: ``lease.json`` on the remote names the run, its host and its local
copy, and a thread of its own rewrites it every ``LEASE_SECONDS / 4``.

A run that finds another's claim watches it, on its own clock (machines' clocks differ): if
the claim is rewritten within ``LEASE_SECONDS``, that run is alive and this one refuses to
start; if not, it was killed, and this run takes over. A claim left by the same local copy
needs no watching: this copy's lock file shows its run is over. A run that finds, when it
renews, that another run has taken its claim (its own lapsed: a network cut) gives up: it
stops copying and says so, rather than writing over the other's work.

Object stores offer no atomic "write if unchanged" through fsspec, so reading then writing
leaves a window of one round trip: this guards against the real mistake (a second machine
started on a store in use), not against two starts within milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from synthpipe.errors import SynthpipeError

logger = logging.getLogger("synthpipe.store")

LEASE = "lease.json"  # on the remote only
COPY_ID = ".copy-id"  # in the local copy only: which copy a claim came from
LEASE_SECONDS = float(os.environ.get("SYNTHPIPE_LEASE_SECONDS", "30"))
"""A claim not rewritten for this long is that of a run that was killed."""
STALE_SECONDS = 600.0
"""A claim older than this by this machine's clock is taken over without watching it."""


class StoreInUse(SynthpipeError):
    """A run on another machine (or another local copy) holds the remote store."""


class RemoteClaim:
    def __init__(self, fs: Any, root: str, local: Path, display_url: str) -> None:
        self.fs = fs
        self.path = f"{root}/{LEASE}"
        self.local = local
        self.display_url = display_url
        self.run = uuid.uuid4().hex
        self.lost: str | None = None  # why this run no longer holds the store
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._write_lock = threading.Lock()

    def acquire(self, put: Any) -> None:
        """Claim the store (``put(path, data)`` writes a remote file), or raise ``StoreInUse``."""
        self._put = put
        copy = self._copy_id()
        found = self._read()
        if found is not None:
            held, raw = found
            if held.get("run") != self.run and held.get("copy_id") != copy:
                self._wait_out(held, raw)
        self._write()
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beat, name="synthpipe-claim", daemon=True)
        self._heartbeat.start()

    def stop(self) -> None:
        """Stop renewing the claim, and leave it to lapse (what this copy holds is not all up)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=LEASE_SECONDS)
            self._heartbeat = None

    def release(self) -> None:
        """Stop renewing; remove the claim if it is still this run's."""
        acquired = self._heartbeat is not None
        self.stop()
        if not acquired or self.lost is not None:
            return
        with self._write_lock:
            found = self._read()
            if found is not None and found[0].get("run") == self.run:
                self.fs.rm_file(self.path)

    # -- watching another run's claim ------------------------------------------------

    def _wait_out(self, held: dict[str, Any], raw: bytes) -> None:
        who = f"a run on {held.get('host', '?')} (pid {held.get('pid', '?')})"
        if time.time() - float(held.get("renewed", 0)) > STALE_SECONDS:
            logger.warning("synthpipe: taking over the store %s from %s, not heard from for over %.0f minutes",
                           self.display_url, who, STALE_SECONDS / 60)
            return
        logger.warning("synthpipe: the store %s is claimed by %s; waiting up to %.0fs to see whether it is "
                       "still running", self.display_url, who, LEASE_SECONDS)
        deadline = time.monotonic() + LEASE_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, max(0.05, LEASE_SECONDS / 20)))  # polling a remote file: nothing notifies
            found = self._read()
            if found is None:
                return  # given back meanwhile
            if found[1] != raw:
                raise StoreInUse(
                    f"the store {self.display_url} is in use by {who}, which is still renewing its claim; "
                    "two machines running one pipeline on one store would overwrite each other's work. "
                    "Wait for that run to end (or give this run another cache_dir)")
        logger.warning("synthpipe: taking over the store %s from %s, not heard from for %.0fs",
                       self.display_url, who, LEASE_SECONDS)

    # -- holding it ---------------------------------------------------------------------

    def _beat(self) -> None:
        failing = False
        while not self._stop.wait(LEASE_SECONDS / 4):
            try:
                self._renew()
                failing = False
            except Exception as exc:  # the network: try again at the next beat
                if not failing:
                    failing = True
                    logger.warning("synthpipe: could not renew the claim on %s (%s); trying again",
                                   self.display_url, exc)
            if self.lost is not None:
                return

    def _renew(self) -> None:
        with self._write_lock:
            if self._stop.is_set():
                return
            found = self._read()
            if found is not None and found[0].get("run") != self.run:
                other = found[0]
                self.lost = (f"the store {self.display_url} was taken over by a run on {other.get('host', '?')} "
                             f"(pid {other.get('pid', '?')}) while this run used it (its claim was not renewed "
                             f"for {LEASE_SECONDS:.0f}s: a network cut?). This run stops and copies nothing "
                             f"more; what it wrote since its last copy stays in {self.local}")
                logger.error("synthpipe: %s", self.lost)
                return
            self._write()

    def _write(self) -> None:
        claim = {"run": self.run, "host": socket.gethostname(), "pid": os.getpid(), "copy_id": self._copy_id(),
                 "renewed": time.time()}
        self._put(self.path, json.dumps(claim).encode())

    def _read(self) -> tuple[dict[str, Any], bytes] | None:
        try:
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            held = json.loads(raw)
        except ValueError:  # torn: a claim nobody can prove
            return None
        return (held, raw) if isinstance(held, dict) else None

    def _copy_id(self) -> str:
        path = self.local / COPY_ID
        try:
            return path.read_text().strip()
        except OSError:
            self.local.mkdir(parents=True, exist_ok=True)
            path.write_text(uuid.uuid4().hex)
            return path.read_text().strip()
