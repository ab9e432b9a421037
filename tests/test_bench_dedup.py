"""bench/dedup.py runs end to end (tiny) and writes the report the README quotes."""

from __future__ import annotations

import json

import pytest

from conftest import run_bench

pytest.importorskip("datasketch")
pytestmark = pytest.mark.timeout(300)


def test_dedup_bench_tiny(tmp_path):
    out = tmp_path / "dedup.json"
    proc = run_bench("dedup.py", "--rows", "2000", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| pipeline, replicas=1 |" in proc.stdout
    report = json.loads(out.read_text())
    assert report["rows"] == 2000 and report["true_duplicates"] > 100
    runs = {r["run"]: r for r in report["results"]}
    assert set(runs) == {"datasketch loop", "pipeline, replicas=1", "pipeline, 2 upstream replicas"}
    loop = runs["datasketch loop"]
    assert loop["precision"] == 1.0 and loop["recall"] > 0.9
    for r in runs.values():
        assert r["same_marks_as_loop"] is True
        assert (r["recall"], r["precision"], r["marked"]) == (loop["recall"], loop["precision"], loop["marked"])
        assert r["rows_per_s"] > 0
    assert "global step" in report["minhash_dedup_replicas_2"] and "one replica" in report["minhash_dedup_replicas_2"]
