"""A routed pipeline for the routing tests, run as a program so it can be killed:
``python routing_pipeline.py CALLS_FILE``. ``pre``'s batches (7 rows) are routed to two of
three branches (batch sizes 3, 5 and 50: none has to match another) and converge in
``GroupColumns``; every step, and the routing function, logs what it is given."""

import random
import sys
import time

from steps_lib import CountingGenerator, _log_calls
from synthpipe.pipeline import Pipeline, routing_batch_function
from synthpipe.steps import GroupColumns, Step, StepInput

CALLS = {"path": ""}  # where route_two logs its calls (set by build)


class Branch(Step):
    """Marks each row with the step's name (the column the convergence step groups)."""

    calls: str = ""
    delay: float = 0.0

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["branch"]

    def process(self, inputs: StepInput):
        time.sleep(self.delay)
        _log_calls(self.calls, self.name, inputs)
        yield [{**row, "branch": self.name} for row in inputs]


@routing_batch_function
def route_two(steps: list[str]) -> list[str]:
    """Two of the steps, at random; each call is logged."""
    if CALLS["path"]:
        with open(CALLS["path"], "a") as fh:
            fh.write("route\n")
    return random.sample(steps, 2)


def build(calls: str = "", delay: float = 0.01, group_name: str = "branches") -> Pipeline:
    CALLS["path"] = calls
    with Pipeline(name="routed", stop_grace_seconds=5) as pipeline:
        gen = CountingGenerator(name="gen", total=140, batch_size=10, calls=calls, delay=delay / 2)
        pre = Branch(name="pre", calls=calls, delay=delay, input_batch_size=7)
        branches = [Branch(name=name, calls=calls, delay=delay, input_batch_size=size)
                    for name, size in (("a", 3), ("b", 5), ("c", 50))]
        group = GroupColumns(name="group", columns=["branch"], output_columns=[group_name], input_batch_size=4)
        gen >> pre >> route_two >> branches >> group
    return pipeline


if __name__ == "__main__":
    from routing_pipeline import build as imported  # its classes, not __main__'s: the same store as the tests'

    imported(sys.argv[1]).run()
    print("RUN FINISHED")
