"""The live display under a real terminal (a pty), Ctrl+C typed into it, and the plain summary
lines when stderr is not a terminal."""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from conftest import python_path

pytestmark = [pytest.mark.timeout(180)]
SRC = Path(__file__).resolve().parents[1] / "src"

SLOW = '''
import time
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, StepInput, step

@step(inputs=["n"], outputs=["m"])
def Slow(inputs: StepInput):
    time.sleep(0.15)
    for row in inputs:
        row["m"] = row["n"] * 2
    yield inputs

with Pipeline(name="slow", stop_grace_seconds=20) as pipeline:
    LoadDataFromDicts(data=[{"n": i} for i in range(ROWS)], batch_size=5) >> Slow(name="slow_step", input_batch_size=5)
'''


def _env(tmp_path: Path, **more: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=python_path(SRC), SYNTHPIPE_CACHE_DIR=str(tmp_path / "cache"), **more)
    env.pop("SYNTHPIPE_PROGRESS", None)
    return env


def _read_until(fd: int, pattern: str, timeout: float, seen: bytearray) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return False
            if not chunk:
                return False
            seen.extend(chunk)
            if re.search(pattern, seen.decode("utf-8", "replace")):
                return True
    return False


def test_live_display_in_a_terminal_and_ctrl_c(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW.replace("ROWS", "400"))
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, b"\x28\x00\x96\x00\x00\x00\x00\x00")  # 40 rows, 150 columns

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "synthpipe", "run", str(script)], stdin=slave, stdout=slave,
                            stderr=slave, cwd=tmp_path, env=_env(tmp_path, TERM="xterm-256color"),
                            preexec_fn=controlling_terminal)
    os.close(slave)
    seen = bytearray()
    try:
        assert _read_until(master, r"rows done", 60, seen), seen.decode(errors="replace")[-2000:]
        assert _read_until(master, r"slow_step\s*│\s*[1-9][\d,]* / ~400", 60, seen), \
            seen.decode(errors="replace")[-2000:]
        os.write(master, b"\x03")  # Ctrl+C, as typed: the terminal signals the whole foreground group
        _read_until(master, r"resume", 60, seen)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:  # keep reading: a full pty blocks its writer
            _read_until(master, r"$^", 0.5, seen)
        rc = proc.wait(timeout=5)
        _read_until(master, r"$^", 1, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = seen.decode("utf-8", "replace")
    assert rc == 130, text[-3000:]
    assert "SIGINT received" in text and "Run the same pipeline again to resume" in text
    # the resumed run finishes and reuses what the interrupted one kept
    out = subprocess.run([sys.executable, "-m", "synthpipe", "run", str(script)], capture_output=True, text=True,
                         cwd=tmp_path, env=_env(tmp_path, SYNTHPIPE_PROGRESS="0"), timeout=120)
    assert out.returncode == 0, out.stderr
    assert "default: 400 rows" in out.stdout and "are reused" in out.stderr


def test_plain_summary_lines_when_not_a_terminal(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW.replace("ROWS", "100"))
    out = subprocess.run([sys.executable, "-m", "synthpipe", "run", str(script)], capture_output=True, text=True,
                         cwd=tmp_path, env=_env(tmp_path, SYNTHPIPE_PROGRESS_EVERY="0.5"), timeout=120)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if re.match(r"synthpipe: \d+s: ", line)]
    assert len(lines) >= 2, out.stderr
    assert len(lines) < 20  # 20 batches: never a line per batch... at 0.15 s a batch, about 6 lines
    assert re.search(r"slow_step \d+/100", lines[-1])
    assert "\x1b[" not in out.stderr  # no terminal control codes in a log


def test_sigterm_exits_143(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW.replace("ROWS", "400"))
    proc = subprocess.Popen([sys.executable, "-m", "synthpipe", "run", str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env=_env(tmp_path, SYNTHPIPE_PROGRESS="0"))
    deadline = time.monotonic() + 60
    batches = tmp_path / "cache"
    while time.monotonic() < deadline and not list(batches.glob("*/runs/*/batches.jsonl")):
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM received" in err


def test_live_display_shows_llm_requests_tokens_and_cost(tmp_path, server):
    from synthpipe.models import OpenAILLM
    from synthpipe.pipeline import Pipeline
    from synthpipe.steps import LoadDataFromDicts
    from synthpipe.steps.tasks import TextGeneration

    server.configure(latency=0.1)
    with Pipeline(name="live-llm", prices={"test-model": {"input": 1.0, "output": 2.0}}) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": f"q {i}"} for i in range(60)], batch_size=4)
        llm = OpenAILLM(model="test-model", base_url=server.base_url, max_concurrency=2)
        load >> TextGeneration(name="gen", llm=llm, input_batch_size=4)
    path = pipeline.save(tmp_path / "live.yaml")
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, b"\x28\x00\xb4\x00\x00\x00\x00\x00")  # 40 rows, 180 columns
    proc = subprocess.Popen([sys.executable, "-m", "synthpipe", "run", str(path)], stdin=slave, stdout=slave,
                            stderr=slave, cwd=tmp_path, env=_env(tmp_path, TERM="xterm-256color"),
                            start_new_session=True)
    os.close(slave)
    seen = bytearray()
    try:
        assert _read_until(master, r"LLM requests", 60, seen), seen.decode(errors="replace")[-2000:]
        assert _read_until(master, r"cost so far", 30, seen), seen.decode(errors="replace")[-2000:]
        assert _read_until(master, r"test-model\s*│\s*\d+\s*│\s*[1-9]", 30, seen)  # in flight, then sent
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:  # keep reading: a full pty blocks its writer
            _read_until(master, r"$^", 0.5, seen)
        rc = proc.wait(timeout=5)
        _read_until(master, r"$^", 1, seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert rc == 0, seen.decode(errors="replace")[-3000:]
    assert "default: 60 rows" in seen.decode(errors="replace")
