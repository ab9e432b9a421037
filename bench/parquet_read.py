"""Parquet read: ``LoadDataFromFileSystem`` on files of growing size, rows/s and peak memory.

A user's ``LoadDataFromFileSystem(data_files="big.parquet") >> step`` on Parquet files of
``--rows`` rows each (an id, a ~100-character text, a float; written by pyarrow with its
default row groups of 1Mi rows, ``--row-group``), each size in a fresh process, ``pipeline.run()`` timed whole. Beside
it, the peak PSS of the process tree while the rows flow (sampled every 20 ms by a process
of its own, as ``bench/scale.py`` does) and its anonymous part, up to the moment the last
step saw the last row (the result build after that maps the stored rows, whatever the
loader). A streaming loader keeps the peak flat as the file grows: memory is bounded by the
batches in flight, not by the file.

    .venv/bin/python bench/parquet_read.py [--rows 100000 1000000]

Results go to stdout (a table) and to ``bench/results/parquet_read.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from synthpipe.steps import Step, StepInput

BENCH = Path(__file__).resolve().parent
RESULTS_DIR = BENCH / "results"
WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly box jolly kings".split()


class CountRows(Step):
    """The last step: checks the ids arrive in order and writes the wall time at which it saw
    row ``total - 1`` to ``mark``."""

    total: int = 0
    mark: str = ""

    @property
    def inputs(self) -> list[str]:
        return ["id", "text"]

    @property
    def outputs(self) -> list[str]:
        return ["length"]

    def process(self, inputs: StepInput):
        for row in inputs:
            row["length"] = len(row["text"])
        if self.mark and inputs and inputs[-1]["id"] == self.total - 1:
            Path(self.mark).write_text(repr(time.time()))
        yield inputs


def write_file(path: Path, rows: int, row_group: int) -> None:
    """``rows`` rows in row groups of ``row_group`` rows (pyarrow's default: 1Mi)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(20)) for i in range(len(WORDS))]
    schema = pa.schema([("id", pa.int64()), ("text", pa.string()), ("score", pa.float64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, row_group):
            ids = list(range(start, min(start + row_group, rows)))
            writer.write_table(pa.table({"id": ids, "text": [f"{i} {texts[i % len(texts)]}" for i in ids],
                                         "score": [i / 7 for i in ids]}, schema=schema), row_group_size=row_group)


def child(path: str, rows: int, batch: int, marks: Path) -> dict[str, Any]:
    from synthpipe.pipeline import Pipeline
    from synthpipe.steps import LoadDataFromFileSystem

    with tempfile.TemporaryDirectory(prefix="synthpipe-parquet-") as cache:
        with Pipeline(name="bench-parquet", cache_dir=cache) as pipeline:
            LoadDataFromFileSystem(data_files=path, batch_size=batch) >> CountRows(
                input_batch_size=batch, total=rows, mark=str(marks / "last"))
        os.environ["SYNTHPIPE_PROGRESS"] = "0"
        start = time.time()
        ds = pipeline.run(use_cache=False)["default"]["train"]
        end = time.time()
        if ds.num_rows != rows or ds[rows - 1]["id"] != rows - 1:
            raise AssertionError(f"wrong result: {ds.num_rows} rows")
        return {"start": start, "end": end}


def measure(path: Path, rows: int, batch: int) -> dict[str, Any]:
    from scale import run_sampled

    with tempfile.TemporaryDirectory(prefix="synthpipe-marks-") as marks_dir:
        marks = Path(marks_dir)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")])}
        command = [sys.executable, str(BENCH / "parquet_read.py"), "--child", str(path), str(rows), str(batch),
                   str(marks)]
        returncode, out, err, lines = run_sampled(command, env, marks)
        if returncode:
            raise RuntimeError(f"the run on {rows:,} rows failed:\n{err[-3000:]}")
        times = json.loads(out.strip().splitlines()[-1])
        last = float((marks / "last").read_text())
        run = [(float(p), float(a)) for t, p, a, *_ in lines if float(t) <= last]
        wall = times["end"] - times["start"]
        return {"rows": rows, "batch": batch, "file_mb": path.stat().st_size / 2**20, "wall_s": wall,
                "rows_per_s": rows / wall, "pss_run_mb": max((p for p, _ in run), default=0) / 1024,
                "anon_run_mb": max((a for _, a in run), default=0) / 1024}


def format_table(results: list[dict[str, Any]]) -> str:
    lines = ["| rows | file, MB | rows/s | wall, s | peak PSS while reading, MB | of it anonymous, MB |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']:,} | {r['file_mb']:.1f} | {r['rows_per_s']:,.0f} | {r['wall_s']:.2f} | "
                     f"{r['pss_run_mb']:.0f} | {r['anon_run_mb']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--row-group", type=int, default=1 << 20)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "parquet_read.json")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="synthpipe-parquet-files-") as folder:
        for rows in args.rows:
            path = Path(folder) / f"rows-{rows}.parquet"
            write_file(path, rows, args.row_group)
            results.append({**measure(path, rows, args.batch), "row_group": args.row_group})
            path.unlink()
            print(format_table(results[-1:]).splitlines()[-1], flush=True)
    print(format_table(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "synthpipe parquet read", "cpus": os.cpu_count(), "results": results}
    args.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        import parquet_read  # the step by its module's name, as the workers import it

        print(json.dumps(parquet_read.child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))))
        sys.exit(0)
    sys.exit(main())
