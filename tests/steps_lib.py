"""Steps used by the engine tests. A module of its own so spawned workers can import it."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time
from typing import Any, ClassVar

from synthpipe.steps import GeneratorStep, GlobalStep, RuntimeParameter, Step, StepInput, step
from synthpipe.steps.base import StepResult


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


def misbehave(how: str, where: str) -> None:
    """Fail the way ``how`` says (the crash matrix's columns)."""
    if how == "raise_":
        raise RuntimeError("poison row")
    if how == "raise":
        raise ValueError(f"fault in {where}")
    if how == "unpicklable_exception":
        raise LockError(f"fault in {where}")
    if how == "unrebuildable_exception":
        raise NeedsTwoArgs(7, f"fault in {where}")
    if how == "exit":
        os._exit(3)
    if how == "segfault":
        ctypes.string_at(0)
    if how == "hang":
        time.sleep(3600)


class FaultyStep(Step):
    """Fails in ``load`` or ``process`` (on the batch holding ``at``) as ``how`` says."""

    how: str = "raise"
    where: str = "process"
    at: str = "q3"

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["out"]

    def load(self) -> None:
        if self.where == "load":
            misbehave(self.how, "load")

    def process(self, inputs: StepInput):
        if any(row["instruction"] == self.at for row in inputs):
            if self.how == "unpicklable_output":
                inputs[0]["out"] = threading.Lock()
                yield inputs
                return
            misbehave(self.how, "process")
        for row in inputs:
            row["out"] = row["instruction"]
        yield inputs


class FaultyGenerator(GeneratorStep):
    """Yields 10 batches of 5 rows, failing as ``how`` says in ``load`` or at batch 2."""

    how: str = "raise"
    where: str = "generator"

    @property
    def outputs(self) -> list[str]:
        return ["instruction"]

    def load(self) -> None:
        if self.where == "load":
            misbehave(self.how, "load")

    def process(self, offset: int = 0):
        for batch in range(10):
            rows = [{"instruction": f"q{batch * 5 + i}"} for i in range(5)]
            if batch == 2:
                if self.how == "unpicklable_output":
                    rows[0]["instruction"] = threading.Lock()
                else:
                    misbehave(self.how, "generator")
            yield rows, batch == 9


class FaultyGlobal(GlobalStep):
    how: str = "raise"

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    def process(self, *inputs: StepInput):
        if self.how == "unpicklable_output":
            yield [{"instruction": "all", "lock": threading.Lock()}]
            return
        misbehave(self.how, "global step")
        yield inputs[0]


class CrashOnce(Step):
    """os._exit on the batch holding ``at`` the first time only (a marker file remembers)."""

    marker: str
    at: str = "q5"

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    def process(self, inputs: StepInput):
        if any(row["instruction"] == self.at for row in inputs) and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(9)
        yield inputs


class FlakyStep(Step):
    """Raises on its first ``failures`` calls for the batch holding ``at`` (counted in a file)."""

    counter: str
    failures: int = 2
    at: str = "q5"

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["seen"]

    def process(self, inputs: StepInput):
        if any(row["instruction"] == self.at for row in inputs):
            with open(self.counter, "a+") as fh:
                fh.seek(0)
                calls = len(fh.read())
                fh.write("x")
            if calls < self.failures:
                raise ConnectionError(f"transient failure {calls + 1}")
        for row in inputs:
            row["seen"] = row.get("seen", 0) + 1
        yield inputs


class PoisonRows(Step):
    """Segfaults (or hangs) whenever a batch holds one of the ``poison`` rows."""

    poison: list[str] = ["q13"]
    how: str = "segfault"

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["ok"]

    def process(self, inputs: StepInput):
        if any(row["instruction"] in self.poison for row in inputs):
            misbehave(self.how, "process")
        for row in inputs:
            row["ok"] = True
        yield inputs


class SlowLoad(Step):
    seconds: float = 60.0

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    def load(self) -> None:
        time.sleep(self.seconds)

    def process(self, inputs: StepInput):
        yield inputs


class Sleepy(Step):
    """Sleeps ``seconds`` per batch; touches ``marker`` when its first batch starts."""

    seconds: float = 0.5
    marker: str = ""

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["slept"]

    def process(self, inputs: StepInput):
        if self.marker and not os.path.exists(self.marker):
            with open(self.marker, "w") as fh:
                fh.write(str(os.getpid()))
        time.sleep(self.seconds)
        for row in inputs:
            row["slept"] = True
        yield inputs


@step(inputs=["instruction"], outputs=["value"])
def YieldOddValue(inputs: StepInput, kind: str = "generator"):
    for row in inputs:
        if kind == "generator":
            row["value"] = (c for c in row["instruction"])
        else:
            row["value"] = open(os.devnull)  # noqa: SIM115 - the point is an open file in a row
    yield inputs


def _log_calls(path: str, tag: str, inputs: StepInput) -> None:
    if path:
        with open(path, "a") as fh:
            fh.write("".join(f"{tag}:{row['instruction']}\n" for row in inputs))


class CountingGenerator(GeneratorStep):
    """``total`` rows in batches of ``batch_size``; logs every row it yields to ``calls``."""

    total: int = 100
    calls: str = ""
    delay: float = 0.0

    @property
    def outputs(self) -> list[str]:
        return ["instruction", "n"]

    def process(self, offset: int = 0):
        for start in range(offset, self.total, self.batch_size):
            time.sleep(self.delay)
            rows = [{"instruction": f"q{i}", "n": i} for i in range(start, min(start + self.batch_size, self.total))]
            _log_calls(self.calls, self.name, rows)
            yield rows, start + self.batch_size >= self.total


class Counting(Step):
    """Adds ``tag`` to a column (a parameter that changes its output); logs each row it sees."""

    tag: RuntimeParameter[str] = "x"
    calls: str = ""
    delay: float = 0.0
    fail_every: int = 0  # rows whose n is a multiple of this raise (0: never)
    arrow_loaded: bool = False  # loads pyarrow and pandas, as model steps do: its batches are soon stored columnar

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return [self.name]

    def load(self) -> None:
        super().load()
        if self.arrow_loaded:
            import pandas  # noqa: F401
            import pyarrow  # noqa: F401

    def process(self, inputs: StepInput):
        time.sleep(self.delay)
        _log_calls(self.calls, self.name, inputs)
        if self.fail_every and any(row["n"] % self.fail_every == 0 for row in inputs):
            raise ValueError("unlucky batch")
        for row in inputs:
            row[self.name] = f"{self.tag}{row['n']}"
        yield inputs


@step(inputs=["instruction"], outputs=["joined"])
def JoinCounting(*inputs: StepInput):
    left, right = inputs
    by_n = {row["n"]: row for row in right}
    yield [{**row, **by_n.get(row["n"], {}), "joined": row["n"] in by_n} for row in left]


class GilHog(Step):
    """On the row ``at``, runs a regular expression that backtracks for minutes without ever
    releasing the GIL, so the worker cannot even read its pipe."""

    at: str = "q1"

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    def process(self, inputs: StepInput):
        import re

        if any(row["instruction"] == self.at for row in inputs):
            re.match(r"(a+)+$", "a" * 40 + "b")
        yield inputs


class SlowUnload(Step):
    """Sleeps ``seconds`` in unload(), after touching ``marker``."""

    seconds: float = 60.0
    marker: str = ""

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    def process(self, inputs: StepInput):
        yield inputs

    def unload(self) -> None:
        if self.marker:
            open(self.marker, "w").close()
        time.sleep(self.seconds)


class FailListed(Step):
    """Raises for a batch holding a row whose ``n`` is listed in the file ``bad`` (read on
    every batch, so a test can change what fails between runs without changing the step)."""

    bad: str = ""
    calls: str = ""

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return [self.name]

    def process(self, inputs: StepInput):
        _log_calls(self.calls, self.name, inputs)
        listed = {int(n) for n in open(self.bad).read().split()} if self.bad else set()
        hit = sorted(row["n"] for row in inputs if row["n"] in listed)
        if hit:
            raise ValueError(f"rows {hit} are listed as bad")
        for row in inputs:
            row[self.name] = f"ok{row['n']}"
        yield inputs


@step(inputs=["instruction"], outputs=["blob"])
def AddBytes(inputs: StepInput):
    for row in inputs:
        row["blob"] = row["instruction"].encode() + b"\x00\xff"
    yield inputs


class Shout(Step):
    """Stands in for a model step: ``delay`` seconds of work per batch, and (like many model
    steps) pyarrow and pandas loaded."""

    delay: RuntimeParameter[float] = 0.0

    @property
    def inputs(self) -> list[str]:
        return ["id", "instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["generation"]

    def load(self) -> None:
        super().load()
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401

    def process(self, inputs: StepInput):
        time.sleep(self.delay)
        for row in inputs:
            assert type(row["id"]) is int and type(row["instruction"]) is str, row
            row["generation"] = row["instruction"].upper() * 3
        yield inputs


class AsyncShout(Shout):
    """``Shout`` as an async step, several batches at once, like an LLM task."""

    is_async: ClassVar[bool] = True

    def batches_at_once(self) -> int:
        return 3

    async def aprocess(self, inputs: StepInput):
        await asyncio.sleep(self.delay)
        for row in inputs:
            assert type(row["id"]) is int and type(row["instruction"]) is str, row
            row["generation"] = row["instruction"].upper() * 3
        return StepResult(inputs, [])


@step(inputs=["id", "generation"], outputs=["pair", "pair_tag"])
def Pair(inputs: StepInput, tag: RuntimeParameter[str] = "x"):
    """Adds a tuple, a value Arrow cannot hold exactly (it would come back a list)."""
    for row in inputs:
        assert type(row["id"]) is int and type(row["generation"]) is str, row
        row["pair"] = (row["id"], len(row["generation"]))
        row["pair_tag"] = tag
    yield inputs


@step(inputs=["pair"], outputs=["check_tag"])
def CheckPair(inputs: StepInput, tag: RuntimeParameter[str] = "x"):
    for row in inputs:
        assert type(row["pair"]) is tuple, row
        row["check_tag"] = tag
    yield inputs


@step(inputs=["instruction"], outputs=["journaled"])
def Journal(inputs: StepInput, path: RuntimeParameter[str] = "", delay: RuntimeParameter[float] = 0.0):
    """Appends the batch's instructions to ``path`` once the batch is computed: what a resume
    recomputes shows as a line written twice."""
    time.sleep(delay)
    for row in inputs:
        row["journaled"] = True
    with open(path, "a") as fh:
        fh.write(" ".join(row["instruction"] for row in inputs) + "\n")
    yield inputs
