"""Throughput of the synthpipe engine with trivial steps, against a plain Python loop.

The pipeline is ``LoadDataFromDicts >> AddLength >> AddUpper``: three steps, so three
worker processes plus the coordinator. The steps do almost nothing, so what is measured is
the engine itself: process start-up, pickling batches over pipes, scheduling, writing the
leaf's Parquet files and building the returned ``Distiset``.

For each configuration (rows x batch size; the same size is used for the generator's
``batch_size`` and the steps' ``input_batch_size``) it reports the wall time of the whole
``pipeline.run()``, the engine's rows/s, the rows/s of a single-process loop doing the same
work on the same rows (copying each row as the generator does, then both transforms), their
ratio and the engine's overhead per row. The fixed start-up cost is measured separately, with
a 10-row run. Each configuration runs ``--repeat`` times and the best time is kept. Every
engine run is checked (row count, order, sample values) so a broken run cannot pass for a
fast one.

    .venv/bin/python bench/engine.py            # full: 10k and 100k rows, batch 50 and 1000
    .venv/bin/python bench/engine.py --quick    # 10k rows only, one repeat
    .venv/bin/python bench/engine.py --profile  # also cProfile the coordinator on one config

Results go to stdout (a table) and to ``bench/results/engine.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, StepInput, step

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STARTUP_ROWS = 10


# -- the steps (module level: workers are spawned and import this module) -----------------------


@step(inputs=["instruction"], outputs=["length"])
def AddLength(inputs: StepInput):
    for row in inputs:
        row["length"] = len(row["instruction"])
    yield inputs


@step(inputs=["instruction"], outputs=["upper"])
def AddUpper(inputs: StepInput):
    for row in inputs:
        row["upper"] = row["instruction"].upper()
    yield inputs


# -- data and the reference loop ----------------------------------------------------------------


def make_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "instruction": f"write a short poem about topic number {i} in the style of a sonnet"}
            for i in range(n)]


def plain_loop(rows: list[dict[str, Any]], batch_size: int) -> list[dict[str, Any]]:
    """The pipeline's work in one process: copy each batch's rows, add both columns."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch_size):
        batch = [dict(row) for row in rows[start:start + batch_size]]
        for row in batch:
            row["length"] = len(row["instruction"])
        for row in batch:
            row["upper"] = row["instruction"].upper()
        out.extend(batch)
    return out


# -- one engine run -----------------------------------------------------------------------------


def build_pipeline(rows: list[dict[str, Any]], batch_size: int, cache_dir: str) -> Pipeline:
    with Pipeline(name="bench-engine", cache_dir=cache_dir) as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=batch_size)
        add_length = AddLength(input_batch_size=batch_size)
        add_upper = AddUpper(input_batch_size=batch_size)
        load >> add_length >> add_upper
    return pipeline


