"""The Self-Instruct recipe run from a shell as a user would: requests written per seed, scored
for complexity, one row per request."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import python_path


@pytest.mark.timeout(240)
def test_self_instruct_recipe_runs_offline_from_a_shell(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": python_path(root / "src"), "SYNTHPIPE_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(root / "examples" / "self_instruct.py"), "--num-instructions", "2"],
                          capture_output=True, text=True, timeout=200, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 instructions from 4 seeds; 0 failed row(s)" in done.stdout
    scored = re.findall(r"^\[(\d(?:\.\d)?)\] (.+)$", done.stdout, re.M)
    assert len(scored) == 8
    # the scripted scorer gives the longer request of each pair the higher score, and ExpandColumns keeps them paired
    plans = [float(s) for s, text in scored if text.startswith("Make me a week-by-week plan")]
    tips = [float(s) for s, text in scored if text.startswith("What is one tip")]
    assert len(plans) == len(tips) == 4 and min(plans) > max(tips)


@pytest.mark.timeout(300)
def test_self_instruct_recipe_writes_with_the_tiny_local_model(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": python_path(root / "src"), "SYNTHPIPE_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(root / "examples" / "self_instruct.py"), "--local-model",
                           "--num-instructions", "2"],
                          capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny random-weight Llama run by transformers" in done.stdout
    counted = re.search(r"^(\d+) instructions from 4 seeds; (\d+) failed row\(s\)$", done.stdout, re.M)
    assert counted, done.stdout[-2000:]
    instructions, failed = map(int, counted.groups())
    assert instructions >= 4 - failed  # every seed that did not fail gave at least one request
    assert len(re.findall(r"^\[\d\.\d\] ", done.stdout, re.M)) == instructions
