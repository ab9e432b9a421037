"""Stores on an fsspec location (an object store): the run works on a local copy and mirrors
it in parts; another machine (another local cache) resumes from what was mirrored."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import python_path
from steps_lib import Counting, CountingGenerator
from synthpipe.pipeline import Pipeline

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_leftover_workers")]

TESTS_DIR = Path(__file__).parent


def _calls(path: Path) -> collections.Counter:
    return collections.Counter(path.read_text().splitlines()) if path.exists() else collections.Counter()


def _chain(calls: Path, cache_dir: str) -> Pipeline:
    with Pipeline(name="remote", cache_dir=cache_dir) as pipeline:
        gen = CountingGenerator(name="gen", total=60, batch_size=10, calls=str(calls))
        a = Counting(name="a", calls=str(calls), input_batch_size=4)
        b = Counting(name="b", calls=str(calls), input_batch_size=6)
        gen >> a >> b
    return pipeline


def test_a_store_in_memory_fs_serves_another_machine(tmp_path, monkeypatch):
    pytest.importorskip("fsspec")
    import fsspec

    calls = tmp_path / "calls"
    url = f"memory://bucket-{os.getpid()}/synthpipe"
    monkeypatch.setenv("SYNTHPIPE_LOCAL_CACHE_DIR", str(tmp_path / "machine1"))
    first = _chain(calls, url).run()["default"]["train"].to_list()
    fs = fsspec.filesystem("memory")
    names = fs.find(url.split("://", 1)[1])
    assert any("journal.jsonl.parts/" in n for n in names) and any(".seg.parts/" in n for n in names)
    assert any("/runs/" in n and n.endswith(".parquet") for n in names)
    # another machine: an empty local cache; the finished result comes from the remote store
    monkeypatch.setenv("SYNTHPIPE_LOCAL_CACHE_DIR", str(tmp_path / "machine2"))
    before = _calls(calls)
    again = _chain(calls, url).run()["default"]["train"].to_list()
    assert again == first and _calls(calls) == before


PROGRAM = """
import sys
sys.path.insert(0, {tests!r})
from resume_pipeline import build
pipeline = build({calls!r}, delay=0.04)
pipeline.cache_dir = {url!r}
if __name__ == "__main__":
    pipeline.run()
    print("RUN FINISHED", flush=True)
"""


LEASE = 8.0  # seconds a killed run's claim on the remote store holds, in these tests


def test_a_run_killed_on_one_machine_resumes_on_another_from_the_remote_store(tmp_path):
    remote = tmp_path / "bucket"
    url = f"file://{remote}"
    calls = tmp_path / "calls"
    program = PROGRAM.format(tests=str(TESTS_DIR), calls=str(calls), url=url)
    env = {**os.environ, "PYTHONPATH": python_path(TESTS_DIR), "SYNTHPIPE_PROGRESS": "0",
           "SYNTHPIPE_LOCAL_CACHE_DIR": str(tmp_path / "machine1"), "SYNTHPIPE_LEASE_SECONDS": str(LEASE)}
    proc = subprocess.Popen([sys.executable, "-c", program], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        parts = list(remote.rglob("*.seg.parts/*")) if remote.exists() else []
        if len(parts) >= 3:  # pushes went up (every 2 s): kill it mid-run
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    killed_at = time.monotonic()
    assert "RUN FINISHED" not in out, "the run finished before it was killed; adjust the timing"
    env["SYNTHPIPE_LOCAL_CACHE_DIR"] = str(tmp_path / "machine2")
    # at once: the killed run's claim is still fresh, and it could as well be running
    refused = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "is in use by a run on" in refused.stderr, refused.stderr
    assert time.monotonic() - killed_at < LEASE, "too slow to see the claim; raise LEASE"
    time.sleep(max(0.0, LEASE - (time.monotonic() - killed_at)))  # once it lapses, the other machine goes on
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert "RUN FINISHED" in done.stdout, done.stderr
    assert "finished by earlier runs are reused" in done.stderr, done.stderr  # it resumed from the mirror
    # and its result equals that of one uninterrupted run
    env["SYNTHPIPE_LOCAL_CACHE_DIR"] = str(tmp_path / "machine3")
    reference_program = PROGRAM.format(tests=str(TESTS_DIR), calls=str(tmp_path / "ref-calls"),
                                       url=f"file://{tmp_path / 'other-bucket'}")
    ref = subprocess.run([sys.executable, "-c", reference_program + _DUMP], env=env, capture_output=True, text=True,
                         timeout=120)
    resumed = subprocess.run([sys.executable, "-c", program + _DUMP], env=env, capture_output=True, text=True,
                             timeout=120)
    assert ref.stdout.split("ROWS", 1)[1] == resumed.stdout.split("ROWS", 1)[1]


_DUMP = """
    print("ROWS", pipeline.run()["default"]["train"].to_list(), flush=True)
