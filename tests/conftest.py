from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


def child_pids(parent: int | None = None) -> list[int]:
    """Live (not zombie) children of this process, except multiprocessing's resource tracker."""
    parent = parent or os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == parent and state != "Z" and b"resource_tracker" not in cmdline:
            found.append(int(entry.name))
    return found


def wait_no_children(timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = child_pids()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _isolated_run_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SYNTHPIPE_PROGRESS", "0")
    yield


@pytest.fixture
def no_leftover_workers():
    """Fails the test if any worker process outlives it."""
    before = set(child_pids())
    yield
    left = set(wait_no_children(timeout=3.0)) - before
    assert not left, f"worker processes left behind: {sorted(left)}"
