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
    # the killed run's claim is fresh: the other machine watches it, sees it is not renewed, takes over
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, timeout=120)
    assert "RUN FINISHED" in done.stdout, done.stderr
    assert "waiting up to 8s to see whether it is still running" in done.stderr, done.stderr
    assert "taking over the store" in done.stderr and time.monotonic() - killed_at >= LEASE
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


@pytest.fixture
def short_lease(monkeypatch):
    """Claims renewed every 0.25 s and lapsing after 1 s, so these tests wait little."""
    from synthpipe.store import claim

    monkeypatch.setattr(claim, "LEASE_SECONDS", 1.0)
    return claim


def _lease(url: str):
    import json

    import fsspec

    fs = fsspec.filesystem("memory")
    path = url.split("://", 1)[1] + "/claimed-abc123/lease.json"
    return fs, path, (lambda: json.loads(fs.cat_file(path)) if fs.exists(path) else None)


def _foreign_claim(fs, path: str, renewed: float, copy_id: str = "another-copy") -> None:
    import json

    fs.pipe_file(path, json.dumps({"run": "r-other", "host": "other-vm", "pid": 7, "copy_id": copy_id,
                                   "renewed": renewed}).encode())


def test_a_store_claimed_by_a_live_run_elsewhere_is_refused_until_that_run_ends(tmp_path, monkeypatch, short_lease):
    url = f"memory://claims-{os.getpid()}/a"
    first = _store(tmp_path, "machine1", url, monkeypatch)
    first.lock()  # its claim is renewed every 0.25 s from now on
    second = _store(tmp_path, "machine2", url, monkeypatch)
    started = time.monotonic()
    with pytest.raises(short_lease.StoreInUse, match=rf"in use by a run on .* \(pid {os.getpid()}\).* still renewing"):
        second.lock()
    assert time.monotonic() - started < 1.0  # it saw the renewal; it did not wait for the whole lease
    with pytest.raises(short_lease.StoreInUse):  # and the refused run did not keep its own local lock
        second.lock()
    first.close()  # everything is up: the claim is given back
    second.lock()
    second.close()
    assert _lease(url)[2]() is None


@pytest.mark.parametrize("renewed_ago", [3600.0, 0.0, -31.0], ids=["an-hour-ago", "just-now", "clock-31s-ahead"])
def test_a_claim_that_is_not_renewed_is_taken_over(tmp_path, monkeypatch, caplog, short_lease, renewed_ago):
    """A killed run's claim, whatever its writer's clock said: this machine watches it for a lease."""
    url = f"memory://claims-{os.getpid()}/b-{renewed_ago:g}"
    fs, path, lease = _lease(url)
    _foreign_claim(fs, path, time.time() - renewed_ago)
    store = _store(tmp_path, "machine1", url, monkeypatch)
    started = time.monotonic()
    store.lock()
    waited = time.monotonic() - started
    assert "taking over the store" in caplog.text and "other-vm" in caplog.text
    assert (waited < 0.5) if renewed_ago > short_lease.STALE_SECONDS else (waited >= 1.0)
    assert lease()["pid"] == os.getpid()
    store.close()
    assert lease() is None


def test_a_claim_left_by_a_killed_run_of_this_very_copy_is_taken_over_at_once(tmp_path, monkeypatch, short_lease):
    url = f"memory://claims-{os.getpid()}/c"
    fs, path, lease = _lease(url)
    store = _store(tmp_path, "machine1", url, monkeypatch)
    store.lock()
    copy_id = lease()["copy_id"]
    store.close()
    _foreign_claim(fs, path, time.time(), copy_id=copy_id)  # its lock file is free: that run is over
    store = _store(tmp_path, "machine1", url, monkeypatch)
    started = time.monotonic()
    store.lock()
    assert time.monotonic() - started < 0.5 and lease()["pid"] == os.getpid()
    store.close()


def test_a_run_whose_claim_was_taken_over_stops_and_copies_nothing_more(tmp_path, monkeypatch, short_lease):
    url = f"memory://claims-{os.getpid()}/d"
    fs, path, lease = _lease(url)
    store = _store(tmp_path, "machine1", url, monkeypatch)
    store.lock()
    _foreign_claim(fs, path, time.time())  # another machine took over (this one's claim lapsed)
    deadline = time.monotonic() + 5
    while store.mirror.lease.lost is None and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(short_lease.StoreInUse, match="was taken over by a run on other-vm"):
        store.sync()
    store.close()
    assert lease()["run"] == "r-other"  # its claim is left alone


def test_a_store_that_cannot_be_read_gives_back_its_claim(tmp_path, monkeypatch, short_lease):
    from synthpipe.errors import SynthpipeError

    url = f"memory://claims-{os.getpid()}/e"
    store = _store(tmp_path, "machine1", url, monkeypatch)

    def unreachable(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(store.mirror, "pull", unreachable)
    with pytest.raises(SynthpipeError, match="could not read the store"):
        store.lock()
    assert _lease(url)[2]() is None  # another machine need not wait for it
