"""Routing: each batch of instructions goes to two of three LLMs, picked at random per batch,
and their answers are grouped again row by row.

    python examples/routed_pipeline.py                               # offline (echo answers)
    python examples/routed_pipeline.py --base-url URL --model NAME   # a real endpoint (three
                                                                     # temperatures of one model)

``load >> sample_n_steps(2) >> [gen_a, gen_b, gen_c] >> group``: ``sample_n_steps(2)`` is the
routing batch function; every batch of ``load`` goes to exactly two of the generators, and
``GroupColumns`` (the convergence step) gets each batch back whole, one input per generator
that answered it, rows in their original order. The routing decision of each batch is stored
with it: run the script again after a Ctrl+C and every finished batch is routed as before.

Offline, the endpoint is synthpipe's test server on 127.0.0.1 (see examples/_offline.py),
whose answers echo the prompt with the model's name in front.
"""

from __future__ import annotations

import argparse
import collections
from typing import Any

from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline, sample_n_steps
from synthpipe.steps import GroupColumns, LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration

INSTRUCTIONS = [
    "Explain why the sky is blue in two sentences.",
    "Write a haiku about a lighthouse.",
    "Give three tips for keeping basil alive indoors.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the causes of the French Revolution in one paragraph.",
    "Suggest a name for a bakery that only sells bread.",
    "Describe the smell of rain to someone who has never smelt it.",
    "List four uses for a paperclip other than holding paper.",
    "Why do cats purr?",
    "Translate 'good morning' into French, Spanish and German.",
    "Write a one-line slogan for a bicycle repair shop.",
    "What does a compiler do?",
]


def build_pipeline(llms: list[OpenAILLM]) -> Pipeline:
    with Pipeline(name="routed-generations", description="two of three LLMs answer each batch") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": i} for i in INSTRUCTIONS], batch_size=3)
        generators = [TextGeneration(name=f"generate_{chr(ord('a') + i)}", llm=llm, input_batch_size=2)
                      for i, llm in enumerate(llms)]
        group = GroupColumns(name="group", columns=["generation", "model_name"],
                             output_columns=["generations", "model_names"])
        load >> sample_n_steps(2) >> generators >> group
    return pipeline


def _offline_answer(body: dict[str, Any]) -> str | None:
    from _offline import user_text

    return f"[{body.get('model')}] {user_text(body)[:60]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="the model to ask (three temperatures of it)")
    args = parser.parse_args()
    server = None
    if args.base_url:
        base_url, names = args.base_url, [args.model or "default"] * 3
    else:
        from _offline import scripted_server

        server = scripted_server(_offline_answer)
        base_url, names = server.base_url, ["offline-a", "offline-b", "offline-c"]
        print(f"offline: synthpipe's test server at {base_url}")
    llms = [OpenAILLM(base_url=base_url, model=name, max_concurrency=8,
                      generation_kwargs={"max_new_tokens": 128, "temperature": t})
            for name, t in zip(names, (0.2, 0.7, 1.0), strict=True)]
    try:
        distiset = build_pipeline(llms).run()
    finally:
        if server is not None:
            server.stop()
    train = distiset["default"]["train"]
    print(distiset)
    for row in train:
        print(f"- {row['instruction'][:45]!r}: answered by {row['model_names']}")
    print("answers per model:", dict(collections.Counter(m for row in train for m in row["model_names"])))
    print("run directory:", distiset.run_dir)


if __name__ == "__main__":
    main()
