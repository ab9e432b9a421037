"""A pipeline for the load-stage tests, also run as a program so it can be signalled or killed:
``python stages_pipeline.py LOG MODE``. Every step appends what it does to LOG, one JSON line
each: its load() and unload() (with the time and its pid) and every row it processes, so a test
can tell when each stage's workers lived and that no row was computed twice.

MODE: ``groups`` ([[gen, a], [b, c], [d]]), ``sequential``, ``crash`` (groups, and "c" kills its
worker with os._exit once, on the batch holding row 13), ``crash_always`` (every time), ``slow``
(groups, slow batches: for signals)."""

from __future__ import annotations

import json
import os
import sys
import time

from synthpipe.pipeline import Pipeline
from synthpipe.steps import GeneratorStep, Step, StepInput


def record(log: str, **event: object) -> None:
    """One line, written in one call: lines of several processes never interleave."""
    line = json.dumps({**event, "pid": os.getpid(), "t": time.time()}) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def live_pids(log: str) -> list[int]:
    """The pids in LOG (of workers loaded so far) still running: not ended, not a zombie."""
    if not os.path.exists(log):
        return []
    pids = {json.loads(line)["pid"] for line in open(log) if line.strip()} - {os.getpid()}
    alive = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


def record_load(log: str, name: str) -> None:
    record(log, step=name, event="load", alive=live_pids(log))


class ProbeGenerator(GeneratorStep):
    log: str = ""
    total: int = 60

    @property
    def outputs(self) -> list[str]:
        return ["instruction", "n"]

    def load(self) -> None:
        super().load()
        record_load(self.log, self.name)

    def unload(self) -> None:
        record(self.log, step=self.name, event="unload")

    def process(self, offset: int = 0):
        for start in range(offset, self.total, self.batch_size):
            rows = [{"instruction": f"q{i}", "n": i} for i in range(start, min(start + self.batch_size, self.total))]
            for row in rows:
                record(self.log, step=self.name, event="row", n=row["n"])
            yield rows, start + self.batch_size >= self.total


class Probe(Step):
    """Writes ``<name>: n`` into a column of its own; records load, unload and each row."""

    log: str = ""
    delay: float = 0.0
    crash_at: int = -1  # os._exit(3) on the batch holding this row, once (a marker file says it happened)
    crash_always: bool = False

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return [self.name]

    def load(self) -> None:
        super().load()
        record_load(self.log, self.name)

    def unload(self) -> None:
        record(self.log, step=self.name, event="unload")

    def process(self, inputs: StepInput):
        time.sleep(self.delay)
        marker = f"{self.log}.crashed"
        if any(row["n"] == self.crash_at for row in inputs) and (self.crash_always or not os.path.exists(marker)):
            open(marker, "w").close()
            os._exit(3)
        for row in inputs:
            record(self.log, step=self.name, event="row", n=row["n"])
            row[self.name] = f"{self.name}:{row['n']}"
        yield inputs


GROUPS = [["gen", "a"], ["b", "c"], ["d"]]


def build(log: str, mode: str = "groups", total: int = 60) -> Pipeline:
    delay = 0.3 if mode == "slow" else 0.0
    with Pipeline(name=f"stages-{mode}", stop_grace_seconds=20) as pipeline:
        gen = ProbeGenerator(name="gen", log=log, total=total, batch_size=6)
        a = Probe(name="a", log=log, input_batch_size=4)
        b = Probe(name="b", log=log, input_batch_size=5, delay=delay)
        c = Probe(name="c", log=log, input_batch_size=3, crash_at=13 if mode.startswith("crash") else -1,
                  crash_always=mode == "crash_always")
        d = Probe(name="d", log=log, input_batch_size=7)
        gen >> a >> [b, c]
        c >> d
    return pipeline


def load_groups(mode: str):
    return "sequential_step_execution" if mode == "sequential" else GROUPS


if __name__ == "__main__":
    log_path, run_mode = sys.argv[1], sys.argv[2]
    distiset = build(log_path, run_mode).run(load_groups=load_groups(run_mode))
    print("ROWS", {name: len(distiset[name]["train"]) for name in sorted(distiset)})
    print("RUN FINISHED")
