"""Scale: rows/s, fixed cost and memory from 100k to 10M rows (``bench/engine.py --scale``).

Measured as a user would: a ``GeneratorStep`` that makes its 1,000-row batches lazily, two
trivial steps, ``pipeline.run()`` in a fresh process per size. Beside each run, the floor for
a process-per-step engine: the same batches through plain pipes between one process per stage,
each stage appending every batch it emits to a file (pickled, flushed), in the same session.

Reported per size: rows/s of both (whole runs), time from ``run()`` to the generator's first
batch, time from the last step's last batch to the result in hand, and the peak PSS of the
process tree (sampled every 20 ms by a process of its own) during the run, during the
result build and during a ``save_to_disk`` of the result, apart; in brackets its anonymous
part (PSS also counts the pages of a memory-mapped file that were read, which the kernel
can drop at will: the anonymous part is what the processes hold). ``--src`` runs the same
measurement against another source tree too
(a "before"), interleaved, so before and after come from the same machine and minutes.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from synthpipe.pipeline import Pipeline
from synthpipe.steps import GeneratorStep, Step, StepInput

BENCH = Path(__file__).resolve().parent
SAMPLE_SECONDS = 0.02
TEXT = "write a short poem about topic number {i} in the style of a sonnet"


# -- the pipeline (module level: the workers import this module) --------------------------------


class LazyRows(GeneratorStep):
    """``total`` rows made a batch at a time; writes the wall time of its first batch to ``mark``."""

    total: int = 1000
    mark: str = ""

    @property
    def outputs(self) -> list[str]:
        return ["id", "instruction"]

    def process(self, offset: int = 0):
        if self.mark and offset == 0:
            Path(self.mark).write_text(repr(time.time()))
        for start in range(offset, self.total, self.batch_size):
            end = min(start + self.batch_size, self.total)
            yield [{"id": i, "instruction": TEXT.format(i=i)} for i in range(start, end)], end >= self.total


class AddLength(Step):
    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["length"]

    def process(self, inputs: StepInput):
        for row in inputs:
            row["length"] = len(row["instruction"])
        yield inputs


class AddUpper(Step):
    """The last step: writes the wall time at which it finished the row ``total - 1`` to ``mark``."""

    total: int = 1000
    mark: str = ""

    @property
    def inputs(self) -> list[str]:
        return ["instruction"]

    @property
    def outputs(self) -> list[str]:
        return ["upper"]

    def process(self, inputs: StepInput):
        for row in inputs:
            row["upper"] = row["instruction"].upper()
        if self.mark and inputs and inputs[-1]["id"] == self.total - 1:
            Path(self.mark).write_text(repr(time.time()))
        yield inputs


def engine_child(rows: int, batch: int, marks: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="synthpipe-scale-") as cache:
        with Pipeline(name="bench-scale", cache_dir=cache) as pipeline:
            gen = LazyRows(total=rows, batch_size=batch, mark=str(marks / "first"))
            gen >> AddLength(input_batch_size=batch) >> AddUpper(input_batch_size=batch, total=rows,
                                                                  mark=str(marks / "last"))
        os.environ["SYNTHPIPE_PROGRESS"] = "0"
        start = time.time()
        distiset = pipeline.run(use_cache=False)
        end = time.time()
        ds = distiset["default"]["train"]
        if ds.num_rows != rows or ds[rows - 1]["id"] != rows - 1 or ds[rows // 2]["upper"] != TEXT.format(
                i=rows // 2).upper():
            raise AssertionError(f"wrong result: {ds.num_rows} rows")
        saved = time.time()
        distiset.save_to_disk(Path(cache) / "saved")  # streamed from the mapped file, shard by shard
        return {"start": start, "end": end, "save_start": saved, "save_end": time.time()}


# -- the floor ------------------------------------------------------------------------------


def _stage(index: int, rows: int, batch: int, read_fd: int | None, write_fd: int | None, folder: str) -> None:
    """One stage: read a batch (or make one), do its work, pickle it, append it to its file,
    flush, and send it on."""
    inbox = os.fdopen(read_fd, "rb", buffering=1 << 16) if read_fd is not None else None
    outbox = os.fdopen(write_fd, "wb", buffering=0) if write_fd is not None else None
    with open(os.path.join(folder, f"stage{index}.pkl"), "ab") as log:
        start = 0
        while True:
            if inbox is None:
                if start >= rows:
                    break
                end = min(start + batch, rows)
                data = [{"id": i, "instruction": TEXT.format(i=i)} for i in range(start, end)]
                start = end
            else:
                head = inbox.read(8)
                if not head:
                    break
                data = pickle.loads(inbox.read(int.from_bytes(head, "little")))
                for row in data:
                    if index == 1:
                        row["length"] = len(row["instruction"])
                    else:
                        row["upper"] = row["instruction"].upper()
            blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
            log.write(blob)
            log.flush()
            if outbox is not None:
                outbox.write(len(blob).to_bytes(8, "little") + blob)
    if outbox is not None:
        outbox.close()


def floor_child(rows: int, batch: int, marks: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="synthpipe-floor-") as folder:
        start = time.time()
        pipes = [os.pipe() for _ in range(2)]
        pids = []
        for index in range(3):
            read_fd = pipes[index - 1][0] if index > 0 else None
            write_fd = pipes[index][1] if index < 2 else None
            pid = os.fork()
            if pid == 0:
                for r, w in pipes:
                    for fd in (r, w):
                        if fd not in (read_fd, write_fd):
                            os.close(fd)
                _stage(index, rows, batch, read_fd, write_fd, folder)
                os._exit(0)
            pids.append(pid)
        for r, w in pipes:
            os.close(r)
            os.close(w)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            if status:
                raise RuntimeError(f"a floor stage ended with status {status}")
        end = time.time()
        return {"start": start, "end": end}


# -- sampling and one measurement -----------------------------------------------------------


SAMPLER = r"""
import os, sys, time
root, out, every = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
def tree(pid):
    found = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                for child in fh.read().split():
                    found.extend(tree(int(child)))
    except OSError:
        pass
    return found
