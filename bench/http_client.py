"""Throughput of synthpipe's OpenAI-format HTTP client against a bare aiohttp loop.

The OpenAI-compatible test server (``tests/llm_server.py``) runs as a separate process and
answers every chat completion after ``--latency`` seconds (default 0.1). In this process, for
each concurrency level (default 50 and 256 requests in flight), ``--requests`` chat completions
(default 2,000) are sent by

* **bare**: one ``aiohttp.ClientSession``, an ``asyncio.Semaphore``, ``session.post(json=...)``
  and ``await response.json()``: the least a client can do;
* **client**: :class:`synthpipe.models.openai_client.OpenAICompatibleClient` (AIMD limiter,
  pause gate, retry loop, error classification, redaction), ``max_concurrency`` = the level.

The two kinds of run are interleaved (bare, client, bare, client, ...) ``--repeat`` times and the
best of each is kept. Reported per run: wall time, requests/s, the ceiling ``in_flight / latency``,
the client process's CPU time per request, and the server's own count of requests and of the most
requests it saw in flight (checked against the concurrency level). Every answer is checked, so a
broken run cannot pass for a fast one. The headline is ``client req/s / bare req/s``.

    .venv/bin/python bench/http_client.py                  # 2,000 requests at 50 and 256 in flight
    .venv/bin/python bench/http_client.py --quick          # 500 requests, one repeat

Results go to stdout (a table) and to ``bench/results/http_client.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from synthpipe.models.openai_client import OpenAICompatibleClient, RetryPolicy
from synthpipe.testing.processes import stop_process

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
SERVER = ROOT / "tests" / "llm_server.py"
API_KEY = "sk-bench-0000000000000000"
RUN_TIMEOUT = 120.0  # seconds, per measured run


def start_server(latency: float, timeout: float = 20.0) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline().strip() if ready else ""
    if not line.isdigit():
        stop_server(proc)
        raise RuntimeError(f"the test server did not report its port within {timeout}s (got {line!r})")
    return proc, int(line)


def stop_server(proc: subprocess.Popen[str]) -> None:
    stop_process(proc)


def payload(i: int) -> dict[str, Any]:
    return {
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Write a haiku about request number {i}."},
        ],
        "temperature": 0.7,
        "max_tokens": 64,
    }


def check(i: int, answer: dict[str, Any]) -> None:
    content = answer["choices"][0]["message"]["content"]
    if content != f"echo: Write a haiku about request number {i}.":
        raise AssertionError(f"request {i}: unexpected answer {content!r}")


async def server_call(base: str, method: str, route: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.request(method, base + route) as response:
            return await response.json()


async def run_bare(url: str, requests: int, in_flight: int) -> None:
    connector = aiohttp.TCPConnector(limit=in_flight)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        semaphore = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with semaphore:
                async with session.post(url + "/chat/completions", json=payload(i)) as response:
                    response.raise_for_status()
                    check(i, await response.json())

        await asyncio.gather(*(one(i) for i in range(requests)))


async def run_client(url: str, requests: int, in_flight: int) -> None:
    async with OpenAICompatibleClient(url, API_KEY, max_concurrency=in_flight, retry=RetryPolicy(timeout=30)) as client:

        async def one(i: int) -> None:
            check(i, await client.chat(payload(i)))

        await asyncio.gather(*(one(i) for i in range(requests)))
        if client.stats["retries"]:
            raise AssertionError(f"the client retried: {dict(client.stats)}")


async def measure(kind: str, base: str, requests: int, in_flight: int) -> dict[str, Any]:
    await server_call(base, "POST", "/_reset")
    runner = run_bare if kind == "bare" else run_client
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.wait_for(runner(base + "/v1", requests, in_flight), RUN_TIMEOUT)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stats = await server_call(base, "GET", "/_stats")
    if stats["total_requests"] != requests or stats["statuses"] != {"200": requests}:
        raise AssertionError(f"{kind}: the server saw {stats['total_requests']} requests, {stats['statuses']}")
    if stats["max_in_flight"] > in_flight:
        raise AssertionError(f"{kind}: {stats['max_in_flight']} requests in flight at once, limit {in_flight}")
    return {
        "kind": kind,
        "in_flight": in_flight,
        "requests": requests,
        "wall_s": wall,
        "req_per_s": requests / wall,
        "cpu_us_per_req": cpu / requests * 1e6,
        "server_max_in_flight": stats["max_in_flight"],
    }


async def bench(args: argparse.Namespace, base: str) -> list[dict[str, Any]]:
    await run_client(base + "/v1", 100, 50)  # warm-up: imports, connections
    await run_bare(base + "/v1", 100, 50)
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for in_flight in args.in_flight:
        for _ in range(args.repeat):
            for kind in ("bare", "client"):
                result = await measure(kind, base, args.requests, in_flight)
                key = (kind, in_flight)
                if key not in best or result["wall_s"] < best[key]["wall_s"]:
                    best[key] = result
    return list(best.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[50, 256])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="500 requests, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.repeat = 500, 1

    proc, port = start_server(args.latency)
    try:
        results = asyncio.run(bench(args, f"http://127.0.0.1:{port}"))
    finally:
        stop_server(proc)

    rows = []
    print(f"{args.requests} chat completions, server latency {args.latency * 1000:g} ms, best of {args.repeat}")
    print(f"{'in flight':>9} {'kind':>7} {'req/s':>8} {'ceiling':>8} {'wall s':>7} {'cpu us/req':>10} {'srv max':>7}")
    for in_flight in args.in_flight:
        pair = {r["kind"]: r for r in results if r["in_flight"] == in_flight}
        for kind in ("bare", "client"):
            r = pair[kind]
            ceiling = in_flight / args.latency if args.latency > 0 else float("inf")
            print(
                f"{in_flight:>9} {kind:>7} {r['req_per_s']:>8.0f} {ceiling:>8.0f} "
                f"{r['wall_s']:>7.2f} {r['cpu_us_per_req']:>10.0f} {r['server_max_in_flight']:>7}"
            )
        ratio = pair["client"]["req_per_s"] / pair["bare"]["req_per_s"]
        cpu_ratio = pair["client"]["cpu_us_per_req"] / pair["bare"]["cpu_us_per_req"]
        print(f"{in_flight:>9}   ratio client/bare: {ratio:.3f} req/s (target >= 0.90), {cpu_ratio:.3f} cpu/req")
        rows.append({"in_flight": in_flight, "bare": pair["bare"], "client": pair["client"], "ratio": ratio})

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "http_client",
        "requests": args.requests,
        "latency_s": args.latency,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cpus": os.cpu_count(),
        "results": rows,
    }
    (RESULTS_DIR / "http_client.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {RESULTS_DIR / 'http_client.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
