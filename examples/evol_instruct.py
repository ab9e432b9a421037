"""Evol-Instruct: seed instructions made harder, several evolutions each, then answered.

    python examples/evol_instruct.py                                             # offline, tiny local model
    python examples/evol_instruct.py --base-url http://127.0.0.1:8000/v1 --model NAME   # a real endpoint

Offline, the LLM is ``TransformersLLM`` on a tiny random-weight Llama built here (no model hub):
the engine and the plumbing are real, **the text it writes is noise**. With ``--base-url`` and
``--model`` (and ``OPENAI_API_KEY`` where the server wants one) the same pipeline runs against any
OpenAI-compatible server. The result has ``evolved_instructions`` (every evolution) and
``answers``; a row whose request failed is in ``distiset.failed_rows`` with its error.
"""

from __future__ import annotations

import argparse

from synthpipe.models import LLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import EvolInstruct
from synthpipe.store.run_dir import default_cache_root

SEEDS = ["Write a function that reverses a string.", "Explain why the sky is blue.",
         "Plan a three-day trip to Rome.", "Summarise the causes of the First World War.",
         "Give me a recipe for bread.", "How do vaccines work?"]


def build_pipeline(llm: LLM, evolutions: int) -> Pipeline:
    with Pipeline(name="evol-instruct", description="Evol-Instruct (WizardLM) on seed instructions") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": s} for s in SEEDS], batch_size=3)
        load >> EvolInstruct(name="evol", llm=llm, num_evolutions=evolutions, store_evolutions=True,
                             generate_answers=True, input_batch_size=3)
    return pipeline


def pick_llm(args: argparse.Namespace) -> LLM:
    if args.base_url:
        from synthpipe.models import OpenAILLM

        print(f"answers come from {args.model} at {args.base_url}")
        return OpenAILLM(base_url=args.base_url, model=args.model or "default", max_concurrency=32)
    from synthpipe.models import TransformersLLM
    from synthpipe.testing.tiny_models import build_tiny_llama

    print("answers come from a tiny random-weight Llama run by transformers: real engine, noise text")
    folder = default_cache_root() / "demo-models"
    return TransformersLLM(model=str(build_tiny_llama(folder / "tiny-llama")), device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description="Evol-Instruct with synthpipe")
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="the model name the endpoint serves")
    parser.add_argument("--evolutions", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    args = parser.parse_args()
    llm = pick_llm(args)
    max_new_tokens = args.max_new_tokens or (512 if args.base_url else 16)
    distiset = build_pipeline(llm, args.evolutions).run(
        parameters={"evol": {"llm": {"generation_kwargs": {"max_new_tokens": max_new_tokens}}}})
    rows = distiset["default"]["train"].to_list()
    print(distiset)
    for row in rows[:2]:
        print("seed:", row["instruction"])
        for evolved, answer in zip(row["evolved_instructions"], row["answers"], strict=True):
            print("  evolved:", evolved[:100].replace("\n", " "), "| answer:", answer[:60].replace("\n", " "))
    print(f"{len(rows)} rows, {len(distiset.failed_rows)} failed rows; run directory: {distiset.run_dir}")


if __name__ == "__main__":
    main()