def pss(pid):
    found = [0, 0]
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    found[0] = int(line.split()[1])
                elif line.startswith("Pss_Anon:"):
                    found[1] = int(line.split()[1])
    except OSError:
        pass
    return found
with open(out, "w") as fh:
    while True:
        pids = tree(root)
        if not os.path.exists(f"/proc/{root}") or open(f"/proc/{root}/stat").read().split()[2] == "Z":
            break
        sizes = [pss(p) for p in pids]
        fh.write(f"{time.time()} {sum(s[0] for s in sizes)} {sum(s[1] for s in sizes)} {sizes[0][1]}\n")
        fh.flush()
        time.sleep(every)
"""


def run_sampled(command: list[str], env: dict[str, str], marks: Path) -> tuple[int, str, str, list[list[str]]]:
    """``command`` run to its end with the tree-PSS sampler beside it (samples in ``marks/pss``):
    its exit status, stdout, stderr and the sample lines, split."""
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = subprocess.Popen([sys.executable, "-c", SAMPLER, str(child.pid), str(marks / "pss"),
                                str(SAMPLE_SECONDS)])
    out, err = child.communicate(timeout=3600)
    sampler.wait(timeout=30)
    lines = [line.split() for line in (marks / "pss").read_text().splitlines() if line]
    return child.returncode, out, err, lines


def measure(kind: str, rows: int, batch: int, src: Path, extra: list[str] | None = None) -> dict[str, Any]:
    """One run of ``kind`` ('engine', 'floor', or 'llm': ``bench/llm_cache.py``) in a fresh
    process on the code in ``src``."""
    with tempfile.TemporaryDirectory(prefix="synthpipe-marks-") as marks_dir:
        marks = Path(marks_dir)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(BENCH)])}
        command = [sys.executable, str(BENCH / "scale.py"), "--child", kind, str(rows), str(batch), str(marks),
                   *(extra or [])]
        returncode, out, err, lines = run_sampled(command, env, marks)
        if returncode:
            raise RuntimeError(f"{kind} run of {rows} rows failed:\n{err[-3000:]}")
        times = json.loads(out.strip().splitlines()[-1])
        samples = [(float(t), float(p)) for t, p, *_ in lines]
        anon = [(float(t), float(a)) for t, _, a, *_ in lines]
        main_anon = [(float(t), float(rest[0])) for t, _, _, *rest in lines if rest]
        result: dict[str, Any] = {"kind": kind, "rows": rows, "batch": batch, "wall_s": times["end"] - times["start"]}
        result["rows_per_s"] = rows / result["wall_s"]
        if kind != "floor":
            first = float((marks / "first").read_text())
            last = float((marks / "last").read_text())
            result["to_first_step_s"] = first - times["start"]
            result["last_step_to_result_s"] = times["end"] - last
            result["pss_run_mb"] = max((p for t, p in samples if t <= last), default=0) / 1024
            result["pss_result_mb"] = max((p for t, p in samples if last < t <= times["end"]), default=0) / 1024
            result["anon_run_mb"] = max((p for t, p in anon if t <= last), default=0) / 1024
            result["main_anon_run_mb"] = max((p for t, p in main_anon if t <= last), default=0) / 1024
            result["anon_result_mb"] = max((p for t, p in anon if last < t <= times["end"]), default=0) / 1024
            if "save_start" in times:
                result["save_s"] = times["save_end"] - times["save_start"]
                result["pss_save_mb"] = max((p for t, p in samples if t >= times["save_start"]), default=0) / 1024
                result["anon_save_mb"] = max((p for t, p in anon if t >= times["save_start"]), default=0) / 1024
        else:
            result["pss_run_mb"] = max((p for _, p in samples), default=0) / 1024
        return result


def run_scale(sizes: list[int], batch: int, sources: dict[str, Path], repeat: int = 1) -> list[dict[str, Any]]:
    """Each size ``repeat`` times: the floor, then each source tree, back to back (so a busy
    minute on a shared machine hits all of them alike)."""
    results = []
    for rows in sizes:
        for _ in range(repeat):
            results.append({**measure("floor", rows, batch, next(iter(sources.values()))), "code": "floor"})
            print(_line(results[-1]), flush=True)
            for label, src in sources.items():
                results.append({**measure("engine", rows, batch, src), "code": label})
                print(_line(results[-1]), flush=True)
    return results


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def format_medians(results: list[dict[str, Any]]) -> str:
    """Per size and code, over the repeats: the median, and [min-max], of rows/s, of the ratio
    to the floor measured just before each run, of the time to the first step and of the time
    from the last step to the result."""
    lines = ["| rows | code | runs | rows/s median [min-max] | ratio to floor median [min-max] | "
             "to first step ms | last step to result ms |", "|---" * 7 + "|"]
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    floor: dict[str, Any] | None = None
    for r in results:
        if r["kind"] == "floor":
            floor = r
            groups.setdefault((r["rows"], "floor"), []).append({**r, "ratio": 1.0})
        elif floor is not None:
            groups.setdefault((r["rows"], r["code"]), []).append({**r, "ratio": r["rows_per_s"] / floor["rows_per_s"]})

    def cell(runs: list[dict[str, Any]], key: str, scale: float = 1.0, fmt: str = ",.0f") -> str:
        values = [r[key] * scale for r in runs if key in r]
        if not values:
            return "-"
        return f"{_median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"

    for (rows, code), runs in groups.items():
        lines.append(f"| {rows:,} | {code} | {len(runs)} | {cell(runs, 'rows_per_s')} "
                     f"| {cell(runs, 'ratio', fmt='.3f')} | {cell(runs, 'to_first_step_s', 1000)} "
                     f"| {cell(runs, 'last_step_to_result_s', 1000)} |")
    return "\n".join(lines)


def _line(r: dict[str, Any]) -> str:
    if r["kind"] == "floor":
        return (f"{r['rows']:>11,} rows  floor            {r['rows_per_s']:>11,.0f} rows/s  wall {r['wall_s']:7.2f} s"
                f"  PSS {r['pss_run_mb']:7.0f} MB")
    return (f"{r['rows']:>11,} rows  synthpipe {r['code']:<6} {r['rows_per_s']:>11,.0f} rows/s  "
            f"wall {r['wall_s']:7.2f} s  first step {r['to_first_step_s'] * 1000:6.0f} ms  "
            f"last step->result {r['last_step_to_result_s'] * 1000:6.0f} ms  "
            f"PSS (anon) run {r['pss_run_mb']:5.0f} ({r['anon_run_mb']:4.0f}) MB  result {r['pss_result_mb']:5.0f} "
            f"({r['anon_result_mb']:4.0f}) MB"
            + (f"  save_to_disk {r['save_s']:5.1f} s PSS {r['pss_save_mb']:5.0f} ({r['anon_save_mb']:4.0f}) MB"
               if "save_s" in r else ""))


def format_table(results: list[dict[str, Any]]) -> str:
    lines = ["| rows | code | rows/s | floor rows/s | ratio | to first step | last step to result | "
             "PSS (anon) run, MB | PSS (anon) result build, MB | PSS (anon) save_to_disk, MB |", "|---" * 10 + "|"]
    floors = {r["rows"]: r for r in results if r["kind"] == "floor"}
    for r in results:
        if r["kind"] != "engine":
            continue
        floor = floors[r["rows"]]
        lines.append(f"| {r['rows']:,} | {r['code']} | {r['rows_per_s']:,.0f} | {floor['rows_per_s']:,.0f} | "
                     f"{r['rows_per_s'] / floor['rows_per_s']:.2f} | {r['to_first_step_s'] * 1000:.0f} ms | "
                     f"{r['last_step_to_result_s'] * 1000:.0f} ms | {r['pss_run_mb']:.0f} ({r['anon_run_mb']:.0f}) | "
                     f"{r['pss_result_mb']:.0f} ({r['anon_result_mb']:.0f}) | "
                     f"{r.get('pss_save_mb', 0):.0f} ({r.get('anon_save_mb', 0):.0f}) |")
    return "\n".join(lines)


def main(sizes: list[int], batch: int, sources: dict[str, Path], output: Path, repeat: int = 1) -> int:
    if max(sizes) > 10_000_000:
        raise SystemExit("--rows: at most 10,000,000")
    results = run_scale(sizes, batch, sources, repeat)
    print(format_table(results))
    if repeat > 1:
        print()
        print(format_medians(results))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"benchmark": "synthpipe scale", "batch": batch, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        kind, n, size, where = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
        import scale  # the steps by their module's name, as the workers import them

        if kind == "llm":
            import llm_cache

            print(json.dumps(llm_cache.cached_run(sys.argv[6], sys.argv[7], where)))
        else:
            print(json.dumps((scale.engine_child if kind == "engine" else scale.floor_child)(n, size, where)))
        sys.exit(0)
    raise SystemExit("run it as: bench/engine.py --scale --rows N [N ...]")
