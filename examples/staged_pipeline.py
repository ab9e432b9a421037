"""Load stages: two local models that would not fit in memory together, one after the other.

    python examples/staged_pipeline.py                                  # offline, two tiny local models
    python examples/staged_pipeline.py --writer PATH --reviewer PATH --device cuda

``load >> write >> review``: ``write`` answers each instruction with one model, ``review``
rewrites each answer with another. ``run(load_groups=[["write"], ["review"]])`` makes two
stages: the reviewer's model is loaded only once every worker of the writer's stage has
unloaded its model and exited, so a GPU holds one model at a time. The writer's answers reach
the reviewer from disk, as stored batches; a Ctrl+C in either stage stops the run at once, and
running the script again reuses every finished batch (a finished stage does not load its
model again).

Offline, both models are tiny random-weight Llamas run by transformers, built here (no model
hub): the engine, the stages and the plumbing are real, **the text is noise**. The script ends by
printing when each step computed its batches, from the run's ``batches.jsonl``: the windows of
the two stages do not overlap.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from synthpipe.models import LLM, TransformersLLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration
from synthpipe.store.run_dir import default_cache_root

INSTRUCTIONS = [
    "Explain what a hash table is.",
    "Write a limerick about a cat who learns to code.",
    "Give two reasons to back up your files.",
    "What is the boiling point of water at the top of Everest, roughly?",
    "Describe a sunrise in one sentence.",
    "How do vaccines train the immune system?",
    "Suggest a title for a book about tidal pools.",
    "What is the difference between weather and climate?",
]

REVIEW_TEMPLATE = """Here is a question and an answer to it.

Question: {{ instruction }}
Answer: {{ answer }}

Rewrite the answer so that it is correct, clear and concise."""


def build_pipeline(writer: LLM, reviewer: LLM) -> Pipeline:
    with Pipeline(name="staged-write-review", description="one model writes, another reviews") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": i} for i in INSTRUCTIONS], batch_size=4)
        write = TextGeneration(name="write", llm=writer, input_batch_size=4,
                               output_mappings={"generation": "answer", "model_name": "writer_model"})
        review = TextGeneration(name="review", llm=reviewer, template=REVIEW_TEMPLATE,
                                columns=["instruction", "answer"], input_batch_size=4,
                                output_mappings={"generation": "reviewed", "model_name": "reviewer_model"})
        load >> write >> review
    return pipeline


def pick_llms(args: argparse.Namespace) -> tuple[LLM, LLM]:
    if args.writer and args.reviewer:
        print(f"writer: {args.writer}; reviewer: {args.reviewer}; device {args.device}")
        return (TransformersLLM(model=args.writer, device=args.device),
                TransformersLLM(model=args.reviewer, device=args.device))
    from synthpipe.testing.tiny_models import build_tiny_llama

    print("writer and reviewer: two tiny random-weight Llamas run by transformers: real engine, noise text")
    folder = default_cache_root() / "demo-models"
    path = str(build_tiny_llama(folder / "tiny-llama"))
    # two instances of one tiny model: what the example shows is when each is loaded
    return TransformersLLM(model=path, device="cpu"), TransformersLLM(model=path, device="cpu")


def stage_windows(run_dir: Path) -> dict[str, tuple[float, float]]:
    """Per step, when its first batch started and its last one ended (this run's batches)."""
    windows: dict[str, tuple[float, float]] = {}
    for line in (Path(run_dir) / "batches.jsonl").read_text().splitlines():
        batch = json.loads(line)
        start, end = windows.get(batch["step"], (batch["start"], batch["end"]))
        windows[batch["step"]] = (min(start, batch["start"]), max(end, batch["end"]))
    return windows


def main() -> None:
    parser = argparse.ArgumentParser(description="two local models in two load stages")
    parser.add_argument("--writer", help="a local model folder (or Hub id) for the writer")
    parser.add_argument("--reviewer", help="a local model folder (or Hub id) for the reviewer")
    parser.add_argument("--device", default="cuda", help="where the two models run (with --writer/--reviewer)")
    args = parser.parse_args()
    writer, reviewer = pick_llms(args)
    max_new_tokens = 256 if args.writer else 12
    distiset = build_pipeline(writer, reviewer).run(
        load_groups=[["write"], ["review"]],
        parameters={name: {"llm": {"generation_kwargs": {"max_new_tokens": max_new_tokens}}}
                    for name in ("write", "review")})
    rows = distiset["default"]["train"].to_list()
    print(distiset)
    for row in rows[:2]:
        print(f"  {row['instruction']!r}\n    written:  {row['answer'][:70]!r}\n    reviewed: {row['reviewed'][:70]!r}")
    windows = stage_windows(distiset.run_dir)
    for step in ("write", "review"):
        if step in windows:
            start, end = windows[step]
            print(f"{step:>6} computed its batches from {time.strftime('%H:%M:%S', time.localtime(start))}"
                  f".{int(start % 1 * 1000):03d} to {time.strftime('%H:%M:%S', time.localtime(end))}"
                  f".{int(end % 1 * 1000):03d}")
        else:
            print(f"{step:>6}: every batch reused from an earlier run")
    print(f"{len(rows)} rows; run directory: {distiset.run_dir}")


if __name__ == "__main__":
    main()
