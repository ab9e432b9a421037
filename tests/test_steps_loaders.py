"""The loaders, each inside a real pipeline over real files and datasets."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steps_lib import Measure
from synthpipe.distiset import Distiset
from synthpipe.pipeline import Pipeline
from synthpipe.steps import (
    DataSampler,
    KeepColumns,
    LoadDataFromDicts,
    LoadDataFromDisk,
    LoadDataFromFileSystem,
    LoadDataFromHub,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]


def _rows(n, start=0):
    return [{"instruction": f"q{i}", "n": i} for i in range(start, start + n)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _load(loader_cls, **kwargs):
    with Pipeline(name="load") as pipeline:
        loader_cls(**kwargs) >> Measure(input_batch_size=7)
    return pipeline.run()["default"]["train"].to_list()


def test_every_format_through_a_directory_glob_and_url(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    _write_jsonl(data / "a.jsonl", _rows(10))
    (data / "b.json").write_text(json.dumps(_rows(5, 10)))
    (data / "sub" / "c.csv").write_text("instruction,n\n" + "".join(f"q{i},{i}\n" for i in range(15, 20)))
    pq.write_table(pa.Table.from_pylist(_rows(30, 20)), data / "sub" / "d.parquet", row_group_size=8)
    out = _load(LoadDataFromFileSystem, data_files=str(data), batch_size=4)
    assert [r["n"] for r in out] == list(range(50))
    assert out[17] == {"instruction": "q17", "n": 17, "length": 3}
    globbed = _load(LoadDataFromFileSystem, data_files=str(data / "**" / "*.parquet"), batch_size=6)
    assert [r["n"] for r in globbed] == list(range(20, 50))
    url = _load(LoadDataFromFileSystem, data_files=f"file://{data / 'a.jsonl'}", num_examples=4)
    assert [r["n"] for r in url] == [0, 1, 2, 3]


def test_malformed_json_line_names_step_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "q0"}\n{"instruction": "q1"}\n{"instruction": oops}\n')
    with Pipeline(name="bad-json") as pipeline:
        LoadDataFromFileSystem(name="reader", data_files=str(path)) >> Measure()
    with pytest.raises(Exception) as info:
        pipeline.run()
    text = str(info.value) + str(info.value.__cause__)
    assert "reader" in text and "bad.jsonl line 3 is not valid JSON" in text


def test_missing_file_is_an_early_clear_error(tmp_path):
    with Pipeline(name="missing") as pipeline:
        LoadDataFromFileSystem(name="reader", data_files=str(tmp_path / "nope.parquet")) >> Measure()
    with pytest.raises(FileNotFoundError, match="step 'reader': no data file at .*nope.parquet"):
        pipeline.run()


def test_parquet_is_read_by_record_batches(tmp_path):
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(_rows(5000)), path, row_group_size=500)
    step = LoadDataFromFileSystem(data_files=str(path), batch_size=100)
    batches = step.process(offset=0)
    first, last = next(batches)
    assert len(first) == 100 and not last and first[0]["n"] == 0
    # resuming mid-file skips whole row groups by metadata and lands on the exact row
    resumed = [r["n"] for rows, _ in step.process(offset=1234) for r in rows]
    assert resumed == list(range(1234, 5000))


def test_load_from_disk_dataset_and_distiset(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(_rows(12)), "test": Dataset.from_list(_rows(3, 100))}).save_to_disk(
        str(tmp_path / "dd"))
    out = _load(LoadDataFromDisk, dataset_path=str(tmp_path / "dd"), split="test")
    assert [r["n"] for r in out] == [100, 101, 102]
    with Pipeline(name="produce") as pipeline:
        LoadDataFromDicts(data=_rows(9)) >> KeepColumns(columns=["instruction"])
    pipeline.run().save_to_disk(tmp_path / "distiset")
    again = _load(LoadDataFromDisk, dataset_path=str(tmp_path / "distiset"), is_distiset=True, batch_size=2)
    assert again == [{"instruction": f"q{i}", "length": len(f"q{i}")} for i in range(9)]
    assert isinstance(Distiset.load_from_disk(tmp_path / "distiset"), Distiset)


def test_load_from_hub_offline_from_a_local_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    repo = tmp_path / "repo"
    repo.mkdir()
    pq.write_table(pa.Table.from_pylist(_rows(20)), repo / "train.parquet")
    pq.write_table(pa.Table.from_pylist(_rows(4, 50)), repo / "test.parquet")
    out = _load(LoadDataFromHub, repo_id=str(repo), split="test")
    assert [r["n"] for r in out] == [50, 51, 52, 53]
    streamed = _load(LoadDataFromHub, repo_id=str(repo), streaming=True, num_examples=11, batch_size=3)
    assert [r["n"] for r in streamed] == list(range(11))


def test_data_sampler_draws_reproducible_samples():
    data = [{"q": f"q{i}", "a": i} for i in range(10)]
    with Pipeline(name="sample") as pipeline:
        DataSampler(data=data, size=3, samples=7, seed=1, batch_size=3) >> KeepColumns(columns=["q", "a"])
    out = pipeline.run()["default"]["train"].to_list()
    assert len(out) == 7
    for row in out:
        assert len(row["q"]) == 3 and len(set(row["a"])) == 3
        assert row["q"] == [f"q{a}" for a in row["a"]]
    step = DataSampler(data=data, size=3, samples=7, seed=1, batch_size=3)
    resumed = [r for rows, _ in step.process(offset=3) for r in rows]
    assert resumed == out[3:]
    with pytest.raises(ValueError, match="more than the 10 examples"):
        DataSampler(data=data, size=11)
