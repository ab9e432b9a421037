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

Durability ("cache on vs off"): every finished batch is stored (each worker makes the Arrow
form of its batch, then ``PipelineStore.persist`` appends it to a segment file and a record to
the journal, both written once per round of the coordinator's loop). For each configuration the same
run is also timed with persisting disabled, by replacing ``PipelineStore.persist`` with a
no-op in this process (the coordinator is the only writer) and not asking the workers for the
Arrow form. The two kinds of run are
interleaved (on, off, on, off, ...), the best of each is kept, and the overhead
(on - off) / off is compared with the target (under 10 %). Every run gets a new, empty cache
dir, since a run over a finished store would return the stored result instead of running.
Cache off still computes the step signatures (which hash the in-memory data of
``LoadDataFromDicts``) and marks the run complete, so that part of durability's cost is in
both timings. The coordinator's CPU time is reported too: less noisy on a busy machine.
The cost of ``PipelineStore.persist`` + ``flush`` alone per 50-row batch (6,000 calls into a new
store, each batch written on its own) is reported too: steadier than the difference of two
noisy runs. Separately, the "instant result" is timed: running a finished pipeline again with
the same cache dir (100k rows, batch 1000), against its first run.

    .venv/bin/python bench/engine.py            # full: 10k and 100k rows, batch 50 and 1000
    .venv/bin/python bench/engine.py --quick    # 10k rows only, one repeat
    .venv/bin/python bench/engine.py --profile  # also cProfile the coordinator on one config, cache on and off
    .venv/bin/python bench/engine.py --scale --rows 100000 1000000 10000000  # bench/scale.py: memory, fixed cost,
                                                # the plain-pipes floor; --src OTHER/src for a before/after,
                                                # --repeat N: alternated N times, medians and spread

Results go to stdout (a table) and to ``bench/results/engine.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine_report import OVERHEAD_TARGET_PCT, format_durability, format_table, machine_info, profile_difference
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, StepInput, step
from synthpipe.store import pipeline_store

RESULTS_DIR = Path(__file__).resolve().parent / "results"
STARTUP_ROWS = 10
INSTANT_CONFIG = (100_000, 1000)  # rows, batch size of the "instant result" measurement


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


@contextlib.contextmanager
def persist_disabled() -> Iterator[list[int]]:
    """Cache off: ``PipelineStore.persist`` does nothing (no segment write, no journal record) until exit,
    and the workers are not asked for the columnar form of their batches (the flag in their run
    context goes by another name).

    Yields a one-item list counting the skipped calls, so a run can show it really went through here.
    The coordinator is the only writer, so patching this process is enough.
    """
    from synthpipe import runner  # not at the top: workers import this module, and need not import that
    from synthpipe.runtime import worker

    store_class = pipeline_store.PipelineStore
    original = store_class.__dict__["persist"]
    skipped = [0]

    def persist(self: Any, *args: Any, **kwargs: Any) -> None:
        skipped[0] += 1

    store_class.persist = persist  # type: ignore[method-assign]
    runner.STORE_BATCHES = "benchmark: batches are not stored"
    try:
        yield skipped
    finally:
        store_class.persist = original  # type: ignore[method-assign]
        runner.STORE_BATCHES = worker.STORE_BATCHES


def journal_counts(cache_dir: str | Path) -> dict[str, int]:
    """Records per kind ("batch", "complete", ...) in the journals under ``cache_dir``."""
    counts: dict[str, int] = {}
    for path in Path(cache_dir).glob("*/journal.jsonl"):
        for line in path.read_bytes().splitlines():
            if line.strip():
                kind = str(json.loads(line).get("t"))
                counts[kind] = counts.get(kind, 0) + 1
    return counts


def engine_run(rows: list[dict[str, Any]], batch_size: int, expected: list[dict[str, Any]],
               profile: cProfile.Profile | None = None, cache: bool = True,
               cache_dir: str | None = None) -> dict[str, Any]:
    """Define, run and check one pipeline; return its timings in seconds and what it stored.

    Without ``cache_dir`` the run gets a new, empty one (a finished store would be returned,
    not run). ``cache=False`` runs it with persisting disabled.
    """
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="synthpipe-bench-"))
            if any(Path(cache_dir).iterdir()):
                raise AssertionError(f"cache dir {cache_dir} is not empty")
        skipped = stack.enter_context(persist_disabled()) if not cache else None
        t0 = time.perf_counter()
        pipeline = build_pipeline(rows, batch_size, cache_dir)
        t1 = time.perf_counter()
        if profile is not None:
            profile.enable()
        cpu0 = time.process_time()
        distiset = pipeline.run()
        cpu1 = time.process_time()
        if profile is not None:
            profile.disable()
        t2 = time.perf_counter()
        verify(distiset, expected)
        run_dir = str(distiset.run_dir)
        del distiset
        stored = journal_counts(cache_dir)
    persisted = stored.get("batch", 0)
    if cache and persisted == 0:
        raise AssertionError("cache on, yet the run stored no batch")
    if not cache and (persisted or not skipped or not skipped[0]):
        raise AssertionError(f"cache off, yet the run stored {persisted} batch(es) "
                             f"(persist skipped {skipped[0] if skipped else 0} times)")
    return {"define_s": t1 - t0, "run_s": t2 - t1, "coordinator_cpu_s": cpu1 - cpu0, "persisted": persisted,
            "persist_skipped": skipped[0] if skipped else 0, "completed": stored.get("complete", 0),
            "run_dir": run_dir}


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