"""


def test_an_unreachable_remote_is_reported_and_never_leaves_the_store_locked(tmp_path, monkeypatch):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    from synthpipe.errors import SynthpipeError

    class Flaky(MemoryFileSystem):
        protocol = "flaky"
        down = True

        def find(self, *args, **kwargs):
            if Flaky.down:
                raise ConnectionError("network unreachable")
            return super().find(*args, **kwargs)

    fsspec.register_implementation("flaky", Flaky, clobber=True)
    monkeypatch.setenv("SYNTHPIPE_LOCAL_CACHE_DIR", str(tmp_path / "local"))
    url = f"flaky://bucket-{os.getpid()}/synthpipe"
    with pytest.raises(SynthpipeError, match=r"could not read the store at flaky://.*ConnectionError"):
        _chain(tmp_path / "calls", url).run()
    Flaky.down = False
    assert _chain(tmp_path / "calls", url).run()["default"]["train"].num_rows == 60  # not "already running"


# -- one machine at a time -------------------------------------------------------------------


def _store(tmp_path: Path, machine: str, url: str, monkeypatch):
    from synthpipe.store.pipeline_store import PipelineStore

    monkeypatch.setenv("SYNTHPIPE_LOCAL_CACHE_DIR", str(tmp_path / machine))
    return PipelineStore.for_pipeline(url, "claimed", "abc123")


def test_a_store_claimed_by_a_run_on_another_machine_is_refused_until_that_run_ends(tmp_path, monkeypatch):
    from synthpipe.store.remote import StoreInUse

    url = f"memory://claims-{os.getpid()}/a"
    first = _store(tmp_path, "machine1", url, monkeypatch)
    first.lock()
    second = _store(tmp_path, "machine2", url, monkeypatch)
    with pytest.raises(StoreInUse, match=rf"in use by a run on .* \(pid {os.getpid()}\).* renewed its claim"):
        second.lock()
    with pytest.raises(StoreInUse):  # and the refused run did not keep its own local lock
        second.lock()
    first.close()  # everything is up: the claim is given back
    second.lock()
    second.close()


def test_a_lapsed_claim_or_one_left_by_a_killed_run_of_this_copy_is_taken_over(tmp_path, monkeypatch, caplog):
    import json

    import fsspec

    url = f"memory://claims-{os.getpid()}/b"
    fs = fsspec.filesystem("memory")
    lease = f"/claims-{os.getpid()}/b/claimed-abc123/lease.json"
    fs.pipe_file(lease, json.dumps({"host": "other-vm", "pid": 7, "copy": "/x", "run": "r1",
                                    "renewed": time.time() - 3600}).encode())
    store = _store(tmp_path, "machine1", url, monkeypatch)
    store.lock()  # not heard from for an hour: a killed run
    assert "taking over the store" in caplog.text and "other-vm" in caplog.text
    store.close()
    # a claim renewed a moment ago, by a run of this same copy on this machine (killed: its lock is free)
    import socket

    fs.pipe_file(lease, json.dumps({"host": socket.gethostname(), "pid": 7, "copy": str(store.root),
                                    "run": "r2", "renewed": time.time()}).encode())
    store = _store(tmp_path, "machine1", url, monkeypatch)
    store.lock()
    assert json.loads(fs.cat_file(lease))["pid"] == os.getpid()  # renewed as this run's
    store.close()
    assert not fs.exists(lease)
