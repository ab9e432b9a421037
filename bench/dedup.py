"""Deduplication: ``MinHashDedup`` through a pipeline against datasketch in a plain loop.

The corpus: ``--rows`` synthetic texts (50 to 100 words from a 50,000-word vocabulary); a
``--dup-fraction`` of them are near-copies of an earlier original (one word changed, an
estimated Jaccard similarity of 0.96 to 0.98), so the duplicates are known. The same rows go
through:

* **loop**: datasketch as its documentation shows it, in this one process: a ``MinHash`` per
  row (same tokens, ``num_perm``, seed and threshold as the step), ``MinHashLSH.query`` then
  ``insert`` for the first occurrence;
* **pipeline**: ``LoadDataFromDicts >> MinHashDedup`` (``pipeline.run()``, workers, stored
  batches, the result dataset: everything a user waits for);
* **pipeline, 2 upstream replicas**: the same with a ``KeepColumns`` at ``replicas=2`` in front,
  so the rows reach the dedup from two processes (duplicates across replicas must be found);
* **MinHashDedup at replicas=2**: a global step runs as one replica; the bench records the
  refusal the pipeline gives.

Reported: recall and precision against the known duplicates, rows/s of each, and the
pipeline / loop ratio. The marks of every pipeline run must equal the loop's exactly.

    .venv/bin/python bench/dedup.py [--rows 100000]

Results go to stdout (a table) and to ``bench/results/dedup.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NUM_PERM, SEED, THRESHOLD = 128, 1, 0.9


def corpus(n: int, dup_fraction: float, seed: int = 0) -> tuple[list[dict[str, Any]], set[int]]:
    """``n`` rows ``{"id", "text"}`` and the ids of the near-copies (each placed after its original)."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(50_000)]
    rows: list[dict[str, Any]] = []
    originals: list[int] = []
    dups: set[int] = set()
    for i in range(n):
        if originals and rng.random() < dup_fraction:
            words = rows[rng.choice(originals)]["text"].split()
            words[rng.randrange(len(words))] = f"changed{i}"
            rows.append({"id": i, "text": " ".join(words)})
            dups.add(i)
        else:
            rows.append({"id": i, "text": " ".join(rng.choices(vocab, k=rng.randint(50, 100)))})
            originals.append(i)
    return rows, dups


def loop(texts: list[str]) -> tuple[list[bool], float]:
    """datasketch, one row at a time, in this process."""
    from datasketch import MinHash, MinHashLSH

    from synthpipe.steps.filtering._minhash_core import tokens

    start = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    keep = []
    for key, text in enumerate(texts):
        m = MinHash(num_perm=NUM_PERM, seed=SEED)
        m.update_batch([t.encode("utf-8") for t in set(tokens(text, "words", 5))])
        if lsh.query(m):
            keep.append(False)
        else:
            lsh.insert(key, m)
            keep.append(True)
    return keep, time.perf_counter() - start


def pipeline(rows: list[dict[str, Any]], batch: int, upstream_replicas: int = 0,
             dedup_replicas: int = 1) -> tuple[list[bool], float]:
    """``pipeline.run()`` wall time; ``upstream_replicas`` > 0 puts a ``KeepColumns`` with that many
    replicas in front of the dedup."""
    from synthpipe.pipeline import Pipeline
    from synthpipe.steps import KeepColumns, LoadDataFromDicts, MinHashDedup, StepResources

    os.environ["SYNTHPIPE_PROGRESS"] = "0"
    with tempfile.TemporaryDirectory(prefix="synthpipe-dedup-") as cache:
        with Pipeline(name=f"bench-dedup-{upstream_replicas}-{dedup_replicas}", cache_dir=cache) as p:
            node = LoadDataFromDicts(data=rows, batch_size=batch)
            if upstream_replicas:
                node = node >> KeepColumns(columns=["id", "text"], input_batch_size=batch,
                                           resources=StepResources(replicas=upstream_replicas))
            node >> MinHashDedup(num_perm=NUM_PERM, seed=SEED, threshold=THRESHOLD,
                                 resources=StepResources(replicas=dedup_replicas))
        start = time.perf_counter()
        ds = p.run(use_cache=False)["default"]["train"]
        wall = time.perf_counter() - start
        if ds["id"] != [r["id"] for r in rows]:
            raise AssertionError("the pipeline lost or reordered rows")
        return list(ds["keep_row_after_minhash_filtering"]), wall


def quality(keep: list[bool], dups: set[int]) -> dict[str, float]:
    marked = {i for i, k in enumerate(keep) if not k}
    hits = len(marked & dups)
    return {"marked": len(marked), "recall": hits / len(dups) if dups else 1.0,
            "precision": hits / len(marked) if marked else 1.0}


def measure(n: int, dup_fraction: float, batch: int) -> dict[str, Any]:
    rows, dups = corpus(n, dup_fraction)
    texts = [r["text"] for r in rows]
    results: list[dict[str, Any]] = []
    loop_keep, loop_s = loop(texts)
    results.append({"run": "datasketch loop", "wall_s": loop_s, "rows_per_s": n / loop_s,
                    **quality(loop_keep, dups), "same_marks_as_loop": True})
    for label, upstream in (("pipeline, replicas=1", 0), ("pipeline, 2 upstream replicas", 2)):
        keep, wall = pipeline(rows, batch, upstream_replicas=upstream)
        results.append({"run": label, "wall_s": wall, "rows_per_s": n / wall, **quality(keep, dups),
                        "same_marks_as_loop": keep == loop_keep, "ratio_to_loop": loop_s / wall})
    try:
        pipeline(rows[:10], batch, dedup_replicas=2)
        refused = None
    except Exception as exc:  # the refusal is the result
        refused = f"{type(exc).__name__}: {exc}"
    return {"benchmark": "synthpipe dedup", "rows": n, "true_duplicates": len(dups), "batch": batch,
            "num_perm": NUM_PERM, "threshold": THRESHOLD, "cpus": os.cpu_count(),
            "python": platform.python_version(), "results": results,
            "minhash_dedup_replicas_2": refused or "accepted"}


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{report['rows']:,} rows, {report['true_duplicates']:,} known near-duplicates, "
             f"num_perm {report['num_perm']}, threshold {report['threshold']}",
             "| run | rows/s | wall, s | ratio to loop | recall | precision | marks = loop's |",
             "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        ratio = f"{r['ratio_to_loop']:.2f}" if "ratio_to_loop" in r else "1.00"
        lines.append(f"| {r['run']} | {r['rows_per_s']:,.0f} | {r['wall_s']:.2f} | {ratio} | "
                     f"{r['recall']:.4f} | {r['precision']:.4f} | {'yes' if r['same_marks_as_loop'] else 'NO'} |")
    lines.append(f"MinHashDedup at replicas=2: {report['minhash_dedup_replicas_2']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dup-fraction", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "dedup.json")
    args = parser.parse_args(argv)
    report = measure(args.rows, args.dup_fraction, args.batch)
    print(format_table(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    return 0 if all(r["same_marks_as_loop"] for r in report["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
