"""A MinHashDedup pipeline for the dedup resume test, run as a program so it can be killed:
``python -c "import dedup_resume_pipeline as m; m.main()" CALLS PAUSE_AT``.

``gen >> spread (2 replicas) >> dedup >> after``; every step logs the rows it processes to
CALLS. PAUSE_AT is ``dedup`` or ``after`` (or ``none``): that step logs ``<step>:start`` and
then sleeps, so the test can SIGKILL the run once everything before it is finished and
durable. The pause is read from the environment, not a parameter, so the resumed run is the
same pipeline (same signatures) as the killed one."""

from __future__ import annotations

import os
import random
import sys
import time

from synthpipe.pipeline import Pipeline
from synthpipe.steps import GeneratorStep, MinHashDedup, Step, StepInput, StepResources

PAUSE_ENV = "SYNTHPIPE_TEST_PAUSE_AT"
TOTAL = 300


def texts() -> list[str]:
    """Unique 30-word texts, each fifth one a near-copy (one word changed) of an earlier one."""
    rng = random.Random(11)
    words = [f"w{i}" for i in range(3000)]
    out: list[str] = []
    for i in range(TOTAL):
        if i % 5 == 4:
            copy = out[rng.randrange(i - 3)].split()
            copy[rng.randrange(len(copy))] = f"changed{i}"
            out.append(" ".join(copy))
        else:
            out.append(" ".join(rng.choices(words, k=30)))
    return out


def _log(calls: str, step: str, rows: list[dict]) -> None:
    with open(calls, "a") as fh:
        fh.write("".join(f"{step}:{row['n']}\n" for row in rows))


def _pause(calls: str, step: str) -> None:
    if os.environ.get(PAUSE_ENV) == step:
        with open(calls, "a") as fh:
            fh.write(f"{step}:start\n")
        time.sleep(120)  # the test kills the run long before


class Texts(GeneratorStep):
    calls: str = ""

    @property
    def outputs(self) -> list[str]:
        return ["n", "text"]

    def process(self, offset: int = 0):
        all_texts = texts()
        for start in range(offset, TOTAL, self.batch_size):
            rows = [{"n": i, "text": all_texts[i]} for i in range(start, min(start + self.batch_size, TOTAL))]
            _log(self.calls, self.name, rows)
            yield rows, start + self.batch_size >= TOTAL


class Logged(Step):
    calls: str = ""

    @property
    def inputs(self) -> list[str]:
        return ["n"]

    def process(self, inputs: StepInput):
        _pause(self.calls, self.name)
        _log(self.calls, self.name, inputs)
        yield inputs


class LoggedDedup(MinHashDedup):
    """MinHashDedup, logging the rows it marks (and pausing when told)."""

    calls: str = ""

    def process(self, inputs: StepInput):
        _pause(self.calls, self.name)
        _log(self.calls, self.name, inputs)
        yield from super().process(inputs)


def build(calls: str) -> Pipeline:
    with Pipeline(name="dedup-resume") as pipeline:
        gen = Texts(name="gen", calls=calls, batch_size=20)
        spread = Logged(name="spread", calls=calls, input_batch_size=7, resources=StepResources(replicas=2))
        dedup = LoggedDedup(name="dedup", calls=calls, threshold=0.8)
        after = Logged(name="after", calls=calls, input_batch_size=50)
        gen >> spread >> dedup >> after
    return pipeline


def main() -> None:
    calls, pause_at = sys.argv[1], sys.argv[2]
    if pause_at != "none":
        os.environ[PAUSE_ENV] = pause_at
    rows = build(calls).run()["default"]["train"].to_list()
    print("MARKS", "".join("1" if r["keep_row_after_minhash_filtering"] else "0" for r in rows))
    print("RUN FINISHED")
