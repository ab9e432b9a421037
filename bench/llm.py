"""LLM throughput: ``TextGeneration`` through a whole synthpipe pipeline, against a bare
aiohttp loop on the same server in the same run (and distilabel 1.5.3 where installed).

The OpenAI-compatible test server (``tests/llm_server.py``) runs as its own process and
answers each chat completion after ``--latency`` seconds (default 0.1). For each level of
requests in flight (default 50 and 256), ``--rows`` rows (default 2,000) go through:

* **bare**: one aiohttp session, a semaphore, post and parse: the least any client can do;
* **synthpipe**: ``LoadDataFromDicts >> TextGeneration(llm=OpenAILLM(max_concurrency=N))``,
  ``pipeline.run(use_cache=False)``: worker processes, batches, the store, the result;
* **distilabel** (with ``--distilabel-python PATH``, a Python with ``distilabel==1.5.3`` and
  ``openai``): the same pipeline written for distilabel, its ``OpenAILLM`` on ``base_url``,
  ``input_batch_size`` = N (it sends one batch's requests at once, then waits for all).

Kinds are interleaved, ``--repeat`` times, best kept. Reported: rows/s, the ideal
(in flight / latency), synthpipe / bare (target >= 0.90), and synthpipe's start-up (a
one-row run of the same pipeline) so the steady rate can be told from the fixed cost.

    .venv/bin/python bench/llm.py
    .venv/bin/python bench/llm.py --distilabel-python /work/distilabel-venv/bin/python
    .venv/bin/python bench/llm.py --quick
    .venv/bin/python bench/llm.py --tail --rows 4000 --in-flight 64 --latency 0.05   # the latency-tail mode

``--tail`` (``bench/llm_tail.py``): a heavy-tailed latency and ``--tail-fraction`` of the requests
held past ``--tail-timeout``; reports rows/s, the median requests in flight while rows wait, and
the limit Little's law gives, beside a bare aiohttp loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from http_client import run_bare, server_call, start_server, stop_server
from llm_tail import print_tail, run_tail

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "llm.json"
PROMPT = "Write a haiku about request number {i}."

DISTILABEL_SCRIPT = """
import sys, time
from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration
base_url, rows, in_flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
PROMPT = __PROMPT__
if __name__ == "__main__":
    with Pipeline(name="bench-distilabel") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": PROMPT.format(i=i)} for i in range(rows)], batch_size=in_flight)
        llm = OpenAILLM(model="bench-model", base_url=base_url, api_key="sk-bench", max_retries=0)
        load >> TextGeneration(llm=llm, input_batch_size=in_flight)
    start = time.perf_counter()
    distiset = pipeline.run(use_cache=False)
    wall = time.perf_counter() - start
    generations = distiset["default"]["train"]["generation"]
    assert len(generations) == rows and all(g and g.startswith("echo: ") for g in generations), generations[:3]
    print("WALL", wall)
