"""Stored batches: size and CPU of the Arrow form against the pickle, per kind of batch.

A finished batch is stored as an Arrow IPC stream where that is exact (and worth its CPU,
which the worker decides from the step's time) or as the pickled rows. This measures both
forms on batches shaped like those of real pipelines:

* **llm**: ``TextGeneration`` output, 50 rows: an instruction (~400 characters), a generation
  (~2,000), the model name and ``synthpipe_metadata`` (raw input chat, raw output, token
  counts). English text is cut from Python's own documentation (``pydoc_data``), so it
  compresses as prose does, not as repeated words would.
* **embedding**: 50 rows of text with a 384-float embedding (MiniLM's size).
* **small x50 / x1000**: the engine benchmark's rows (id, instruction, length, upper).

For each: bytes per batch and per row, the time to make each form (``encode_columnar`` with
its exactness checks and compression; ``pickle.dumps``) and to read it back, best of
``--repeat`` rounds. The ratio columns are Arrow / pickle.

    .venv/bin/python bench/batch_format.py

Results go to stdout (a table) and to ``bench/results/batch_format.json``.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthpipe.store.batch_format import decode, encode_columnar

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _prose() -> str:
    import pydoc_data.topics

    return " ".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))


def llm_rows(rng: random.Random, text: str, n: int) -> list[dict[str, Any]]:
    def cut(length: int) -> str:
        start = rng.randrange(len(text) - length)
        return text[start:start + length]

    rows = []
    for _ in range(n):
        instruction, generation = cut(400), cut(2000)
        rows.append({
            "instruction": instruction, "generation": generation, "model_name": "meta-llama/Llama-3.1-8B-Instruct",
            "synthpipe_metadata": {
                "raw_input_text_generation_0": [{"role": "user", "content": instruction}],
                "raw_output_text_generation_0": generation,
                "statistics_text_generation_0": {"input_tokens": rng.randrange(50, 150),
                                                 "output_tokens": rng.randrange(300, 600)},
            },
        })
    return rows


def embedding_rows(rng: random.Random, text: str, n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        start = rng.randrange(len(text) - 300)
        rows.append({"text": text[start:start + 300], "embedding": [rng.gauss(0, 0.05) for _ in range(384)],
                     "model_name": "sentence-transformers/all-MiniLM-L6-v2"})
    return rows


def small_rows(n: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        instruction = f"write a short poem about topic number {i} in the style of a sonnet"
        rows.append({"id": i, "instruction": instruction, "length": len(instruction), "upper": instruction.upper()})
    return rows


def best_us(fn: Callable[[], Any], repeat: int, number: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - started) / number)
    return best * 1e6


def measure(name: str, rows: list[dict[str, Any]], repeat: int) -> dict[str, Any]:
    pickled = pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL)
    arrow = encode_columnar(rows)
    if arrow is None:
        raise AssertionError(f"{name}: expected an exact Arrow form")
    if decode(arrow) != rows or decode(pickled) != rows:
        raise AssertionError(f"{name}: a form did not read back as the rows")
    number = max(3, 2000 // len(rows))
    result = {
        "batch": name, "rows": len(rows),
        "pickle_bytes": len(pickled), "arrow_bytes": len(arrow),
        "pickle_encode_us": best_us(lambda: pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL), repeat, number),
        "arrow_encode_us": best_us(lambda: encode_columnar(rows), repeat, number),
        "pickle_decode_us": best_us(lambda: pickle.loads(pickled), repeat, number),
        "arrow_decode_us": best_us(lambda: decode(arrow), repeat, number),
    }
    result["size_ratio"] = result["arrow_bytes"] / result["pickle_bytes"]
    result["encode_ratio"] = result["arrow_encode_us"] / result["pickle_encode_us"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "batch_format.json")
    args = parser.parse_args()

    rng = random.Random(20261130)
    text = _prose()
    batches = [("llm x50", llm_rows(rng, text, 50)), ("embedding x50", embedding_rows(rng, text, 50)),
               ("small x50", small_rows(50)), ("small x1000", small_rows(1000))]
    results = [measure(name, rows, args.repeat) for name, rows in batches]

    print(f"stored batch forms: python {platform.python_version()}, best of {args.repeat}")
    header = (f"{'batch':>14} {'pickle B/row':>13} {'arrow B/row':>12} {'size':>6} "
              f"{'pickle us':>10} {'arrow us':>9} {'cpu':>6} {'read pickle':>12} {'read arrow':>11}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['batch']:>14} {r['pickle_bytes'] / r['rows']:>13,.0f} {r['arrow_bytes'] / r['rows']:>12,.0f} "
              f"{r['size_ratio']:>6.2f} {r['pickle_encode_us']:>10,.0f} {r['arrow_encode_us']:>9,.0f} "
              f"{r['encode_ratio']:>5.1f}x {r['pickle_decode_us']:>12,.0f} {r['arrow_decode_us']:>11,.0f}")
    print("size: arrow / pickle bytes; cpu: arrow / pickle time to make the stored form (per batch, us)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"python": sys.version, "platform": platform.platform(),
                                       "repeat": args.repeat, "results": results}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
