"""Finished batches are stored columnar (Arrow IPC) where Arrow holds the values exactly, and
pickled where it would change them; either way a replay gives back the very same values."""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from conftest import python_path
from steps_lib import AsyncShout, CheckPair, Pair, Shout
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.store import batch_format
from synthpipe.store.batch_format import decode, encode, encode_columnar, is_columnar


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1 == 1.0 == True is not enough here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):  # keys of the same types too: a str subclass key equals its str
        return (list(map(type, a)) == list(map(type, b)) and list(a) == list(b)
                and all(same(a[k], b[k]) for k in a))
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return bool(a == b)


def round_trips(rows: list[dict[str, Any]]) -> bool:
    return same(decode(encode(rows)), rows)


def llm_rows(n: int, words: int = 40) -> list[dict[str, Any]]:
    rng = random.Random(n)
    vocab = ["the", "answer", "model", "poem", "synthetic", "data", "sonnet", "river", "token", "light"]
    text = lambda k: " ".join(rng.choice(vocab) for _ in range(k))  # noqa: E731
    return [{"instruction": text(words), "generation": text(words * 4), "model_name": "tiny",
             "score": rng.random(), "id": i, "ok": i % 2 == 0, "tags": ["a", "b"][: i % 3],
             "synthpipe_metadata": {"raw_input_text_generation_0": [{"role": "user", "content": text(words)}],
                                    "raw_output_text_generation_0": text(words * 4),
                                    "statistics_text_generation_0": {"input_tokens": [12], "output_tokens": [40]}}}
            for i in range(n)]


def test_the_columnar_form_costs_at_most_a_twentieth_of_the_steps_time():
    import pandas  # noqa: F401  (as in a worker whose step has it loaded: nothing to import)

    rows = llm_rows(50)
    llm = batch_format.ColumnarBudget()
    assert all(llm.encode(rows, work_seconds=2.0, pickled_bytes=40_000) for _ in range(10))  # LLM batches

    quick = batch_format.ColumnarBudget()  # a step that adds a column: 50 us a batch
    made = sum(quick.encode(rows, work_seconds=50e-6, pickled_bytes=40_000) is not None for _ in range(2000))
    assert made < 2000 * 50e-6 / batch_format.WORK_PER_ENCODING / 40e-6 + 1


def test_batches_in_flight_at_once_earn_the_workers_time_once():
    """An async step's batches overlap: K of them finishing at once must not earn K times."""
    import pandas  # noqa: F401

    rows = llm_rows(50)
    budget = batch_format.ColumnarBudget()
    made = sum(budget.encode(rows, work_seconds=1.0, pickled_bytes=40_000) is not None for _ in range(2000))
    assert made < 200  # the first earns 1 s / 20 of credit; the others only the time since


