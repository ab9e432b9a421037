"""The engine benchmark's report: machine facts, its tables, the profile difference
(helpers of ``bench/engine.py``, kept apart so that file stays one job)."""

from __future__ import annotations

import os
import platform
import pstats
import subprocess
import sys
from pathlib import Path
from typing import Any

OVERHEAD_TARGET_PCT = 10.0  # the target for the cost of durability


def profile_difference(on: pstats.Stats, off: pstats.Stats, top: int = 25) -> str:
    """Where the coordinator's extra time with the cache on goes: functions by (on - off) own time."""
    on_stats: dict[Any, Any] = on.stats  # type: ignore[attr-defined]
    off_stats: dict[Any, Any] = off.stats  # type: ignore[attr-defined]
    zero = (0, 0, 0.0, 0.0, {})
    rows = []
    for key in set(on_stats) | set(off_stats):
        a, b = on_stats.get(key, zero), off_stats.get(key, zero)
        rows.append((a[2] - b[2], a[3] - b[3], a[1], b[1], pstats.func_std_string(key)))
    rows.sort(key=lambda r: -r[0])
    total_on = sum(v[2] for v in on_stats.values())
    total_off = sum(v[2] for v in off_stats.values())
    lines = [f"coordinator, cache on - cache off, one profiled run each: run() {total_on:.3f}s - {total_off:.3f}s "
             f"= {total_on - total_off:+.3f}s.",
             "Own time by function, on - off: the largest differences, then the most negative (waiting for the",
             "workers in poll shrinks when the extra work fills time the coordinator would have spent idle):",
             f"{'own s':>8} {'cum s':>8} {'calls on':>9} {'calls off':>9}  function"]
    shown = rows[:top] + [r for r in rows[-3:] if r[0] < 0 and r not in rows[:top]]
    lines += [f"{d_tt:>+8.3f} {d_ct:>+8.3f} {n_on:>9} {n_off:>9}  {name}" for d_tt, d_ct, n_on, n_off, name in shown]
    return "\n".join(lines)


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


def format_durability(results: list[dict[str, Any]], instant: dict[str, Any] | None,
                      persist: dict[str, Any] | None = None) -> str:
    lines = [f"durability: cache on vs off (persisting disabled), target overhead < {OVERHEAD_TARGET_PCT:.0f} %", ""]
    header = (f"{'rows':>8} {'batch':>6} {'batches':>8} {'on s':>8} {'off s':>8} {'overhead':>9} "
              f"{'us/batch':>9} {'coord CPU on':>13} {'off':>6}  target")
    lines += [header, "-" * len(header)]
    over = 0
    for r in results:
        flag = f"OVER {OVERHEAD_TARGET_PCT:.0f} %" if r["cache_overhead_over_target"] else "ok"
        over += r["cache_overhead_over_target"]
        lines.append(
            f"{r['rows']:>8,} {r['batch_size']:>6} {r['persisted_batches']:>8,} {r['cache_on_s']:>8.3f} "
            f"{r['cache_off_s']:>8.3f} {r['cache_overhead_pct']:>8.1f}% {r['cache_overhead_us_per_batch']:>9.1f} "
            f"{r['cache_on_coordinator_cpu_s']:>12.3f}s {r['cache_off_coordinator_cpu_s']:>5.3f}s  {flag}"
        )
    lines += [
        "",
        f"{over} of {len(results)} configuration(s) over the {OVERHEAD_TARGET_PCT:.0f} % target" if over
        else f"all configurations under the {OVERHEAD_TARGET_PCT:.0f} % target",
        "on: as above (every finished batch stored); off: the same run with PipelineStore.persist a no-op;",
        "runs interleaved on, off, on, off, best of each; overhead: (on - off) / off; us/batch: (on - off) / batches;",
        "coord CPU: CPU time of the coordinator (this process) during run(), best of each: less noisy than wall time",
        "on a busy machine, but without the waits (fsync)",
    ]
    if persist is not None:
        lines += [f"PipelineStore.persist + flush alone: {persist['us_per_batch']:.1f} us per "
                  f"{persist['batch_size']}-row batch ({persist['batch_bytes']:,} bytes; "
                  f"best of {persist['repeat']} x {persist['calls']:,} calls)"]
    if instant is not None:
        lines += [
            "",
            f"instant result ({instant['rows']:,} rows, batch {instant['batch_size']}, best of {instant['repeat']}):",
            f"  first run (new cache dir)                     {instant['first_run_s']:>8.3f}s",
            f"  finished pipeline run again (same cache dir)  {instant['finished_rerun_s']:>8.3f}s"
            f"  ({instant['speedup']:.0f}x faster: the stored result, no worker started)",
        ]
    return "\n".join(lines)
