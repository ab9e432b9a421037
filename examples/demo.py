"""An offline demo pipeline: no network, no model; it shows the engine end to end.

    python examples/demo.py

Rows flow from a generator through two branches that run in parallel worker processes
(one with two replicas), are joined back row by row in their original order, pass a step
whose failures are skipped and recorded, and end in a Distiset.
"""

from __future__ import annotations

import random

from synthpipe.pipeline import Pipeline
from synthpipe.steps import GlobalStep, LoadDataFromDicts, RuntimeParameter, StepInput, StepResources, step

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


with Pipeline(name="offline-demo", description="synthpipe's engine, end to end, offline") as pipeline:
    load = LoadDataFromDicts(
        data=[{"id": i, "topic": TOPICS[i % len(TOPICS)]} for i in range(2_000)], batch_size=200
    )
    write = WriteInstruction(input_batch_size=50, resources=StepResources(replicas=2))
    rate = RateDifficulty(input_batch_size=100)
    combine = Combine()
    gate = QualityGate(input_batch_size=25, on_error="skip")
    dedup = Deduplicate()
    load >> [write, rate] >> combine >> gate >> dedup


if __name__ == "__main__":
    distiset = pipeline.run(parameters={write.name: {"style": "with an example"}})
    train = distiset["default"]["train"]
    print(distiset)
    print("first row:", train[0])
    print(f"{len(distiset.failed_rows)} rows failed the gate (a whole batch fails together) and were kept")
    print("in the failed-rows ledger with their error, e.g.:")
    if distiset.failed_rows:
        first = distiset.failed_rows[0]
        print(f"  step {first['step']}, row {first['row']}: {first['error_type']}: {first['message']}")
    print("run directory:", distiset.run_dir)