def overhead_pct(on_s: float, off_s: float) -> float:
    return (on_s - off_s) / off_s * 100.0


def measure_config(n: int, batch_size: int, repeat: int) -> dict[str, Any]:
    """Cache-on and cache-off runs interleaved (on, off, on, off, ...); the best of each is kept."""
    rows = make_rows(n)
    on: list[dict[str, Any]] = []
    off: list[dict[str, Any]] = []
    loops: list[float] = []
    for _ in range(repeat):
        t_loop, expected = loop_time(rows, batch_size)
        loops.append(t_loop)
        gc.collect()
        on.append(engine_run(rows, batch_size, expected, cache=True))
        gc.collect()
        off.append(engine_run(rows, batch_size, expected, cache=False))
        del expected
    best = min(on, key=lambda r: r["run_s"])
    engine_s, loop_s = best["run_s"], min(loops)
    off_s = min(r["run_s"] for r in off)
    persisted = sorted({r["persisted"] for r in on})
    skipped = sorted({r["persist_skipped"] for r in off})
    if persisted != skipped:
        print(f"  warning: {n:,} rows, batch {batch_size}: cache-on runs stored {persisted} batches, "
              f"cache-off runs skipped {skipped} persists", flush=True)
    pct = overhead_pct(engine_s, off_s)
    return {
        "rows": n,
        "batch_size": batch_size,
        "repeat": repeat,
        "engine_s": engine_s,
        "engine_runs_s": [r["run_s"] for r in on],
        "define_s": best["define_s"],
        "engine_rows_per_s": n / engine_s,
        "loop_s": loop_s,
        "loop_runs_s": loops,
        "loop_rows_per_s": n / loop_s,
        "slowdown": engine_s / loop_s,
        "overhead_us_per_row": (engine_s - loop_s) / n * 1e6,
        "cache_on_s": engine_s,
        "cache_off_s": off_s,
        "cache_off_runs_s": [r["run_s"] for r in off],
        "cache_off_rows_per_s": n / off_s,
        "cache_overhead_pct": pct,
        "cache_overhead_us_per_batch": (engine_s - off_s) / max(persisted[-1], 1) * 1e6,
        "cache_overhead_over_target": pct > OVERHEAD_TARGET_PCT,
        "cache_on_coordinator_cpu_s": min(r["coordinator_cpu_s"] for r in on),
        "cache_off_coordinator_cpu_s": min(r["coordinator_cpu_s"] for r in off),
        "persisted_batches": persisted[-1],
    }


