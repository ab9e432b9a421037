"""The result is memory-mapped from Arrow files under the run directory: the same rows, in
the same order, as before (failed rows, retries and several leaves included), at little
memory however many rows it holds."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps_lib import Counting, CountingGenerator, FailListed
from synthpipe.distiset import RESULT_FOLDER, Distiset, _dataset_from_parquet
from synthpipe.pipeline import Pipeline

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("no_leftover_workers")]

TOTAL = 23_000  # more than two of the leaf writer's chunks (10,000 rows each)


def _pipeline(bad: Path) -> Pipeline:
    with Pipeline(name="mapped") as pipeline:
        gen = CountingGenerator(name="gen", total=TOTAL, batch_size=1000)
        flaky = FailListed(name="flaky", bad=str(bad), input_batch_size=500, on_error="skip")
        plain = Counting(name="plain", input_batch_size=1000)
        gen >> flaky
        gen >> plain
    return pipeline


def _assert_mapped(dataset, run_dir: Path) -> None:
    from datasets.table import MemoryMappedTable

    assert isinstance(dataset.data, MemoryMappedTable)
    assert [Path(f["filename"]).parent for f in dataset.cache_files] == [run_dir / RESULT_FOLDER]


def test_a_multi_leaf_result_with_failed_rows_and_a_retry_is_mapped_and_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHPIPE_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad"
    bad.write_text("1234 12345 22999")
    first = _pipeline(bad).run()
    assert set(first) == {"flaky", "plain"}
    for leaf in first.values():
        _assert_mapped(leaf["train"], first.run_dir)
    plain = first["plain"]["train"]
    assert plain.num_rows == TOTAL and plain["n"] == list(range(TOTAL))
    assert plain[TOTAL - 1] == {"instruction": f"q{TOTAL - 1}", "n": TOTAL - 1, "plain": f"x{TOTAL - 1}"}
    failed_batches = {2, 24, 45}  # batches of 500 holding rows 1234, 12345 and 22999
    kept = [n for n in range(TOTAL) if n // 500 not in failed_batches]
    assert first["flaky"]["train"]["n"] == kept
    assert sorted(e["data"]["n"] for e in first.failed_rows) == [n for n in range(TOTAL) if n // 500 in failed_batches]

    bad.write_text("")
    retried = _pipeline(bad).run(retry_failed=True)
    assert retried.failed_rows == []
    flaky = retried["flaky"]["train"]
    _assert_mapped(flaky, retried.run_dir)
    assert flaky["n"] == list(range(TOTAL))  # the retried rows back in their places
    assert flaky.column_names == ["instruction", "n", "flaky"]
    assert retried["plain"]["train"]["n"] == list(range(TOTAL))

    again = _pipeline(bad).run()  # the finished result, opened from its files again
    assert again["flaky"]["train"]["n"] == list(range(TOTAL)) and again.run_dir == retried.run_dir

    saved = tmp_path / "saved"
    again.save_to_disk(saved)
    loaded = Distiset.load_from_disk(saved)
    assert loaded["flaky"]["train"].to_list() == again["flaky"]["train"].to_list()
    assert loaded["plain"]["train"]["n"] == list(range(TOTAL))


def _write(path: Path, table) -> Path:
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    return path


def test_chunks_of_different_columns_and_types_are_put_together_as_concat_tables_did(tmp_path):
    import pyarrow as pa

    from synthpipe.store.leaf_writer import KEY_COLUMN

    chunks = [
        pa.table({"a": [1, 2], "b": pa.nulls(2), KEY_COLUMN: [0, 1]}),
        pa.table({"a": [3], "b": ["x"], "c": [1.5], KEY_COLUMN: [2]}),
        pa.table({"b": [None], "a": [4], KEY_COLUMN: [3]}),
    ]
    files = [_write(tmp_path / f"part-{i}.parquet", t) for i, t in enumerate(chunks)]
    dataset = _dataset_from_parquet(files, tmp_path / "result" / "leaf.arrow")
    expected = pa.concat_tables(chunks, promote_options="permissive").drop_columns([KEY_COLUMN])
    assert dataset.to_list() == expected.to_pylist()
    assert dataset.column_names == ["a", "b", "c"]
    assert _dataset_from_parquet([], tmp_path / "result" / "none.arrow").num_rows == 0


def test_the_arrow_file_the_leaf_writer_streams_is_the_result_unless_a_column_widened(tmp_path):
    from synthpipe.store.leaf_writer import LeafWriter
    from synthpipe.store.result_stream import is_current

    writer = LeafWriter(tmp_path / "data", ["same", "widened"], chunk_rows=2)
    for i in range(5):
        writer.write("same", [{"n": i, "text": f"t{i}"}], [i])
        writer.write("widened", [{"n": i, "text": None if i < 2 else f"t{i}"}], [i])
    writer.close()
    writer.close()  # a second close (the runner's, whatever ended the run) changes nothing
    same, widened = tmp_path / RESULT_FOLDER / "same.arrow", tmp_path / RESULT_FOLDER / "widened.arrow"
    assert is_current(same, writer.files("same")) and not widened.exists()
    written = same.stat().st_mtime_ns
    result = Distiset.from_leaf_files({leaf: writer.files(leaf) for leaf in ("same", "widened")}, [],
                                      run_dir=tmp_path)
    assert same.stat().st_mtime_ns == written  # mapped as streamed, not made again
    assert result["same"]["train"].to_list() == [{"n": i, "text": f"t{i}"} for i in range(5)]
    assert result["widened"]["train"].to_list() == [{"n": i, "text": None if i < 2 else f"t{i}"} for i in range(5)]
    assert is_current(widened, writer.files("widened"))  # made from the chunks when asked for