@pytest.mark.timeout(60)
def test_the_first_columnar_batch_of_a_worker_without_pyarrow_pays_for_importing_it():
    script = """
import sys, time
from synthpipe.store import batch_format
batch_format.FIRST_ENCODING_SECONDS = 0.02  # expected as 20 ms, so that the test need not run for 6 s
rows = [{"text": "an answer", "n": i} for i in range(50)]
budget = batch_format.ColumnarBudget()
assert "pandas" not in sys.modules
assert budget.encode(rows, work_seconds=0.2, pickled_bytes=1_000) is None  # 10 ms of credit: not enough
time.sleep(0.4)
data = budget.encode(rows, work_seconds=0.4, pickled_bytes=1_000)  # 30 ms: enough
assert batch_format.is_columnar(data) and "pandas" in sys.modules
print(0.03 - budget.credit)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50,
                         env={**os.environ, "PYTHONPATH": python_path()})
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) > 0.05  # the import's time was spent from the credit


@pytest.mark.parametrize("rows", [
    llm_rows(5),
    [{"a": 1, "b": None}, {"a": None, "b": 2.5}],
    [{"x": None}, {"x": None}],
    [{"v": [[1, 2], [], None]}, {"v": None}],
    [{"e": [0.25] * 384, "blob": b"\x00\x01"}],
    [{"n": float("nan"), "z": -0.0, "big": 2**63 - 1, "small": -(2**63)}],
    [{"d": {"k": {"deep": [True, None]}}}, {"d": None}],
    [{"l": [{"a": 1}, {"a": None}]}],
    [{"a": {}}, {"a": None}],
], ids=["llm", "nulls", "all-null", "nested-lists", "embedding-bytes", "edge-numbers", "nested-dict", "list-of-dicts",
        "empty-dict"])
def test_values_arrow_holds_exactly_are_stored_columnar(rows):
    data = encode(rows)
    assert is_columnar(data)
    assert same(decode(data), rows)
    table = pa.ipc.open_stream(data).read_all()  # any Arrow reader can read a stored batch
    assert table.num_rows == len(rows) and table.column_names == list(rows[0])


class Colour(str, enum.Enum):
    RED = "red"


class Key(str):
    pass


SHARED = [1, 2]
ROW = {"a": 1}


@pytest.mark.parametrize("rows", [
    [{"a": 1}, {"a": 2.5}],                               # Arrow would turn 1 into 1.0
    [{"a": True}, {"a": 1}],                              # bool among ints
    [{"a": (1, 2)}],                                      # a tuple would come back a list
    [{"a": 1}, {"b": 2}],                                 # missing keys would come back None
    [{"a": 1, "b": 2}, {"b": 2, "a": 1}],                 # key order would change
    [{"d": {"x": 1}}, {"d": {"y": 2}}],                   # nested dicts with other keys
    [{"d": {"x": 1, "y": 2}}, {"d": {"y": 2, "x": 1}}],   # nested key order
    [{"a": np.arange(3)}],                                # a numpy array would come back a list
    [{"a": np.float64(1.5)}],                             # a float subclass would lose its class
    [{"a": Colour.RED}],                                  # a str subclass would lose its class
    [{"a": datetime.date(2026, 11, 30)}],                 # kept pickled rather than checked
    [{"a": decimal.Decimal("1.10")}],
    [{"a": 2**64}],                                       # no Arrow integer holds it
    [{"a": "\ud800"}],                                    # not UTF-8
    [{1: "a"}],                                           # a column name that is not a string
    [{"a": [1, 2.0]}],                                    # mixed inside a list
    [{"a": {b"k": 1}}],                                   # bytes keys would come back str
    [{}, {}],                                             # rows without columns
    [],
    [{"a": bytearray(b"x")}],
    [{"a": 1}, {Key("a"): 2}],                            # a str subclass key in a later row
    [{"d": {Key("k"): 1}}],                               # ... or nested
    [{"d": {Colour.RED: 1}}],
    [collections.OrderedDict(a=1)],                       # a dict subclass would come back a dict
    [{"a": SHARED}, {"a": SHARED}],                       # one list in two rows would come back as two
    [{"a": SHARED, "b": SHARED}],                         # ... or in two columns
    [{"d": {"l": SHARED}}, {"d": {"l": SHARED}}],         # ... or nested
    [ROW, ROW],                                           # one row object twice
], ids=lambda rows: repr(rows)[:40])
def test_values_arrow_would_change_are_stored_pickled_and_come_back_exactly(rows):
    assert encode_columnar(rows) is None
    data = encode(rows)
    assert not is_columnar(data)
    assert same(decode(data), rows)


def _random_value(rng: random.Random, depth: int) -> Any:
    kinds = ["int", "float", "str", "bool", "none", "bytes", "tuple"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, 1, -7, 2**40, 2**63 - 1, 2**64])
    if kind == "float":
        return rng.choice([0.5, -0.0, 1e300, float("inf"), float("nan"), 3.0])
    if kind == "str":
        return rng.choice(["", "x", "ünïcödé", "a" * 50])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "bytes":
        return b"\x00ab"
    if kind == "tuple":
        return (1, "a")
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    keys = rng.sample(["k", "l", "m"], rng.randrange(1, 3))
    return {k: _random_value(rng, depth + 1) for k in keys}


def _random_rows(rng: random.Random) -> list[dict[str, Any]]:
    """Rows that often share a shape (so Arrow is tried) and sometimes differ in one place."""
    template = {c: _random_value(rng, 0) for c in rng.sample(["a", "b", "c", "d"], rng.randrange(1, 4))}
    rows = []
    for _ in range(rng.randrange(1, 6)):
        row = json.loads(json.dumps(template, default=str)) if rng.random() < 0.3 else dict(template)
        if rng.random() < 0.3:
            row[rng.choice(list(row))] = _random_value(rng, 0)
        rows.append(row)
    return rows


def test_random_rows_always_come_back_exactly():
    """Seeded and bounded: whatever the shape, decode(encode(rows)) is the rows, type for type."""
    rng = random.Random(20261130)
    columnar = 0
    for _ in range(3000):
        rows = _random_rows(rng)
        data = encode(rows)
        columnar += is_columnar(data)
        assert same(decode(data), rows), rows
    assert 300 < columnar < 2700  # both forms were exercised


def test_large_batches_are_compressed():
    rows = llm_rows(200, words=100)
    data = encode(rows)
    assert is_columnar(data)
    raw = pa.Table.from_pylist(rows).nbytes
    assert raw > batch_format.COMPRESS_FROM_BYTES
    assert len(data) < raw / 2  # text this repetitive shrinks a lot; the point is that it is compressed
    assert same(decode(data), rows)


def _stored_records(cache: Path) -> dict[str, list[bytes]]:
    """Per step, the stored bytes of each finished batch, found through the journal."""
    store = next(cache.glob("formats-*"))
    records: dict[str, list[bytes]] = collections.defaultdict(list)
    for line in (store / "journal.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["t"] == "batch":
            with (store / "batches" / record["key"]).open("rb") as fh:
                fh.seek(record["off"])
                records[record["step"]].append(fh.read(record["len"]))
    return records


def _pipeline(cache: Path, shout_class: type = Shout) -> Pipeline:
    rows = [{"id": i, "instruction": f"write about topic {i}"} for i in range(120)]
    with Pipeline("formats", cache_dir=cache) as pipeline:
        load = LoadDataFromDicts(name="load", data=rows, batch_size=25)
        shout = shout_class(name="shout", input_batch_size=25, delay=0.2)  # slow enough to be worth Arrow
        pair = Pair(name="pair", input_batch_size=20)
        check = CheckPair(name="check", input_batch_size=30)
        load >> shout >> pair >> check
    return pipeline


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shout_class", [Shout, AsyncShout])
def test_a_run_stores_slow_steps_batches_columnar_and_replays_every_batch_exactly(tmp_path, shout_class):
    first = _pipeline(tmp_path, shout_class).run()["default"]["train"].to_list()
    records = _stored_records(tmp_path)
    # the first may stay pickled while the credit pays for setting up pyarrow in the worker
    assert sum(map(is_columnar, records["shout"])) >= len(records["shout"]) - 2 >= 3
    # "load" is too quick to be worth it; "pair" is quick and makes tuples
    assert not any(is_columnar(r) for r in records["load"] + records["pair"] + records["check"])
    table = pa.concat_tables(pa.ipc.open_stream(r).read_all() for r in records["shout"] if is_columnar(r))
    assert table.column_names == ["id", "instruction", "generation"]
    assert table.num_rows == sum(len(decode(r)) for r in records["shout"] if is_columnar(r))
    assert all(r["generation"] == r["instruction"].upper() * 3 for r in table.to_pylist())

    # "pair" changed: it reads the stored (columnar) batches of "shout" and checks their types.
    second = _pipeline(tmp_path, shout_class).run(parameters={"pair": {"tag": "y"}})["default"]["train"].to_list()
    assert [r["pair_tag"] for r in second] == ["y"] * 120
    # "check" changed: it reads the stored (pickled) batches of "pair", tuples and all.
    third = _pipeline(tmp_path, shout_class).run(parameters={"pair": {"tag": "y"}, "check": {"tag": "z"}})
    third_rows = third["default"]["train"].to_list()
    assert [r["check_tag"] for r in third_rows] == ["z"] * 120
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_tag")} for r in rows]  # noqa: E731
    assert strip(first) == strip(second) == strip(third_rows)
    assert len(_stored_records(tmp_path)["shout"]) == len(records["shout"])  # never recomputed
