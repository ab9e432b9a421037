"""Memory with a large response cache (``bench/llm.py --cache-answers 10000 1000000``).

An LLM pipeline (a lazy generator >> ``TextGeneration`` >> a trivial step) runs once against
the test server, which stores its answers; the response cache is then filled up to N answers
(the others are answers to requests the pipeline never makes), and the pipeline runs again
with a changed step parameter, every request answered from the cache, in a fresh process:
tree PSS sampled during the run and during the result build, as ``bench/scale.py`` does.
Beside it, a worker's side alone, in a fresh process: the time to open the cache and answer
its first lookup, and the memory that costs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import scale
from synthpipe.pipeline import Pipeline

ROWS = 2000
FILL_CHUNK = 10_000


def _pipeline(base_url: str, cache: str, marks: Path, raw: bool) -> Pipeline:
    from synthpipe.models import OpenAILLM
    from synthpipe.steps.tasks import TextGeneration

    with Pipeline(name="bench-llm-cache", cache_dir=cache) as pipeline:
        gen = scale.LazyRows(total=ROWS, batch_size=100, mark=str(marks / "first"))
        llm = OpenAILLM(model="bench-model", base_url=base_url, api_key="sk-bench", max_concurrency=64,
                        max_retries=0, timeout=30)
        task = TextGeneration(llm=llm, input_batch_size=100, add_raw_output=raw, add_raw_input=False)
        gen >> task >> scale.AddUpper(input_batch_size=100, total=ROWS, mark=str(marks / "last"))
    return pipeline


def prepare(base_url: str, cache: str, answers: int) -> dict[str, Any]:
    """The first run (real requests), then the cache filled up to ``answers`` lines."""
    from synthpipe.store.responses import ResponseLog

    with tempfile.TemporaryDirectory() as marks:
        _pipeline(base_url, cache, Path(marks), raw=True).run(use_cache=False, log_level="WARNING")
    (lines,) = Path(cache).glob("*/responses/*.jsonl")
    value = json.loads(lines.read_text().splitlines()[0])["v"]
    namespace = lines.name[: -len(".jsonl")]
    started = time.perf_counter()
    for start in range(ROWS, answers, FILL_CHUNK):
        log = ResponseLog(lines.parent)
        log.append(namespace, [(f"{i:064x}", value) for i in range(start, min(answers, start + FILL_CHUNK))])
        log.close()
    fill_s = time.perf_counter() - started
    ResponseLog(lines.parent).close()  # what a run's start does (the index is brought up to date)
    probe = subprocess.run([sys.executable, "-c", PROBE, str(lines.parent), namespace,
                            json.loads(lines.read_text().splitlines()[0])["k"]],
                           capture_output=True, text=True, check=True, env=os.environ)
    return {"answers": answers, "fill_s": fill_s, "file_mb": lines.stat().st_size / 2**20, **json.loads(probe.stdout)}


PROBE = r"""
import json, sys, time
from pathlib import Path
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
from synthpipe.store.responses import ResponseIndex
before = rss()
start = time.perf_counter()
index = ResponseIndex(Path(sys.argv[1]), sys.argv[2])
found = index.get(sys.argv[3])
assert found is not None
print(json.dumps({"open_and_first_lookup_ms": (time.perf_counter() - start) * 1000,
                  "worker_index_mb": (rss() - before) / 2**20}))
"""


def cached_run(base_url: str, cache: str, marks: Path) -> dict[str, Any]:
    start = time.time()
    distiset = _pipeline(base_url, cache, marks, raw=False).run(log_level="WARNING")
    end = time.time()
    ds = distiset["default"]["train"]
    if ds.num_rows != ROWS or not ds[ROWS - 1]["generation"]:
        raise AssertionError(f"wrong result: {ds.num_rows} rows")
    return {"start": start, "end": end}


def run(sizes: list[int], sources: dict[str, Path], base_url: str, stats: Any) -> list[dict[str, Any]]:
    results = []
    for answers in sizes:
        for label, src in sources.items():
            with tempfile.TemporaryDirectory(prefix="synthpipe-llm-cache-") as cache:
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(scale.BENCH)])}
                out = subprocess.run([sys.executable, str(scale.BENCH / "llm_cache.py"), "prepare", base_url, cache,
                                      str(answers)], capture_output=True, text=True, env=env, timeout=1800)
                if out.returncode:
                    raise RuntimeError(out.stderr[-3000:])
                prepared = json.loads(out.stdout.strip().splitlines()[-1])
                before = stats()["total_requests"]
                measured = scale.measure("llm", ROWS, 100, src, [base_url, cache])
                sent = stats()["total_requests"] - before
            result = {"code": label, **prepared, **measured, "requests_sent": sent}
            results.append(result)
            print(f"{answers:>10,} answers cached  {label:<6} open+lookup {result['open_and_first_lookup_ms']:7.1f} ms"
                  f"  worker index {result['worker_index_mb']:6.1f} MB  run {result['wall_s']:6.2f} s "
                  f"(first step {result['to_first_step_s'] * 1000:5.0f} ms, requests sent {sent})  "
                  f"PSS run {result['pss_run_mb']:5.0f} MB  result {result['pss_result_mb']:5.0f} MB", flush=True)
    return results


if __name__ == "__main__":
    if sys.argv[1] == "prepare":
        import llm_cache  # the steps by their module's name, as the workers import them

        print(json.dumps(llm_cache.prepare(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
