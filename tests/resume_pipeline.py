"""A pipeline for the resume tests, run as a program so it can be killed:
``python resume_pipeline.py CALLS_FILE [TAG]``. Every step logs the rows it processes; most
batches of "b" are stored columnar (Arrow), the others' pickled, so a resume reads both."""

import sys

from steps_lib import Counting, CountingGenerator, JoinCounting
from synthpipe.pipeline import Pipeline
from synthpipe.steps import StepResources


def build(calls: str, tag: str = "x", delay: float = 0.01) -> Pipeline:
    with Pipeline(name="resume", stop_grace_seconds=5) as pipeline:
        gen = CountingGenerator(name="gen", total=240, batch_size=10, calls=calls, delay=delay / 2)
        a = Counting(name="a", calls=calls, delay=delay, input_batch_size=7, resources=StepResources(replicas=2))
        b = Counting(name="b", calls=calls, tag=tag, delay=delay, input_batch_size=5, arrow_loaded=True)
        c = Counting(name="c", calls=calls, delay=delay, input_batch_size=11, fail_every=37, on_error="skip")
        join = JoinCounting(name="join", input_batch_size=50)
        gen >> a >> [b, c] >> join
    return pipeline


if __name__ == "__main__":
    build(sys.argv[1], *(sys.argv[2:3])).run()
    print("RUN FINISHED")
