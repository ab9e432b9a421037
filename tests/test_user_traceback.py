"""The user's own file, line and source text in what they see when a step fails (issue 10).

Every case runs a real script as a subprocess, its steps defined in the script itself (shipped
to the workers by value), under both start methods; the frames must be on the terminal, in
the run's ``pipeline.log``, and, for failed rows, in the ledger and the end-of-run summary.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import python_path

pytestmark = [pytest.mark.timeout(120)]

START_METHODS = ["forkserver", "spawn"]

HEADER = """\
import threading

from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, Step, StepInput, step


class HoldsALock(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()  # cannot be pickled


class NeedsTwo(Exception):
    def __init__(self, a, b):
        super().__init__(f"needs {a} and {b}")  # cannot be rebuilt from its args


@step(inputs=["a"], outputs=["b"])
def Plain(inputs: StepInput):
    for row in inputs:
        row["b"] = row["a"]
    yield inputs
"""

PLACES = {
    "process": """
@step(inputs=["a"], outputs=["b"])
def Bad(inputs: StepInput):
    for row in inputs:
        row["b"] = row["lenght"]  # MARK
    yield inputs


with Pipeline(name="tb-process") as pipeline:
    LoadDataFromDicts(data=[{"a": i} for i in range(6)], batch_size=3) >> Bad(name="bad")
""",
    "load": """
class Bad(Step):
    @property
    def inputs(self):
        return ["a"]

    def load(self):
        raise ConnectionError("no model server at " + "localhost")  # MARK

    def process(self, inputs):
        yield inputs


with Pipeline(name="tb-load") as pipeline:
    LoadDataFromDicts(data=[{"a": i} for i in range(6)]) >> Bad(name="bad")
""",
    "generator": """
@step(outputs=["a"], step_type="generator")
def Bad():
    yield [{"a": 1}], False
    raise ValueError("the generator ran dry " + "early")  # MARK


with Pipeline(name="tb-generator") as pipeline:
    Bad(name="bad") >> Plain()
""",
    "global": """
@step(inputs=["a"], outputs=["total"], step_type="global")
def Bad(inputs: StepInput):
    total = sum(row["a"] for row in inputs) / 0  # MARK
    yield [{"total": total}]


with Pipeline(name="tb-global") as pipeline:
    LoadDataFromDicts(data=[{"a": i} for i in range(6)], batch_size=2) >> Bad(name="bad")
""",
    "unpicklable": """
@step(inputs=["a"], outputs=["b"])
def Bad(inputs: StepInput):
    raise HoldsALock("a row needed the lock")  # MARK
    yield inputs


with Pipeline(name="tb-unpicklable") as pipeline:
    LoadDataFromDicts(data=[{"a": i} for i in range(6)]) >> Bad(name="bad")
""",
    "unrebuildable": """
@step(inputs=["a"], outputs=["b"])
def Bad(inputs: StepInput):
    raise NeedsTwo("x", "y")  # MARK
    yield inputs


with Pipeline(name="tb-unrebuildable") as pipeline:
    LoadDataFromDicts(data=[{"a": i} for i in range(6)]) >> Bad(name="bad")
""",
}

FOOTER = """

if __name__ == "__main__":
    pipeline.run()
"""

HEADLINES = {
    "process": "KeyError: 'lenght'",
    "load": "ConnectionError: no model server at localhost",
    "generator": "ValueError: the generator ran dry early",
    "global": "ZeroDivisionError: division by zero",
    "unpicklable": "HoldsALock: a row needed the lock",
    "unrebuildable": "NeedsTwo: needs x and y",
}


def _run(args: list[str], tmp_path: Path, start_method: str, stdin: str | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=90, cwd=tmp_path, input=stdin,
        env={**os.environ, "PYTHONPATH": python_path(Path(__file__).parent), "SYNTHPIPE_START_METHOD": start_method,
             "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache"), "SYNTHPIPE_PROGRESS": "0", **(env or {})},
    )


def _mark(source: str) -> tuple[int, str]:
    """The line number and text of the line marked ``# MARK``."""
    for number, line in enumerate(source.splitlines(), start=1):
        if "# MARK" in line:
            return number, line.strip()
    raise AssertionError("no marked line")


def _log(tmp_path: Path) -> str:
    logs = sorted((tmp_path / "cache").rglob("pipeline.log"), key=lambda p: p.stat().st_mtime)
    assert logs, "no pipeline.log written"
    return logs[-1].read_text()


def _assert_frame(text: str, filename: str, line: int, source: str, where: str) -> None:
    assert f'File "{filename}", line {line}, in ' in text, f"no frame for {filename}:{line} in {where}:\n{text}"
    assert source in text, f"source line {source!r} not in {where}:\n{text}"
    assert "<dynamic-code>" not in text, where


@pytest.mark.parametrize("start_method", START_METHODS)
@pytest.mark.parametrize("place", list(PLACES))
def test_a_script_step_that_raises_shows_the_users_file_line_and_text(tmp_path, place, start_method):
    source = HEADER + PLACES[place] + FOOTER
    script = tmp_path / "my_pipeline.py"
    script.write_text(source)
    done = _run([sys.executable, str(script)], tmp_path, start_method)
    assert done.returncode == 1, done.stderr
    line, text = _mark(source)
    _assert_frame(done.stderr, str(script), line, text, "the terminal")
    assert HEADLINES[place] in done.stderr
    assert "step 'bad'" in done.stderr.strip().splitlines()[-1]
    _assert_frame(_log(tmp_path), str(script), line, text, "pipeline.log")


@pytest.mark.parametrize("start_method", START_METHODS)
def test_failed_rows_keep_the_users_frames_in_the_ledger_and_the_summary(tmp_path, start_method):
    source = HEADER + PLACES["process"].replace('Bad(name="bad")', 'Bad(name="bad", on_error="skip", '
                                                                 'max_failure_rate=None)') + FOOTER
    script = tmp_path / "skipping.py"
    script.write_text(source)
    done = _run([sys.executable, str(script)], tmp_path, start_method)
    assert done.returncode == 0, done.stderr
    line, text = _mark(source)
    _assert_frame(done.stderr, str(script), line, text, "the end-of-run summary")
    _assert_frame(_log(tmp_path), str(script), line, text, "pipeline.log")
    ledger = next((tmp_path / "cache").rglob("failed_rows.jsonl"))
    entries = [json.loads(x) for x in ledger.read_text().splitlines()]
    assert len(entries) == 6
    for entry in entries:
        _assert_frame(entry["traceback"], str(script), line, text, "the failed-rows ledger")


def test_a_step_imported_from_a_module_shows_the_modules_line(tmp_path):
    module = tmp_path / "my_steps.py"
    module.write_text(HEADER + PLACES["process"].split("with Pipeline")[0])
    script = tmp_path / "main.py"
    script.write_text(textwrap.dedent("""\
        from synthpipe.pipeline import Pipeline
        from synthpipe.steps import LoadDataFromDicts
        from my_steps import Bad

        with Pipeline(name="tb-module") as pipeline:
            LoadDataFromDicts(data=[{"a": 1}]) >> Bad(name="bad")

        if __name__ == "__main__":
            pipeline.run()
        """))
    done = _run([sys.executable, str(script)], tmp_path, "forkserver",
                env={"PYTHONPATH": python_path(tmp_path, Path(__file__).parent)})
    assert done.returncode == 1, done.stderr
    line, text = _mark(module.read_text())
    _assert_frame(done.stderr, str(module), line, text, "the terminal")
    _assert_frame(_log(tmp_path), str(module), line, text, "pipeline.log")


@pytest.mark.parametrize("start_method", START_METHODS)
def test_python_dash_c_shows_the_commands_own_line(tmp_path, start_method):
    source = HEADER + PLACES["process"] + FOOTER
    done = _run([sys.executable, "-c", source], tmp_path, start_method)
    assert done.returncode == 1, done.stderr
    line, text = _mark(source)
    _assert_frame(done.stderr, "<string>", line, text, "the terminal")
    _assert_frame(_log(tmp_path), "<string>", line, text, "pipeline.log")


def test_a_script_read_from_stdin_runs_and_names_its_line(tmp_path):
    """No source is kept for stdin: the file name and line number are all there is."""
    source = HEADER + PLACES["process"] + FOOTER
    done = _run([sys.executable, "-"], tmp_path, "forkserver", stdin=source)
    assert done.returncode == 1, done.stderr
    line, _ = _mark(source)
    assert f'File "<stdin>", line {line}, in Bad' in done.stderr
    assert "KeyError: 'lenght'" in done.stderr and "FileNotFoundError" not in done.stderr


NOTEBOOK = '''\
import linecache
import sys

cell = sys.stdin.read()
name = "/tmp/ipykernel_4242/3141592653.py"  # how a notebook names a cell: no such file
linecache.cache[name] = (len(cell), None, cell.splitlines(keepends=True), name)
exec(compile(cell, name, "exec"), globals())
'''


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_notebook_cell_shows_the_cells_line(tmp_path, start_method):
    """Run as a notebook runs a cell: compiled under a name with no file, its text in linecache."""
    cell = HEADER + PLACES["process"] + "\npipeline.run()\n"
    driver = tmp_path / "kernel.py"
    driver.write_text(NOTEBOOK)
    done = _run([sys.executable, str(driver)], tmp_path, start_method, stdin=cell)
    assert done.returncode == 1, done.stderr
    line, text = _mark(cell)
    _assert_frame(done.stderr, "/tmp/ipykernel_4242/3141592653.py", line, text, "the terminal")
    _assert_frame(_log(tmp_path), "/tmp/ipykernel_4242/3141592653.py", line, text, "pipeline.log")


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_script_that_fails_to_import_in_the_worker_says_why(tmp_path, start_method):
    source = HEADER.replace("import threading\n", "import threading\nimport os\n\n"
                            "if __name__ != '__main__':\n"
                            "    raise ImportError('no module named ' + 'torchh')  # MARK\n") \
        + PLACES["process"] + FOOTER
    script = tmp_path / "broken_import.py"
    script.write_text(source)
    done = _run([sys.executable, str(script)], tmp_path, start_method)
    assert done.returncode == 1, done.stderr
    line, text = _mark(source)
    last = done.stderr.strip().splitlines()[-1]
    assert "while importing the script failed: ImportError: no module named torchh" in last
    _assert_frame(done.stderr, str(script), line, text, "the terminal")
    _assert_frame(_log(tmp_path), str(script), line, text, "pipeline.log")


SLOW_UNLOAD = """
import time


class Bad(Step):
    @property
    def inputs(self):
        return ["a"]

    def process(self, inputs):
        raise ValueError("bad " + "batch")  # MARK
        yield inputs


class SlowUnload(Step):
    @property
    def inputs(self):
        return ["a"]

    def process(self, inputs):
        time.sleep(0.2)
        yield inputs

    def unload(self):
        print("UNLOADING", flush=True)
        time.sleep(30)


with Pipeline(name="tb-sigterm", stop_grace_seconds=60) as pipeline:
    load = LoadDataFromDicts(data=[{"a": i} for i in range(40)], batch_size=2)
    load >> [SlowUnload(name="slow", input_batch_size=1), Bad(name="bad")]
"""


def test_sigterm_while_a_failed_run_shuts_down_exits_143(tmp_path):
    source = HEADER + SLOW_UNLOAD + FOOTER
    script = tmp_path / "failing.py"
    script.write_text(source)
    env = {**os.environ, "PYTHONPATH": python_path(Path(__file__).parent), "SYNTHPIPE_PROGRESS": "0",
           "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        for out in proc.stdout:  # the failed run is shutting down: the slow step is unloading
            if "UNLOADING" in out:
                break
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert "ValueError: bad batch" in err  # the failure is still told
