"""A leaf's rows in the result's Arrow form, made by its worker for large batches
(``store.leaf_writer.encode_leaf_rows``) and written by the coordinator's writer thread
(``store.chunk_writer``): the result, the rows set aside and the files are what the rows
alone gave, whatever the batches hold."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import python_path
from synthpipe.runtime.packed import PackedRows
from synthpipe.store.leaf_writer import LeafWriter, encode_leaf_rows

pytestmark = [pytest.mark.timeout(120)]


def _as_worker_sent(rows: list[dict]) -> PackedRows:
    return PackedRows(pickle.dumps(rows), len(rows), encode_leaf_rows(rows))


def _write(folder: Path, batches: list[list[dict]], sent: bool) -> tuple[list[dict], list[tuple], LeafWriter]:
    set_aside: list[tuple] = []
    writer = LeafWriter(folder / "data", ["leaf"], chunk_rows=6,
                        on_misfit=lambda step, found: set_aside.extend((row, key, why) for row, key, _, why in found))
    key = 0
    for seq, rows in enumerate(batches):
        keys = list(range(key, key + len(rows)))
        key += len(rows)
        writer.write("leaf", _as_worker_sent(rows) if sent else rows, keys, seq)
    writer.close()
    written = [row for f in writer.files("leaf") for row in pq.read_table(f).to_pylist()]
    return written, set_aside, writer


CASES = {
    "same-types": [[{"n": i, "text": f"t{i}"} for i in range(j, j + 4)] for j in range(0, 16, 4)],
    "a-column-widens": [[{"n": 0, "text": None}, {"n": 1, "text": None}], [{"n": 2, "text": "x"}],
                        [{"n": 3, "text": None}, {"n": 4, "text": "y"}]],
    "types-clash-between-batches": [[{"n": 0, "v": 1}, {"n": 1, "v": 2}], [{"n": 2, "v": "a"}],
                                    [{"n": 3, "v": 3}]],
    "types-clash-in-a-batch": [[{"n": 0, "v": 1}, {"n": 1, "v": "a"}, {"n": 2, "v": 2}]],
    "nested-and-missing-columns": [[{"n": 0, "meta": {"k": 1}, "tags": ["a"]}],
                                   [{"n": 1, "meta": {"k": 2}}, {"n": 2, "meta": None, "tags": []}]],
    "int-then-float": [[{"n": 0, "x": 1}, {"n": 1, "x": 2}], [{"n": 2, "x": 2.5}]],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_workers_arrow_form_writes_what_the_rows_alone_wrote(tmp_path, case):
    rows_only = _write(tmp_path / "rows", CASES[case], sent=False)
    with_forms = _write(tmp_path / "forms", CASES[case], sent=True)
    assert with_forms[0] == rows_only[0]  # the same rows, values, types and keys, in order
    assert with_forms[1] == rows_only[1]  # the same rows set aside, for the same reason
    assert with_forms[2].rows_written == rows_only[2].rows_written
    assert [pq.read_schema(f) for f in with_forms[2].files("leaf")] == [
        pq.read_schema(f) for f in rows_only[2].files("leaf")]


def test_a_chunk_of_arrow_forms_is_put_together_from_them_without_reading_a_row(tmp_path):
    writer = LeafWriter(tmp_path / "data", ["leaf"], chunk_rows=100)
    sent = [_as_worker_sent(rows) for rows in CASES["a-column-widens"]]
    for seq, rows in enumerate(sent):
        writer.write("leaf", rows, list(range(seq * 2, seq * 2 + len(rows))), seq)
    writer.close()
    assert not any(rows.unpacked for rows in sent)
    assert [r["text"] for r in pq.read_table(writer.files("leaf")[0]).to_pylist()] == [None, None, "x", None, "y"]


def test_there_is_no_arrow_form_where_one_conversion_cannot_hold_the_rows():
    assert encode_leaf_rows([{"v": 1}, {"v": "a"}]) is None
    assert encode_leaf_rows([{1: "not a column name"}]) is None
    assert encode_leaf_rows([{}]) is None
    assert encode_leaf_rows([{"v": 1}, {"v": 2}]) is not None


def test_a_chunk_that_cannot_be_written_is_the_runs_error_when_the_writer_closes(tmp_path):
    writer = LeafWriter(tmp_path / "data", ["leaf"], chunk_rows=2)
    (tmp_path / "data" / "leaf" / "part-00000.tmp").mkdir(parents=True)  # where the first chunk is written
    writer.write("leaf", [{"n": 0}, {"n": 1}], [0, 1])
    with pytest.raises(OSError):
        writer.close()
    writer.close()  # told once; a second close (the runner's, whatever ended the run) is quiet


SCRIPT = """
import json