def measure_instant(n: int, batch_size: int, repeat: int) -> dict[str, Any]:
    """First run of a pipeline in a new cache dir, then the same pipeline again with that cache dir:
    it is finished, so the second run returns the stored result without starting a worker."""
    rows = make_rows(n)
    expected = plain_loop(rows, batch_size)
    firsts: list[float] = []
    agains: list[float] = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="synthpipe-bench-") as cache_dir:
            if any(Path(cache_dir).iterdir()):
                raise AssertionError(f"cache dir {cache_dir} is not empty")
            gc.collect()
            first = engine_run(rows, batch_size, expected, cache_dir=cache_dir)
            gc.collect()
            again = engine_run(rows, batch_size, expected, cache_dir=cache_dir)
        if again["run_dir"] != first["run_dir"] or again["persisted"] != first["persisted"]:
            raise AssertionError(f"the second run computed the pipeline again (run dir {again['run_dir']}, "
                                 f"{again['persisted']} batches stored) instead of returning the finished "
                                 f"result of {first['run_dir']} ({first['persisted']} batches)")
        firsts.append(first["run_s"])
        agains.append(again["run_s"])
    first_s, again_s = min(firsts), min(agains)
    return {"rows": n, "batch_size": batch_size, "repeat": repeat, "first_run_s": first_s,
            "first_runs_s": firsts, "finished_rerun_s": again_s, "finished_reruns_s": agains,
            "speedup": first_s / again_s}


def measure_persist(batch_size: int = 50, calls: int = 6000, repeat: int = 5) -> dict[str, Any]:
    """``PipelineStore.persist`` and ``flush`` alone, on one batch of the benchmark's rows (pickled
    as a worker sends them), written one at a time: the store's own cost per batch at most,
    steadier than the difference of two noisy runs."""
    import pickle

    data = pickle.dumps(plain_loop(make_rows(batch_size), batch_size), protocol=pickle.HIGHEST_PROTOCOL)
    best = float("inf")
    for attempt in range(repeat):
        with tempfile.TemporaryDirectory(prefix="synthpipe-bench-") as folder:
            store = pipeline_store.PipelineStore(Path(folder))
            started = time.perf_counter()
            for seq in range(calls):  # written batch by batch: the most a run pays (it writes a round at once)
                store.persist("step", f"sig{attempt}", seq, data, batch_size, False, 0, "run", batch_size)
                store.flush()
            best = min(best, time.perf_counter() - started)
            store.close()
    return {"batch_size": batch_size, "batch_bytes": len(data), "calls": calls, "repeat": repeat,
            "us_per_batch": best / calls * 1e6}


STORE_FUNCTIONS = r"persist|store/journal|store/segments|json/__init__|json/encoder|pickle|fsync|flush|write"


