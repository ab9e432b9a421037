"""Steps used by the engine tests. A module of its own so spawned workers can import it."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Any

from synthpipe.steps import GeneratorStep, GlobalStep, RuntimeParameter, Step, StepInput, step


@step(inputs=["instruction"], outputs=["length"])
def Measure(inputs: StepInput, factor: RuntimeParameter[int] = 1):
    for row in inputs:
        row["length"] = len(row["instruction"]) * factor
    yield inputs


@step(inputs=["instruction"], outputs=["upper"])
def Upper(inputs: StepInput):
    for row in inputs:
        row["upper"] = row["instruction"].upper()
    yield inputs


@step(inputs=["instruction"], outputs=["pid"])
def RecordPid(inputs: StepInput, delay: RuntimeParameter[float] = 0.0):
    if delay:
        time.sleep(delay)
    for row in inputs:
        row["pid"] = os.getpid()
    yield inputs


@step(inputs=["instruction"], outputs=["instruction"])
def KeepEven(inputs: StepInput):
    yield [row for row in inputs if int(row["instruction"][1:]) % 2 == 0]


@step(inputs=["length", "upper"], outputs=["length", "upper"])
def Join(*inputs: StepInput):
    """Merges two aligned branches row by row, checking they really are aligned."""
    left, right = inputs
    assert len(left) == len(right), (len(left), len(right))
    merged = []
    for a, b in zip(left, right, strict=True):
        assert a["instruction"] == b["instruction"], (a, b)
        merged.append({**a, **b})
    yield merged


@step(inputs=["instruction"], outputs=["total"], step_type="global")
def CountAll(inputs: StepInput):
    yield [{"instruction": "all", "total": len(inputs)}]


class Explode(Step):
    """Raises on the row whose instruction is ``bad``."""

    bad: str = "q7"

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["checked"]

    def process(self, inputs: StepInput):
        for row in inputs:
            if row["instruction"] == self.bad:
                raise ValueError(f"boom at row {row['instruction']}")
            row["checked"] = True
        yield inputs


class LockError(Exception):
    """Holds a lock: cannot be pickled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class NeedsTwoArgs(Exception):
    """Pickles, but cannot be rebuilt from its args (custom __init__)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


class Misbehave(Step):
    """Fails in the way ``mode`` says, on the batch holding ``at``."""

    mode: str = "raise"
    at: str = "q3"

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["out"]

    def load(self) -> None:
        if self.mode == "load":
            raise RuntimeError("cannot load the model")
        if self.mode == "load_exit":
            os._exit(7)

    def process(self, inputs: StepInput):
        if any(row["instruction"] == self.at for row in inputs):
            if self.mode == "raise":
                raise KeyError("missing thing")
            if self.mode == "lock":
                raise LockError("lock holder failed")
            if self.mode == "two_args":
                raise NeedsTwoArgs(42, "custom init")
            if self.mode == "exit":
                os._exit(3)
            if self.mode == "segfault":
                ctypes.string_at(0)
            if self.mode == "unpicklable":
                for row in inputs:
                    row["out"] = threading.Lock()
                yield inputs
                return
            if self.mode == "hang":
                time.sleep(3600)
        for row in inputs:
            row["out"] = row["instruction"]
        yield inputs


class FailingGenerator(GeneratorStep):
    fail_at_batch: int = 2

    @property
    def outputs(self) -> list[str]:
        return ["instruction"]

    def process(self, offset: int = 0):
        for batch in range(10):
            if batch == self.fail_at_batch:
                raise OSError("the source went away")
            yield [{"instruction": f"q{batch * 10 + i}"} for i in range(10)], batch == 9


class FailingGlobal(GlobalStep):
    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    def process(self, *inputs: StepInput):
        raise ZeroDivisionError("global went wrong")
        yield []


def rows(n: int) -> list[dict[str, Any]]:
    return [{"instruction": f"q{i}"} for i in range(n)]


@step(inputs=["instruction"], outputs=["instruction"])
def RebuildEven(inputs: StepInput):
    """Filters by building new dicts (the engine cannot trace these rows by identity)."""
    yield [{"instruction": row["instruction"]} for row in inputs if int(row["instruction"][1:]) % 2 == 0]


@step(inputs=["instruction"], outputs=["left", "right"])
def CollectBranches(*inputs: StepInput):
    """One row per join batch, listing the row numbers each branch delivered."""
    left, right = inputs
    yield [{"left": [int(r["instruction"][1:]) for r in left],
            "right": [int(r["instruction"][1:]) for r in right]}]
