"""Magpie SFT data: conversations drawn out of an aligned chat model with no seed data.

    python examples/magpie_sft.py                                                  # offline, tiny local model
    python examples/magpie_sft.py --base-url http://127.0.0.1:8080/v1 --model NAME --template llama3

Magpie renders the conversation so far with the model's chat template, appends the tokens that
open a user turn (``--template``: ``llama3``, ``qwen2`` or the literal tokens) and lets the model
write the user's message; the answer comes from an ordinary chat request. Against a server this
needs its ``/completions`` endpoint (llama.cpp's server, vLLM, TGI...) and the chat format of
the model it serves. Offline, a tiny random-weight Llama run by transformers is built here (no
model hub): the engine and the plumbing are real, **the text is noise**.
"""

from __future__ import annotations

import argparse

from synthpipe.models import LLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps.tasks import MagpieGenerator
from synthpipe.store.run_dir import default_cache_root

SYSTEM_PROMPTS = {
    "coding": ("You are a senior software engineer who answers programming questions.", 0.5),
    "maths": ("You are a maths tutor who explains each step.", 0.3),
    "writing": ("You are an editor who helps people write clearly.", 0.2),
}


def build_pipeline(llm: LLM, rows: int, turns: int) -> Pipeline:
    with Pipeline(name="magpie-sft", description="Magpie multi-turn SFT conversations") as pipeline:
        MagpieGenerator(name="magpie", llm=llm, num_rows=rows, batch_size=4, n_turns=turns,
                        system_prompt=SYSTEM_PROMPTS, include_system_prompt=True)
    return pipeline


def pick_llm(args: argparse.Namespace) -> LLM:
    if args.base_url:
        from synthpipe.models import OpenAILLM

        print(f"conversations come from {args.model} at {args.base_url} (/completions, {args.template} format)")
        return OpenAILLM(base_url=args.base_url, model=args.model or "default", max_concurrency=32,
                         magpie_pre_query_template=args.template)
    from synthpipe.models import TransformersLLM
    from synthpipe.testing.tiny_models import build_tiny_llama

    print("conversations come from a tiny random-weight Llama run by transformers: real engine, noise text")
    folder = default_cache_root() / "demo-models"
    # the tiny model's chat format opens a user turn with "<|user|>\n"
    return TransformersLLM(model=str(build_tiny_llama(folder / "tiny-llama")), device="cpu",
                           magpie_pre_query_template="<|user|>\n")


def main() -> None:
    parser = argparse.ArgumentParser(description="Magpie SFT data with synthpipe")
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint with /completions")
    parser.add_argument("--model", help="the model name the endpoint serves")
    parser.add_argument("--template", default="llama3", help="pre-query template: llama3, qwen2 or literal tokens")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--turns", type=int, default=2)
    args = parser.parse_args()
    llm = pick_llm(args)
    max_new_tokens = 512 if args.base_url else 16
    distiset = build_pipeline(llm, args.rows, args.turns).run(
        parameters={"magpie": {"llm": {"generation_kwargs": {"max_new_tokens": max_new_tokens}}}})
    rows = distiset["default"]["train"].to_list()
    print(distiset)
    for message in rows[0]["conversation"]:
        print(f"  {message['role']}: {message['content'][:80]!r}")
    print("system prompt used:", rows[0]["system_prompt_key"])
    print(f"{len(rows)} conversations; run directory: {distiset.run_dir}")


if __name__ == "__main__":
    main()
