from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

# No model hub is reachable: every model a test uses is built locally. Set before anything
# imports huggingface_hub (it reads these once), and inherited by every worker process.
for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                     "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)


def python_path(*first: object) -> str:
    """PYTHONPATH for a child program: ``first``, then whatever this run already has."""
    parts = [str(p) for p in first] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(parts)


def run_bench(script: str, *args: str, timeout: float = 280) -> subprocess.CompletedProcess:
    """``bench/<script>`` run as a user runs it, with this checkout's ``src`` first on the path."""
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, str(root / "bench" / script), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": python_path(root / "src")}, timeout=timeout)


def _processes() -> list[tuple[int, int, str, bytes]]:
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
        found.append((int(entry.name), int(fields[1]), fields[0], cmdline))
    return found


def child_pids(parent: int | None = None) -> list[int]:
    """Live (not zombie) worker processes of this process.

    multiprocessing's resource tracker and fork server are helpers, not workers; the
    fork server's own children (the workers under forkserver) are counted.
    """
    parent = parent or os.getpid()
    procs = _processes()
    helpers = {pid for pid, ppid, _, cmd in procs
               if ppid == parent and (b"resource_tracker" in cmd or b"forkserver" in cmd)}
    return [pid for pid, ppid, state, cmd in procs
            if state != "Z" and pid not in helpers and (ppid == parent or ppid in helpers)]


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


@pytest.fixture(scope="module")
def _llm_test_server():
    from llm_server import LLMTestServer

    with LLMTestServer(latency=0.0) as srv:
        yield srv


@pytest.fixture
def server(_llm_test_server):
    """The OpenAI/Anthropic-compatible test server (tests/llm_server.py), counters reset and
    faults off; one per test module."""
    _llm_test_server.configure(latency=0.0, fail_first=0, fail_rate=0.0, retry_after=0.05, cost_per_token=None,
                               retry_after_style="seconds")
    _llm_test_server.reset()
    return _llm_test_server


# -- tiny models, built once per test session (random weights, no hub) ----------------------


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_dir) -> Path:
    """A random Llama with its tokenizer and chat template, for transformers."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from synthpipe.testing.tiny_models import build_tiny_llama

    return build_tiny_llama(tiny_dir / "llama")


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tiny_dir) -> Path:
    """A random one-output sequence classifier (a reward model's shape) with the chat template."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from synthpipe.testing.tiny_models import build_tiny_reward_model

    return build_tiny_reward_model(tiny_dir / "reward")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_dir) -> Path:
    """The same model as a GGUF file, for llama.cpp."""
    pytest.importorskip("gguf")
    pytest.importorskip("tokenizers")
    from synthpipe.testing.tiny_models import build_tiny_gguf

    return build_tiny_gguf(tiny_dir / "tiny-llama.gguf")
