"""A TextGeneration pipeline as a program, for tests that kill it: one batch of ``rows``
rows, ``concurrency`` requests at a time. Prints RUN FINISHED at the end."""

from __future__ import annotations

import sys

from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration


def build(base_url: str, rows: int, concurrency: int) -> Pipeline:
    with Pipeline(name="llm-program") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": f"question {i}"} for i in range(rows)], batch_size=rows)
        llm = OpenAILLM(model="test-model", base_url=base_url, api_key="sk-x", max_concurrency=concurrency)
        load >> TextGeneration(name="gen", llm=llm, input_batch_size=rows)
    return pipeline


if __name__ == "__main__":
    result = build(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])).run()
    print("RUN FINISHED", result["default"]["train"].num_rows, flush=True)
