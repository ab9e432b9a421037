"""The latency-tail mode of ``bench/llm.py``: an endpoint whose answers take a heavy-tailed time,
and a fraction of whose requests are held past the client's timeout (answered on the retry).

Each row's prompt carries its own delay (``[[delay:S]]``: a Pareto tail over the server's base
latency, capped below the timeout) and, for ``--tail-fraction`` of the rows, ``[[hang:1]]``
(the first attempt is held past the timeout; the retry is answered). Reported per kind (a bare
aiohttp loop with a semaphore, timeout and immediate retry; synthpipe's ``TextGeneration``):
rows/s, the median requests in flight at the server while rows wait to be sent (sampled every
20 ms), and the limit Little's law gives, ``max_concurrency`` / the mean time a row holds a slot
(its answer's latency, plus the timeout for a held one; retry back-off excluded).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import threading
import time
import urllib.request
from typing import Any

import aiohttp

PARETO_ALPHA = 2.5  # a heavy tail with a finite mean
PARETO_SCALE = 0.05  # seconds: the tail's scale over the base latency
MAX_EXTRA = 1.5  # seconds: the slowest ordinary answer (held ones aside)


def tail_rows(rows: int, fraction: float, seed: int = 17) -> tuple[list[str], list[float], list[bool]]:
    """The prompts, each row's extra delay, and which rows are held past the timeout."""
    rng = random.Random(seed)
    prompts, extras, held = [], [], []
    for i in range(rows):
        extra = min(MAX_EXTRA, PARETO_SCALE * (rng.random() ** (-1 / PARETO_ALPHA) - 1))
        hold = rng.random() < fraction
        marker = " [[hang:1]]" if hold else ""
        prompts.append(f"Write a haiku about request number {i}. [[delay:{extra:.3f}]]{marker}")
        extras.append(round(extra, 3))
        held.append(hold)
    return prompts, extras, held


def littles_limit(in_flight: int, latency: float, extras: list[float], held: list[bool], timeout: float) -> float:
    hold = [latency + e + (timeout if h else 0.0) for e, h in zip(extras, held, strict=True)]
    return in_flight / statistics.fmean(hold)


def _get(base: str, route: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + route, timeout=5) as response:
        return json.loads(response.read())


def configure(base: str, **changes: Any) -> None:
    request = urllib.request.Request(base + "/_config", data=json.dumps(changes).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).read()


class InFlightSampler:
    """Samples the server's requests in flight while some row has not been sent yet."""

    def __init__(self, base: str, rows: int, every: float = 0.02) -> None:
        self.base, self.rows, self.every = base, rows, every
        self.samples: list[int] = []
        self.answered: list[tuple[float, int]] = []  # (time, answers so far) at each sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InFlightSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            stats = _get(self.base, "/_stats")
            if stats["total_requests"] >= self.rows:  # every row asked at least once: the drain begins
                continue
            if stats["in_flight"] or self.samples:
                self.samples.append(stats["in_flight"])
                self.answered.append((time.perf_counter(), stats["statuses"].get("200", 0)))

    @property
    def steady_rate(self) -> float:
        """Answers a second while rows wait: the rate without start-up and the final drain."""
        if len(self.answered) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.answered[0], self.answered[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else 0.0


async def bare_tail(url: str, prompts: list[str], in_flight: int, timeout: float) -> None:
    """A plain client: a semaphore, a timeout per attempt, an immediate retry after a timeout."""
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        semaphore = asyncio.Semaphore(in_flight)

        async def one(prompt: str) -> None:
            body = {"model": "bench-model", "messages": [{"role": "user", "content": prompt}]}
            for _ in range(4):
                try:
                    async with semaphore, session.post(url + "/chat/completions", json=body) as response:
                        response.raise_for_status()
                        await response.json()
                        return
                except (asyncio.TimeoutError, aiohttp.ClientError):
                    continue
            raise AssertionError(f"bare: no answer for {prompt!r}")

        await asyncio.gather(*(one(p) for p in prompts))


def synthpipe_tail(url: str, prompts: list[str], in_flight: int, timeout: float, cache: str,
                   max_rows_in_flight: int | None) -> None:
    from synthpipe.models import OpenAILLM
    from synthpipe.pipeline import Pipeline
    from synthpipe.steps import LoadDataFromDicts
    from synthpipe.steps.tasks import TextGeneration

    with Pipeline(name=f"bench-llm-tail-{len(prompts)}-{in_flight}", cache_dir=cache) as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=50)
        llm = OpenAILLM(model="bench-model", base_url=url, api_key="sk-bench", max_concurrency=in_flight,
                        max_retries=3, timeout=timeout)
        extra = {"max_rows_in_flight": max_rows_in_flight} if max_rows_in_flight else {}
        load >> TextGeneration(llm=llm, input_batch_size=50, add_raw_input=False, **extra)
    distiset = pipeline.run(use_cache=False, log_level="WARNING")
    generations = distiset["default"]["train"]["generation"]
    if len(generations) != len(prompts) or distiset.failed_rows:
        raise AssertionError(f"synthpipe: {len(generations)} rows, {len(distiset.failed_rows)} failed")


def run_tail(base: str, args: Any, cache: str) -> list[dict[str, Any]]:
    """Both kinds at each level in flight; one line per run."""
    prompts, extras, held = tail_rows(args.rows, args.tail_fraction)
    configure(base, hang_seconds=args.tail_timeout + 0.25)
    results = []
    for in_flight in args.in_flight:
        limit = littles_limit(in_flight, args.latency, extras, held, args.tail_timeout)
        for kind in ("bare", "synthpipe"):
            urllib.request.urlopen(urllib.request.Request(base + "/_reset", method="POST"), timeout=5).read()
            with InFlightSampler(base, args.rows) as sampler:
                start = time.perf_counter()
                if kind == "bare":
                    asyncio.run(bare_tail(base + "/v1", prompts, in_flight, args.tail_timeout))
                else:
                    synthpipe_tail(base + "/v1", prompts, in_flight, args.tail_timeout, cache, args.max_rows_in_flight)
                wall = time.perf_counter() - start
            results.append({"kind": kind, "in_flight": in_flight, "rows": args.rows, "wall_s": wall,
                            "rows_per_s": args.rows / wall, "steady_rows_per_s": sampler.steady_rate,
                            "median_in_flight": sampler.median,
                            "littles_limit_rows_per_s": limit, "held": sum(held)})
    return results


def print_tail(results: list[dict[str, Any]], args: Any) -> None:
    print(f"{args.rows} rows, base latency {args.latency * 1000:g} ms + Pareto(alpha {PARETO_ALPHA}) tail, "
          f"{args.tail_fraction:.0%} held past a {args.tail_timeout:g} s timeout")
    print("rows/s: the whole run; steady: answers/s while rows wait (no start-up, no final drain); "
          "Little: max_concurrency / mean slot time")
    print(f"{'in flight':>9} {'kind':>10} {'rows/s':>7} {'steady':>7} {'Little':>7} {'steady/Little':>13}"
          f" {'median in flight':>16} {'/ limit':>7}")
    for r in results:
        limit = r["littles_limit_rows_per_s"]
        print(f"{r['in_flight']:>9} {r['kind']:>10} {r['rows_per_s']:>7.0f} {r['steady_rows_per_s']:>7.0f} "
              f"{limit:>7.0f} {r['steady_rows_per_s'] / limit:>13.0%} {r['median_in_flight']:>16.1f} "
              f"{r['median_in_flight'] / r['in_flight']:>7.0%}")
