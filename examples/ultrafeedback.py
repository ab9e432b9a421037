"""An UltraFeedback preference dataset: two LLMs answer each instruction, a judge rates both.

    python examples/ultrafeedback.py                                   # offline (scripted judge)
    python examples/ultrafeedback.py --base-url URL --model NAME       # a real endpoint
    python examples/ultrafeedback.py --base-url URL --model NAME --model-b OTHER --judge JUDGE

The recipe of Cui et al., 2023 (UltraFeedback, arXiv:2310.01377): instructions, several
models' answers, one judge's 1-5 ratings with rationales per answer ("overall-rating" here;
``--aspect`` picks helpfulness, honesty, instruction-following or truthfulness), and
``FormatTextGenerationDPO`` turning them into a DPO dataset: the best-rated answer as
``chosen``, the worst as ``rejected``, with their ratings and models.

Offline, the endpoint is synthpipe's test server on 127.0.0.1 (see examples/_offline.py): the
generators echo (B at more length), the judge's ratings are scripted (longer answer, higher rating). Every
other part is real: the requests, the structured output asked for and validated, parsing,
failed rows, the Distiset.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from synthpipe.models import LLM, OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import FormatTextGenerationDPO, GroupColumns, LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration, UltraFeedback

INSTRUCTIONS = [
    "Explain why the sky is blue in two sentences.",
    "Write a haiku about a lighthouse.",
    "Give three tips for keeping basil alive indoors.",
    "What is the difference between a list and a tuple in Python?",
    "Summarise the causes of the French Revolution in one paragraph.",
    "Suggest a name for a bakery that only sells bread.",
]


def build_pipeline(llm_a: LLM, llm_b: LLM, judge: LLM, aspect: str) -> Pipeline:
    with Pipeline(name="ultrafeedback", description="two LLMs answer, UltraFeedback rates") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": i} for i in INSTRUCTIONS])
        gen_a = TextGeneration(name="generate_a", llm=llm_a, input_batch_size=4)
        gen_b = TextGeneration(name="generate_b", llm=llm_b, input_batch_size=4)
        combine = GroupColumns(name="combine", columns=["generation", "model_name"],
                               output_columns=["generations", "generation_models"])
        rate = UltraFeedback(name="ultrafeedback", llm=judge, aspect=aspect, input_batch_size=4)
        to_dpo = FormatTextGenerationDPO(name="format_dpo")
        load >> [gen_a, gen_b] >> combine >> rate >> to_dpo
    return pipeline


def _scripted_judge(body: dict[str, Any]) -> str | None:
    """Offline: generator B answers at more length than A's echo; the judge rates each text by
    its length (1-5), in the format the prompt asked for."""
    if body.get("model") == "offline-b":
        return f"{body['messages'][-1]['content']} Here is a longer answer, with more detail and an example."
    if body.get("model") != "offline-judge":
        return None
    prompt = "\n".join(str(m.get("content")) for m in body.get("messages") or [])
    texts = re.findall(r"<text (\d+)>\n(.*?)\n</text \1>", prompt, re.S)
    rated = [(n, min(5, 1 + len(t) // 20), f"text {n} is {len(t)} characters long") for n, t in texts]
    if (body.get("response_format") or {}).get("type") == "json_schema":
        from _offline import dumps

        typed = "type_rationale" in str(body["response_format"])
        items = [{"rating": r, "rationale": why} | ({"type": 1, "type_rationale": "clear"} if typed else {})
                 for _, r, why in rated]
        return dumps({"assessments": items})
    return "\n".join(f"#### Output for Text {n}\nRating: {r}\nRationale: {why}\n" for n, r, why in rated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="the first generator (and, by default, the second and the judge)")
    parser.add_argument("--model-b", help="the second generator (default: --model)")
    parser.add_argument("--judge", help="the judge model (default: --model)")
    parser.add_argument("--aspect", default="overall-rating",
                        choices=["overall-rating", "helpfulness", "honesty", "instruction-following", "truthfulness"])
    args = parser.parse_args()
    server = None
    if args.base_url:
        base_url, model = args.base_url, args.model or "default"
        names = (model, args.model_b or model, args.judge or model)
    else:
        from _offline import scripted_server

        server = scripted_server(_scripted_judge)
        base_url, names = server.base_url, ("offline-a", "offline-b", "offline-judge")
        print(f"offline: synthpipe's test server at {base_url} (echo answers, scripted judge)")
    llm_a, llm_b, judge = (OpenAILLM(base_url=base_url, model=name, max_concurrency=16) for name in names)
    try:
        distiset = build_pipeline(llm_a, llm_b, judge, args.aspect).run(
            parameters={"generate_a": {"llm": {"generation_kwargs": {"max_new_tokens": 256, "temperature": 0.7}}},
                        "generate_b": {"llm": {"generation_kwargs": {"max_new_tokens": 256, "temperature": 0.9}}}})
    finally:
        if server is not None:
            server.stop()
    train = distiset["default"]["train"]
    print(distiset)
    for row in train:
        print(f"- {row['prompt'][:50]!r}: ratings {row['ratings']} for {row['generation_models']}; "
              f"chosen {row['chosen_model']} ({row['chosen_rating']}), rejected {row['rejected_model']} "
              f"({row['rejected_rating']})")
    print(f"{len(distiset.failed_rows)} row(s) failed (kept in the failed-rows ledger with the judge's raw answer)")
    print("run directory:", distiset.run_dir)


if __name__ == "__main__":
    main()