from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, step, StepInput


@step(inputs=["a"], outputs=["text", "note"])
def Describe(inputs: StepInput):
    for row in inputs:  # the last batch's text is an int: a type the result's column cannot hold
        row["text"] = row["a"] if row["a"] >= 600 else f"row {row['a']}"
        row["note"] = None if row["a"] < 300 else f"late {row['a']}"  # widens from nulls to strings
    yield inputs


with Pipeline(name="large-leaf-batches") as pipeline:
    LoadDataFromDicts(data=[{"a": i} for i in range(900)], batch_size=300) >> Describe(input_batch_size=300)

if __name__ == "__main__":
    result = pipeline.run()
    rows = result["default"]["train"].to_list()
    print("RESULT " + json.dumps({"rows": rows, "failed": [e["data"]["a"] for e in result.failed_rows]}))
"""


def test_a_script_with_large_leaf_batches_keeps_every_good_row_in_order_and_sets_aside_the_rest(tmp_path):
    script = tmp_path / "large_leaf.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": python_path(Path(__file__).parent),
                               "SYNTHPIPE_PROGRESS": "0", "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT "):])
    assert [r["a"] for r in result["rows"]] == list(range(600))
    assert all(r["text"] == f"row {r['a']}" for r in result["rows"])
    assert all(r["note"] == (None if r["a"] < 300 else f"late {r['a']}") for r in result["rows"])
    assert sorted(result["failed"]) == list(range(600, 900))
    assert "column 'text' holds an int" in done.stderr


KILLED_SCRIPT = """
import json
import sys

from steps_lib import Counting, CountingGenerator
from synthpipe.pipeline import Pipeline

with Pipeline(name="large-leaf-resume") as pipeline:
    CountingGenerator(name="gen", total=3000, batch_size=300, calls=sys.argv[1], delay=0.02) >> Counting(
        name="leaf", calls=sys.argv[1], delay=0.15, input_batch_size=300)

if __name__ == "__main__":
    rows = pipeline.run()["default"]["train"].to_list()
    print("RESULT " + json.dumps(rows))
"""


def test_a_run_killed_among_large_leaf_batches_resumes_to_the_same_result_computing_each_batch_once(tmp_path):
    script, calls = tmp_path / "leaf_resume.py", tmp_path / "calls"
    script.write_text(KILLED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": python_path(Path(__file__).parent), "SYNTHPIPE_PROGRESS": "0",
           "SYNTHPIPE_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.Popen([sys.executable, str(script), str(calls)], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _leaf_rows(calls) < 900:  # three of its ten batches
        time.sleep(0.02)
    run.kill()  # SIGKILL: no chance to write anything more
    run.communicate(timeout=30)
    done_before = _leaf_rows(calls)
    assert 900 <= done_before < 3000, done_before
    done = subprocess.run([sys.executable, str(script), str(calls)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    [line] = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    rows = json.loads(line[len("RESULT "):])
    assert [r["n"] for r in rows] == list(range(3000))
    assert all(r["leaf"] == f"x{r['n']}" for r in rows)
    # the batches finished before the kill were not computed again: only the one in the worker's
    # hands, and one whose answer the coordinator had not stored yet, can have been
    assert _leaf_rows(calls) <= 3000 + 600
    [journal] = (tmp_path / "cache").glob("*/journal.jsonl")
    seqs = [r["seq"] for r in map(json.loads, journal.read_text().splitlines())
            if r.get("t") == "batch" and r["step"] == "leaf"]
    assert sorted(seqs) == list(range(10))  # each batch stored once


def _leaf_rows(calls: Path) -> int:
    try:
        return sum(1 for line in calls.read_text().splitlines() if line.startswith("leaf:"))
    except FileNotFoundError:
        return 0
