"""An offline demo pipeline: no network; a real local LLM engine on a tiny model built here.

    python examples/demo.py                                        # offline, tiny local model
    python examples/demo.py --base-url http://127.0.0.1:8000/v1 --model NAME   # a real endpoint

Rows flow from a generator through two branches that run in parallel worker processes
(one with two replicas), are joined back row by row in their original order, pass a step
whose failures are skipped and recorded, are deduplicated by a global step, and are answered
by an LLM (``TextGeneration``), ending in a Distiset.

Offline, the LLM is ``TransformersLLM`` on a tiny Llama with random weights that this script
builds (no model hub is needed): the engine, the chat template and the batching are real,
**the text it writes is noise**. Give ``--base-url`` and ``--model`` (and ``OPENAI_API_KEY``
where the server wants one) to send the same prompts to any OpenAI-compatible server instead:
OpenAI, vLLM, llama.cpp's server, Ollama, TGI...
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from synthpipe.models import LLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import GlobalStep, LoadDataFromDicts, RuntimeParameter, StepInput, StepResources, step
from synthpipe.steps.tasks import TextGeneration
from synthpipe.store.run_dir import default_cache_root

TOPICS = ["tides", "volcanoes", "bread", "comets", "bees", "glaciers", "jazz", "maps"]


@step(inputs=["topic"], outputs=["instruction"])
def WriteInstruction(inputs: StepInput, style: RuntimeParameter[str] = "plain"):
    """Stands in for an LLM writing a prompt about the topic."""
    for row in inputs:
        row["instruction"] = f"Explain {row['topic']} to a child ({style})."
    yield inputs


@step(inputs=["topic"], outputs=["difficulty"])
def RateDifficulty(inputs: StepInput):
    for row in inputs:
        row["difficulty"] = random.Random(row["topic"] + str(row["id"])).randint(1, 5)
    yield inputs


@step(inputs=["instruction", "difficulty"], outputs=["instruction", "difficulty"])
def Combine(*branches: StepInput):
    """Receives one list per branch, aligned row by row."""
    instructions, ratings = branches
    yield [{**a, **b} for a, b in zip(instructions, ratings, strict=True)]


@step(inputs=["instruction"], outputs=["checked"])
def QualityGate(inputs: StepInput):
    for row in inputs:
        if row["id"] in (13, 1313):
            raise ValueError(f"row {row['id']} failed the quality gate")
        row["checked"] = True
    yield inputs


class Deduplicate(GlobalStep):
    """A global step: sees every row at once, keeps the first of each (instruction, difficulty)."""

    @property
    def inputs(self) -> list[str]:
        return ["instruction", "difficulty"]

    def process(self, inputs: StepInput):
        seen: set[tuple[str, int]] = set()
        unique = []
        for row in inputs:
            key = (row["instruction"], row["difficulty"])
            if key not in seen:
                seen.add(key)
                unique.append(row)
        yield unique


def build_pipeline(llm: LLM) -> tuple[Pipeline, str]:
    with Pipeline(name="offline-demo", description="synthpipe end to end, offline") as pipeline:
        load = LoadDataFromDicts(
            data=[{"id": i, "topic": TOPICS[i % len(TOPICS)]} for i in range(2_000)], batch_size=200
        )
        write = WriteInstruction(input_batch_size=50, resources=StepResources(replicas=2))
        rate = RateDifficulty(input_batch_size=100)
        combine = Combine()
        gate = QualityGate(input_batch_size=25, on_error="skip")
        dedup = Deduplicate()
        answer = TextGeneration(name="answer", llm=llm, input_batch_size=8,
                                system_prompt="You are a patient teacher.")
        load >> [write, rate] >> combine >> gate >> dedup >> answer
    return pipeline, write.name


def local_llm(folder: Path) -> LLM:
    """A real transformers engine on a tiny random Llama built here (its text is noise)."""
    from synthpipe.models import TransformersLLM
    from synthpipe.testing.tiny_models import build_tiny_llama

    return TransformersLLM(model=str(build_tiny_llama(folder / "tiny-llama")), device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description="synthpipe's offline demo")
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", help="the model name the endpoint serves")
    args = parser.parse_args()
    folder = default_cache_root() / "demo-models"  # built once; the same weights every time
    if args.base_url:
        from synthpipe.models import OpenAILLM

        llm: LLM = OpenAILLM(base_url=args.base_url, model=args.model or "default", max_concurrency=32)
        print(f"answers come from {args.model} at {args.base_url}")
    else:
        llm = local_llm(folder)
        print("answers come from a tiny random-weight Llama run by transformers: real engine, noise text")
    pipeline, write = build_pipeline(llm)
    distiset = pipeline.run(parameters={write: {"style": "with an example"},
                                        "answer": {"llm": {"generation_kwargs": {"max_new_tokens": 24}}}})
    train = distiset["default"]["train"]
    print(distiset)
    first = train[0]
    print("first row:", {k: v for k, v in first.items() if k != "synthpipe_metadata"})
    print("token counts of its answer:", first["synthpipe_metadata"]["statistics_answer"])
    print(f"{len(distiset.failed_rows)} rows failed the gate (a whole batch fails together) and were kept")
    print("in the failed-rows ledger with their error, e.g.:")
    if distiset.failed_rows:
        failed = distiset.failed_rows[0]
        print(f"  step {failed['step']}, row {failed['row']}: {failed['error_type']}: {failed['message']}")
    print("run directory:", distiset.run_dir)


if __name__ == "__main__":
    main()