def profile_config(n: int, batch_size: int, cache: bool = True, top: int = 25) -> tuple[str, pstats.Stats]:
    """cProfile of the coordinator (this process) over one run; the workers are not profiled."""
    rows = make_rows(n)
    expected = plain_loop(rows, batch_size)
    prof = cProfile.Profile()
    gc.collect()
    times = engine_run(rows, batch_size, expected, profile=prof, cache=cache)
    out = io.StringIO()
    out.write(f"cProfile of the coordinator, cache {'on' if cache else 'off'}: {n:,} rows, batch size "
              f"{batch_size}, run {times['run_s']:.2f}s (profiled, so slower than unprofiled)\n")
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    out.write("storing (persist, journal, segments, json, pickle, fsync, write, flush):\n")
    stats.sort_stats("cumulative").print_stats(STORE_FUNCTIONS, top)
    return out.getvalue(), stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k rows only, one repeat")
    parser.add_argument("--repeat", type=int, default=None,
                        help="rounds per configuration (one cache-on and one cache-off run each), best kept "
                             "(default 5; 1 with --quick)")
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="row counts (default 10000 100000)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[50, 1000], help="default 50 1000")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile the coordinator on one run, cache on and off (largest rows, "
                             "smallest batch)")
    parser.add_argument("--output", type=Path, default=None,
                        help="default bench/results/engine.json (scale.json with --scale)")
    parser.add_argument("--scale", action="store_true",
                        help="bench/scale.py: a lazy generator, up to 10,000,000 --rows (default 100000 1000000), "
                             "beside the plain-pipes floor; rows/s, fixed cost, tree PSS during run and result")
    parser.add_argument("--src", type=Path, nargs="*", default=[],
                        help="with --scale: other source trees (src/ folders) measured the same way, interleaved")
    args = parser.parse_args(argv)
    if args.scale:
        import scale

        sources = {"this": Path(__file__).resolve().parent.parent / "src"}
        sources.update({f"src{i}": p.resolve() for i, p in enumerate(args.src)})
        return scale.main(args.rows or [100_000, 1_000_000], 1000 if args.batch_sizes == [50, 1000]
                          else args.batch_sizes[0], sources, args.output or RESULTS_DIR / "scale.json",
                          repeat=args.repeat or 1)
    args.output = args.output or RESULTS_DIR / "engine.json"

    os.environ["SYNTHPIPE_PROGRESS"] = "0"
    os.environ.setdefault("SYNTHPIPE_LOG_LEVEL", "WARNING")  # the run's INFO lines still go to its log file

    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
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
            print(f"  {n:>8,} rows, batch {batch_size:>5}: engine {result['engine_s']:.3f}s "
                  f"(cache off {result['cache_off_s']:.3f}s, {result['cache_overhead_pct']:+.1f}%), "
                  f"loop {result['loop_s'] * 1e3:.1f}ms", flush=True)
    instant_rows = INSTANT_CONFIG[0] if INSTANT_CONFIG[0] in sizes else max(sizes)
    instant_batch = INSTANT_CONFIG[1] if INSTANT_CONFIG[1] in args.batch_sizes else max(args.batch_sizes)
    instant = measure_instant(instant_rows, instant_batch, repeat)
    print(f"  {instant_rows:>8,} rows, batch {instant_batch:>5}: first run {instant['first_run_s']:.3f}s, "
          f"finished, run again {instant['finished_rerun_s']:.3f}s", flush=True)
    print()
    print(format_table(startup, results))
    print()
    persist = measure_persist()
    print(format_durability(results, instant, persist))

    profiles: dict[str, str] = {}
    if args.profile:
        stats = {}
        for cache in (True, False):
            text, stats[cache] = profile_config(max(sizes), min(args.batch_sizes), cache)
            profiles["on" if cache else "off"] = text
            print()
            print(text)
        profiles["difference"] = profile_difference(stats[True], stats[False])
        print(profiles["difference"])
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
        "durability": {
            "target_overhead_pct": OVERHEAD_TARGET_PCT,
            "cache_off": "PipelineStore.persist replaced by a no-op in the coordinator",
            "persist_alone": persist,
            "order": "interleaved: on, off, on, off, ...; best of each",
            "configs": [
                {k: r[k] for k in ("rows", "batch_size", "persisted_batches", "cache_on_s", "cache_off_s",
                                   "cache_overhead_pct", "cache_overhead_us_per_batch",
                                   "cache_overhead_over_target", "cache_on_coordinator_cpu_s",
                                   "cache_off_coordinator_cpu_s")}
                for r in results
            ],
            "over_target": [f"{r['rows']}x{r['batch_size']}" for r in results if r["cache_overhead_over_target"]],
        },
        "instant_result": instant,
        "total_benchmark_s": total,
    }
    if profiles:
        report["coordinator_profile"] = profiles["on"]
        report["coordinator_profile_cache_off"] = profiles["off"]
        report["coordinator_profile_difference"] = profiles["difference"]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output} (benchmark took {total:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