""".replace("__PROMPT__", repr(PROMPT))


def synthpipe_pipeline(base_url: str, rows: int, in_flight: int, cache: str) -> Any:
    from synthpipe.models import OpenAILLM
    from synthpipe.pipeline import Pipeline
    from synthpipe.steps import LoadDataFromDicts
    from synthpipe.steps.tasks import TextGeneration

    with Pipeline(name=f"bench-llm-{rows}-{in_flight}", cache_dir=cache) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": PROMPT.format(i=i)} for i in range(rows)], batch_size=50)
        llm = OpenAILLM(model="bench-model", base_url=base_url, api_key="sk-bench", max_concurrency=in_flight,
                        max_retries=0, timeout=30)
        load >> TextGeneration(llm=llm, input_batch_size=50, add_raw_input=False)
    return pipeline


def run_synthpipe(base: str, rows: int, in_flight: int, cache: str) -> float:
    pipeline = synthpipe_pipeline(base + "/v1", rows, in_flight, cache)
    start = time.perf_counter()
    distiset = pipeline.run(use_cache=False, log_level="WARNING")
    wall = time.perf_counter() - start
    generations = distiset["default"]["train"]["generation"]
    if len(generations) != rows or distiset.failed_rows or generations[0] != "echo: " + PROMPT.format(i=0):
        raise AssertionError(f"synthpipe: {len(generations)} rows, {len(distiset.failed_rows)} failed")
    return wall


def run_distilabel(python: str, base: str, rows: int, in_flight: int) -> float:
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "DISTILABEL_CACHE_DIR": home, "HOME": home, "PYTHONPATH": ""}
        script = Path(home) / "bench_distilabel.py"
        script.write_text(DISTILABEL_SCRIPT)
        done = subprocess.run([python, str(script), base + "/v1", str(rows), str(in_flight)], capture_output=True,
                              text=True, env=env, timeout=600)
    wall = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("WALL ")]
    if done.returncode != 0 or not wall:
        raise AssertionError(f"distilabel failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return float(wall[0])


async def _bare(base: str, rows: int, in_flight: int) -> float:
    start = time.perf_counter()
    await asyncio.wait_for(run_bare(base + "/v1", rows, in_flight), 300)
    return time.perf_counter() - start


def measure(kind: str, base: str, rows: int, in_flight: int, args: argparse.Namespace, cache: str) -> dict[str, Any]:
    asyncio.run(server_call(base, "POST", "/_reset"))
    if kind == "bare":
        wall = asyncio.run(_bare(base, rows, in_flight))
    elif kind == "synthpipe":
        wall = run_synthpipe(base, rows, in_flight, cache)
    else:
        wall = run_distilabel(args.distilabel_python, base, rows, in_flight)
    stats = asyncio.run(server_call(base, "GET", "/_stats"))
    if stats["total_requests"] != rows:
        raise AssertionError(f"{kind}: the server saw {stats['total_requests']} requests for {rows} rows")
    return {"kind": kind, "in_flight": in_flight, "rows": rows, "wall_s": wall, "rows_per_s": rows / wall,
            "server_max_in_flight": stats["max_in_flight"]}


def cache_memory(sizes: list[int], others: list[Path]) -> int:
    import llm_cache

    sources = {"this": ROOT / "src", **{f"src{i}": p.resolve() for i, p in enumerate(others)}}
    proc, port = start_server(0.0)
    base = f"http://127.0.0.1:{port}"
    try:
        results = llm_cache.run(sizes, sources, base + "/v1",
                                lambda: asyncio.run(server_call(base, "GET", "/_stats")))
    finally:
        stop_server(proc)
    out = RESULTS.with_name("llm_cache.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "llm response cache memory", "rows": llm_cache.ROWS,
                               "results": results}, indent=2))
    print(f"written to {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[50, 256])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--distilabel-python", default=os.environ.get("DISTILABEL_PYTHON"))
    parser.add_argument("--quick", action="store_true", help="500 rows, one repeat")
    parser.add_argument("--tail", action="store_true", help="the latency-tail mode (bench/llm_tail.py)")
    parser.add_argument("--tail-fraction", type=float, default=0.02)
    parser.add_argument("--tail-timeout", type=float, default=3.0)
    parser.add_argument("--max-rows-in-flight", type=int, default=None, help="the task's window (tail mode)")
    parser.add_argument("--cache-answers", type=int, nargs="+", default=None,
                        help="instead: memory and start-up with this many answers in the response cache "
                             "(bench/llm_cache.py), e.g. 10000 1000000")
    parser.add_argument("--src", type=Path, nargs="*", default=[],
                        help="with --cache-answers: other source trees measured the same way, interleaved")
    args = parser.parse_args()
    if args.cache_answers:
        return cache_memory(args.cache_answers, args.src)
    if args.tail:
        proc, port = start_server(args.latency)
        try:
            with tempfile.TemporaryDirectory() as cache:
                results = run_tail(f"http://127.0.0.1:{port}", args, cache)
        finally:
            stop_server(proc)
        print_tail(results, args)
        tail_file = RESULTS.with_name("llm_tail.json")
        tail_file.parent.mkdir(parents=True, exist_ok=True)
        tail_file.write_text(json.dumps({"benchmark": "llm-tail", "latency_s": args.latency,
                                         "tail_fraction": args.tail_fraction, "timeout_s": args.tail_timeout,
                                         "results": results, "cpus": os.cpu_count()}, indent=2))
        return 0
    if args.quick:
        args.rows, args.repeat = 500, 1
    kinds = ["bare", "synthpipe"] + (["distilabel"] if args.distilabel_python else [])

    proc, port = start_server(args.latency)
    base = f"http://127.0.0.1:{port}"
    best: dict[tuple[str, int], dict[str, Any]] = {}
    startup: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as cache:
            run_synthpipe(base, 1, 1, cache)  # warm-up (imports, page cache)
            for _ in range(args.repeat):
                startup.append(run_synthpipe(base, 1, 1, cache))
            for in_flight in args.in_flight:
                for _ in range(args.repeat):
                    for kind in kinds:
                        result = measure(kind, base, args.rows, in_flight, args, cache)
                        key = (kind, in_flight)
                        if key not in best or result["wall_s"] < best[key]["wall_s"]:
                            best[key] = result
    finally:
        stop_server(proc)

    start_s = min(startup)
    print(f"{args.rows} rows through TextGeneration, server latency {args.latency * 1000:g} ms, best of {args.repeat}; "
          f"synthpipe start-up (a 1-row run): {start_s:.2f} s")
    print(f"{'in flight':>9} {'kind':>10} {'rows/s':>8} {'ideal':>7} {'of ideal':>8} {'wall s':>7} {'srv max':>7}")
    table = []
    for in_flight in args.in_flight:
        ideal = in_flight / args.latency
        for kind in kinds:
            r = best[(kind, in_flight)]
            print(f"{in_flight:>9} {kind:>10} {r['rows_per_s']:>8.0f} {ideal:>7.0f} {r['rows_per_s'] / ideal:>8.0%} "
                  f"{r['wall_s']:>7.2f} {r['server_max_in_flight']:>7}")
        sp, bare = best[("synthpipe", in_flight)], best[("bare", in_flight)]
        ratio = sp["rows_per_s"] / bare["rows_per_s"]
        steady = args.rows / max(1e-9, sp["wall_s"] - start_s) / bare["rows_per_s"]
        line = f"{in_flight:>9}   synthpipe / bare: {ratio:.2f} (target >= 0.90); without start-up: {steady:.2f}"
        row = {"in_flight": in_flight, "ideal_rows_per_s": ideal, "ratio_vs_bare": ratio,
               "ratio_vs_bare_without_startup": steady, **{k: best[(k, in_flight)] for k in kinds}}
        if "distilabel" in kinds:
            row["ratio_vs_distilabel"] = sp["rows_per_s"] / best[("distilabel", in_flight)]["rows_per_s"]
            line += f"; synthpipe / distilabel: {row['ratio_vs_distilabel']:.1f}x"
        print(line)
        table.append(row)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "llm", "rows": args.rows, "latency_s": args.latency, "repeat": args.repeat,
        "startup_s": start_s, "results": table, "python": sys.version.split()[0], "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }, indent=2))
    print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