def verify(distiset: Any, expected: list[dict[str, Any]]) -> None:
    """Fail loudly unless the run returned every row, in order, with the right values."""
    n = len(expected)
    if list(distiset) != ["default"]:
        raise AssertionError(f"expected one leaf 'default', got {list(distiset)}")
    ds = distiset["default"]["train"]
    if ds.num_rows != n:
        raise AssertionError(f"expected {n} rows, the engine returned {ds.num_rows}")
    columns = {"id", "instruction", "length", "upper"}
    if set(ds.column_names) != columns:
        raise AssertionError(f"expected columns {sorted(columns)}, got {ds.column_names}")
    ids = ds.data.column("id").to_pylist()
    if ids != list(range(n)):
        first_bad = next(i for i, (a, b) in enumerate(zip(ids, range(n), strict=True)) if a != b)
        raise AssertionError(f"rows out of order or missing: position {first_bad} holds id {ids[first_bad]}")
    for k in sorted({0, n // 3, n // 2, n - 1}):
        got = ds[k]
        want = expected[k]
        if got != want:
            raise AssertionError(f"row {k}: expected {want}, got {got}")


def engine_run(rows: list[dict[str, Any]], batch_size: int, expected: list[dict[str, Any]],
               profile: cProfile.Profile | None = None) -> dict[str, float]:
    """Define, run and check one pipeline; return its timings in seconds."""
    with tempfile.TemporaryDirectory(prefix="synthpipe-bench-") as cache_dir:
        t0 = time.perf_counter()
        pipeline = build_pipeline(rows, batch_size, cache_dir)
        t1 = time.perf_counter()
        if profile is not None:
            profile.enable()
        distiset = pipeline.run()
        if profile is not None:
            profile.disable()
        t2 = time.perf_counter()
        verify(distiset, expected)
        del distiset
    return {"define_s": t1 - t0, "run_s": t2 - t1}


def loop_time(rows: list[dict[str, Any]], batch_size: int, tries: int = 3) -> tuple[float, list[dict[str, Any]]]:
    """Best of ``tries`` runs of the plain loop (it is cheap, and noise here skews the ratio)."""
    best = float("inf")
    out: list[dict[str, Any]] = []
    for _ in range(tries):
        out = []
        gc.collect()
        t0 = time.perf_counter()
        out = plain_loop(rows, batch_size)
        best = min(best, time.perf_counter() - t0)
    return best, out


# -- the benchmark ------------------------------------------------------------------------------


def measure_startup(repeat: int) -> dict[str, Any]:
    rows = make_rows(STARTUP_ROWS)
    expected = plain_loop(rows, STARTUP_ROWS)
    times = [engine_run(rows, STARTUP_ROWS, expected)["run_s"] for _ in range(max(repeat, 2))]
    # The first run in this process also imports what building the result needs (datasets, pyarrow).
    return {"rows": STARTUP_ROWS, "first_run_s": times[0], "best_s": min(times[1:]), "runs_s": times}


def measure_config(n: int, batch_size: int, repeat: int) -> dict[str, Any]:
    rows = make_rows(n)
    engine: list[dict[str, float]] = []
    loops: list[float] = []
    for _ in range(repeat):
        t_loop, expected = loop_time(rows, batch_size)
        loops.append(t_loop)
        gc.collect()
        engine.append(engine_run(rows, batch_size, expected))
        del expected
    best = min(engine, key=lambda r: r["run_s"])
    engine_s, loop_s = best["run_s"], min(loops)
    return {
        "rows": n,
        "batch_size": batch_size,
        "repeat": repeat,
        "engine_s": engine_s,
        "engine_runs_s": [r["run_s"] for r in engine],
        "define_s": best["define_s"],
        "engine_rows_per_s": n / engine_s,
        "loop_s": loop_s,
        "loop_runs_s": loops,
        "loop_rows_per_s": n / loop_s,
        "slowdown": engine_s / loop_s,
        "overhead_us_per_row": (engine_s - loop_s) / n * 1e6,
    }


def profile_config(n: int, batch_size: int, top: int = 25) -> str:
    """cProfile of the coordinator (this process) over one run; the workers are not profiled."""
    rows = make_rows(n)
    expected = plain_loop(rows, batch_size)
    prof = cProfile.Profile()
    times = engine_run(rows, batch_size, expected, profile=prof)
    out = io.StringIO()
    out.write(f"cProfile of the coordinator: {n:,} rows, batch size {batch_size}, "
              f"run {times['run_s']:.2f}s (profiled, so slower than unprofiled)\n")
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def machine_info() -> dict[str, Any]:
    import synthpipe

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "synthpipe": synthpipe.__version__,
        "start_method": os.environ.get("SYNTHPIPE_START_METHOD", "spawn"),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    try:
        repo = Path(__file__).resolve().parent.parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=repo, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        info["git_commit"] = (commit + ("+dirty src" if dirty else "")) or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def format_table(startup: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [
        f"start-up ({startup['rows']} rows): best {startup['best_s']:.3f}s, "
        f"first run in this process {startup['first_run_s']:.3f}s",
        "",
    ]
    header = (f"{'rows':>8} {'batch':>6} {'engine s':>9} {'engine rows/s':>14} {'loop rows/s':>13} "
              f"{'slowdown':>9} {'overhead us/row':>16} {'excl. start-up':>15}")
    lines += [header, "-" * len(header)]
    for r in results:
        steady = (r["engine_s"] - startup["best_s"] - r["loop_s"]) / r["rows"] * 1e6
        r["overhead_us_per_row_excl_startup"] = steady
        lines.append(
            f"{r['rows']:>8,} {r['batch_size']:>6} {r['engine_s']:>9.3f} {r['engine_rows_per_s']:>14,.0f} "
            f"{r['loop_rows_per_s']:>13,.0f} {r['slowdown']:>8,.0f}x {r['overhead_us_per_row']:>16.1f} "
            f"{steady:>15.1f}"
        )
    lines += [
        "",
        "engine s: whole pipeline.run() (process start, batches, Parquet, Distiset), best of the repeats",
        "slowdown: engine time / plain-loop time; overhead: (engine - loop) / rows;",
        "excl. start-up: the same, less the 10-row run's time",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k rows only, one repeat")
    parser.add_argument("--repeat", type=int, default=None, help="runs per configuration, best kept (default 3)")
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="row counts (default 10000 100000)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[50, 1000], help="default 50 1000")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile the coordinator on one run (largest rows, smallest batch)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "engine.json")
    args = parser.parse_args(argv)

    os.environ["SYNTHPIPE_PROGRESS"] = "0"
    os.environ.setdefault("SYNTHPIPE_LOG_LEVEL", "WARNING")  # the run's INFO lines still go to its log file

    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = args.rows or ([10_000] if args.quick else [10_000, 100_000])
    info = machine_info()
    print(f"synthpipe engine benchmark: python {info['python']}, {info['cpu_count']} CPUs, {info['platform']}, "
          f"repeat {repeat}", flush=True)

    started = time.perf_counter()
    startup = measure_startup(repeat)
    results = []
    for n in sizes:
        for batch_size in args.batch_sizes:
            result = measure_config(n, batch_size, repeat)
            results.append(result)
            print(f"  {n:>8,} rows, batch {batch_size:>5}: engine {result['engine_s']:.3f}s, "
                  f"loop {result['loop_s'] * 1e3:.1f}ms", flush=True)
    print()
    print(format_table(startup, results))

    profile_text = None
    if args.profile:
        profile_text = profile_config(max(sizes), min(args.batch_sizes))
        print()
        print(profile_text)
    total = time.perf_counter() - started

    report = {
        "benchmark": "synthpipe engine throughput, trivial steps",
        "pipeline": "LoadDataFromDicts >> AddLength >> AddUpper",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "repeat": repeat,
        "quick": args.quick,
        "startup": startup,
        "results": results,
        "total_benchmark_s": total,
    }
    if profile_text is not None:
        report["coordinator_profile"] = profile_text
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output} (benchmark took {total:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
