"""Prometheus evaluation: grade answers on a rubric (absolute, 1-5, against a reference) and
pick the better of two (relative, A or B).

    python examples/prometheus_eval.py                                # offline (scripted grader)
    python examples/prometheus_eval.py --base-url URL --model NAME    # a real endpoint
    python examples/prometheus_eval.py --base-url URL --model NAME --rubric helpfulness

The method of Kim et al., 2024 (Prometheus 2, arXiv:2405.01535). ``--rubric`` picks a built-in
rubric (helpfulness, harmlessness, honesty, factual-validity, reasoning) or ``conciseness``, a
custom one defined here, to show how your own rubric is passed.

Offline, the endpoint is synthpipe's test server on 127.0.0.1 (see examples/_offline.py) and
the grades are scripted (a response that repeats the reference scores 5, the longer of two
responses wins). Every other part is real: the requests, the structured output asked for and
validated, parsing, failed rows, the Distiset.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from synthpipe.models import LLM, OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import PrometheusEval

ROWS = [
    {"instruction": "What is the boiling point of water at sea level in Celsius?",
     "generation": "100 degrees Celsius.", "reference": "100 degrees Celsius.",
     "generations": ["About 90 degrees.", "100 degrees Celsius, at one atmosphere of pressure."]},
    {"instruction": "Name the largest planet in the Solar System.",
     "generation": "Saturn.", "reference": "Jupiter.",
     "generations": ["Jupiter, more than twice as massive as all the other planets together.", "Saturn."]},
    {"instruction": "How many sides does a hexagon have?",
     "generation": "Six.", "reference": "Six.",
     "generations": ["Six sides.", "A hexagon has six sides and six angles."]},
]

CUSTOM_RUBRICS = {"conciseness": (
    "[Does the response answer with no more words than it needs?]\n"
    "Score 1: Mostly padding; the answer is hard to find.\n"
    "Score 2: Long-winded, with much that is not needed.\n"
    "Score 3: Some needless parts.\n"
    "Score 4: Nearly as short as it can be.\n"
    "Score 5: Every word is needed.")}


def build_pipeline(llm: LLM, rubric: str) -> Pipeline:
    with Pipeline(name="prometheus-eval", description="absolute and relative grading") as pipeline:
        load = LoadDataFromDicts(data=ROWS)
        absolute = PrometheusEval(name="absolute", llm=llm, mode="absolute", rubric=rubric,
                                  rubrics=CUSTOM_RUBRICS, reference=True)
        relative = PrometheusEval(name="relative", llm=llm, mode="relative", rubric=rubric,
                                  rubrics=CUSTOM_RUBRICS)
        load >> [absolute, relative]
    return pipeline


def _section(prompt: str, title: str) -> str:
    match = re.search(rf"### {title}\n(.*?)\n\n", prompt, re.S)
    return match.group(1).strip() if match else ""


def _scripted_grader(body: dict[str, Any]) -> str | None:
    prompt = "\n".join(str(m.get("content")) for m in body.get("messages") or [])
    if "### Response A" in prompt:
        a, b = _section(prompt, "Response A"), _section(prompt, "Response B")
        feedback, result = "The longer response gives more of what was asked.", "A" if len(a) >= len(b) else "B"
    else:
        same = _section(prompt, "Response") == _section(prompt, r"Reference answer \(.*?\)")
        feedback, result = ("It matches the reference." if same else "It differs from the reference."), 5 if same else 2
    if (body.get("response_format") or {}).get("type") == "json_schema":
        return json.dumps({"feedback": feedback, "result": result})
    return f"Feedback: {feedback} [RESULT] {result}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="the grader model the endpoint serves (a Prometheus 2 model fits best)")
    parser.add_argument("--rubric", default="factual-validity",
                        choices=["helpfulness", "harmlessness", "honesty", "factual-validity", "reasoning",
                                 *CUSTOM_RUBRICS])
    args = parser.parse_args()
    server = None
    if args.base_url:
        llm = OpenAILLM(base_url=args.base_url, model=args.model or "default", max_concurrency=16)
    else:
        from _offline import scripted_server

        server = scripted_server(_scripted_grader)
        llm = OpenAILLM(base_url=server.base_url, model="offline-grader", max_concurrency=16)
        print(f"offline: synthpipe's test server at {server.base_url} (scripted grades)")
    try:
        distiset = build_pipeline(llm, args.rubric).run()
    finally:
        if server is not None:
            server.stop()
    print(distiset)
    for name in ("absolute", "relative"):
        if name not in distiset:
            continue
        for row in distiset[name]["train"]:
            print(f"[{name}] {row['instruction'][:45]!r}: result {row['result']!r} - {row['feedback']}")
    print(f"{len(distiset.failed_rows)} row(s) failed (kept in the failed-rows ledger with the raw answer)")
    print("run directory:", distiset.run_dir)


if __name__ == "__main__":
    main()
