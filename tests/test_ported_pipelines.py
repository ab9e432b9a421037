"""distilabel 1.5.3 pipelines, as its docs write them with the import prefix changed, run from a
shell (``python tests/ported/<script>.py``) against the local test server: each run's result
columns and row counts, and, for features synthpipe does not have yet, the message it gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PORTED = Path(__file__).parent / "ported"
SRC = Path(__file__).resolve().parents[1] / "src"


def _run(script: str, cache: Path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "SYNTHPIPE_CACHE_DIR": str(cache), **env_vars}
    return subprocess.run([sys.executable, f"{script}.py"], cwd=PORTED, env=env, capture_output=True, text=True,
                          timeout=110)


def _result(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


RUNS = {
    "quickstart": (["generation", "instruction", "model_name", "synthpipe_metadata"], 10),
    "ultrafeedback": (["generation_models", "generations", "instruction", "ratings", "rationales",
                       "synthpipe_metadata", "ultrafeedback_model"], 6),
}



@pytest.mark.timeout(150)
@pytest.mark.parametrize("script", sorted(RUNS))
def test_ported_pipeline_runs(script, tmp_path):
    columns, rows = RUNS[script]
    result = _result(_run(script, tmp_path))
    assert result["failed_rows"] == 0
    assert result["leaves"] == {"default": {"columns": columns, "rows": rows}}


@pytest.mark.timeout(150)
def test_the_hub_quickstart_offline_names_the_step_and_the_dataset(tmp_path):
    """With no network (HF_HUB_OFFLINE=1, nothing cached) the Hub loader fails before the run
    starts, naming the step and the dataset and saying what works offline."""
    proc = _run("quickstart_hub", tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    repo = "distilabel-internal-testing/instruction-dataset-mini"
    assert f"step 'load_dataset': cannot reach the Hub for '{repo}'" in last
    assert "HF_HUB_OFFLINE=1" in last and "running pipeline" not in proc.stderr
