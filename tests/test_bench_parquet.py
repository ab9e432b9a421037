"""bench/parquet_read.py runs end to end (tiny) and writes its report."""

from __future__ import annotations

import json

import pytest

from conftest import run_bench

pytest.importorskip("pyarrow")
pytestmark = pytest.mark.timeout(300)


def test_parquet_bench_tiny(tmp_path):
    out = tmp_path / "parquet_read.json"
    proc = run_bench("parquet_read.py", "--rows", "2000", "5000", "--row-group", "1500", "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| 5,000 |" in proc.stdout
    report = json.loads(out.read_text())
    assert [r["rows"] for r in report["results"]] == [2000, 5000]
    for r in report["results"]:
        assert r["row_group"] == 1500 and r["rows_per_s"] > 0 and r["file_mb"] > 0
        assert 0 < r["anon_run_mb"] <= r["pss_run_mb"]
