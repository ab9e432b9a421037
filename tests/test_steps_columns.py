"""The column steps, each inside a real pipeline with worker processes."""

from __future__ import annotations

import json

import pytest

from steps_lib import Measure
from synthpipe.errors import StepFailed
from synthpipe.pipeline import Pipeline
from synthpipe.steps import (
    CombineOutputs,
    ExpandColumns,
    GroupColumns,
    KeepColumns,
    LoadDataFromDicts,
    MergeColumns,
    TruncateTextColumn,
)

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("no_leftover_workers")]




def test_keep_columns_keeps_only_the_named_ones_in_order():
    data = [{"a": i, "b": str(i), "c": [i]} for i in range(7)]
    with Pipeline(name="keep") as pipeline:
        LoadDataFromDicts(data=data, batch_size=3) >> KeepColumns(columns=["c", "a"], input_batch_size=2)
    out = pipeline.run()["default"]["train"]
    assert out.column_names == ["c", "a"]
    assert out.to_list() == [{"c": [i], "a": i} for i in range(7)]


def test_keep_columns_names_the_step_and_row_of_a_missing_column():
    data = [{"a": 1, "b": 2}, {"a": 3}]
    with Pipeline(name="keep-bad") as pipeline:
        LoadDataFromDicts(data=data, batch_size=2) >> KeepColumns(name="keeper", columns=["a", "b"])
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert info.value.step == "keeper"
    assert "row 1 has no column 'b'" in str(info.value)


def test_group_columns_collects_each_branch_value_and_merges_metadata():
    data = [{"instruction": f"q{i}", "distilabel_metadata": {"k": i}} for i in range(10)]
    with Pipeline(name="group") as pipeline:
        load = LoadDataFromDicts(data=data, batch_size=4)
        one, two = Measure(name="one", factor=1), Measure(name="two", factor=2)
        group = GroupColumns(columns=["length"], input_batch_size=3)
        renamed = GroupColumns(name="renamed", columns=["length"], output_columns=["lengths"])
        load >> [one, two] >> group
        group >> KeepColumns(columns=["instruction", "grouped_length", "distilabel_metadata"])
        [one, two] >> renamed
    result = pipeline.run()
    out = result["keep_columns_0"]["train"].to_list()
    assert [r["grouped_length"] for r in out] == [[len(f"q{i}"), 2 * len(f"q{i}")] for i in range(10)]
    assert [r["distilabel_metadata"] for r in out] == [{"k": i} for i in range(10)]
    assert result["renamed"]["train"]["lengths"][3] == [2, 4]
    assert renamed.outputs == ["lengths"] and renamed.output_columns() == ["lengths"]


def test_group_columns_checks_output_columns_length():
    with pytest.raises(ValueError, match="one output per column"):
        GroupColumns(columns=["a", "b"], output_columns=["x"])


def test_combine_outputs_puts_branches_side_by_side():
    data = [{"instruction": f"q{i}", "distilabel_metadata": {"src": "load"}} for i in range(9)]
    with Pipeline(name="combine") as pipeline:
        load = LoadDataFromDicts(data=data, batch_size=4)
        one = Measure(name="one", factor=1, output_mappings={"length": "len1"})
        two = Measure(name="two", factor=3, output_mappings={"length": "len3"})
        load >> [one, two] >> CombineOutputs()
    out = pipeline.run()["default"]["train"].to_list()
    assert out[4] == {"instruction": "q4", "distilabel_metadata": {"src": "load"}, "len1": 2, "len3": 6}
    assert len(out) == 9


def test_merge_columns_spreads_lists_and_drops_sources():
    data = [{"query": f"q{i}", "more": [f"m{i}", f"n{i}"], "keep": i} for i in range(5)]
    with Pipeline(name="merge") as pipeline:
        LoadDataFromDicts(data=data, batch_size=2) >> MergeColumns(columns=["query", "more"], output_column="all")
    out = pipeline.run()["default"]["train"].to_list()
    assert out[2] == {"keep": 2, "all": ["q2", "m2", "n2"]}


def test_expand_columns_one_row_per_item_in_order_with_renames_and_json():
    data = [{"id": i, "gens": [f"g{i}.{j}" for j in range(i % 3 + 1)], "models": json.dumps(["m"] * (i % 3 + 1))}
            for i in range(8)]
    with Pipeline(name="expand") as pipeline:
        LoadDataFromDicts(data=data, batch_size=3) >> ExpandColumns(
            columns={"gens": "generation", "models": "model"}, encoded=["models"], input_batch_size=2)
    out = pipeline.run()["default"]["train"].to_list()
    expected = [{"id": i, "generation": f"g{i}.{j}", "model": "m"} for i in range(8) for j in range(i % 3 + 1)]
    assert out == expected


def test_expand_columns_splits_token_statistics():
    meta = {"statistics_gen": {"input_tokens": 10, "output_tokens": [9, 30]}, "other": 1}
    data = [{"items": ["a", "b", "c"], "distilabel_metadata": meta}]
    with Pipeline(name="expand-stats") as pipeline:
        load = LoadDataFromDicts(data=data)
        load >> ExpandColumns(name="split", columns=["items"], split_statistics=True)
        load >> ExpandColumns(name="plain", columns=["items"])
    result = pipeline.run()
    split = result["split"]["train"].to_list()
    assert [r["items"] for r in split] == ["a", "b", "c"]
    assert split[0]["distilabel_metadata"] == {"statistics_gen": {"input_tokens": 4, "output_tokens": [3, 10]},
                                               "other": 1}
    assert result["plain"]["train"][1]["distilabel_metadata"]["statistics_gen"]["input_tokens"] == 10


def test_expand_columns_rejects_a_non_list_naming_step_and_row():
    data = [{"items": ["a"]}, {"items": "not a list"}]
    with Pipeline(name="expand-bad") as pipeline:
        LoadDataFromDicts(data=data) >> ExpandColumns(name="expander", columns=["items"])
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert info.value.step == "expander"
    assert "column 'items' must hold lists; row 1 holds str" in str(info.value)


def test_truncate_by_characters_and_rejects_non_text():
    data = [{"text": "x" * n} for n in (0, 5, 12)]
    with Pipeline(name="trunc") as pipeline:
        LoadDataFromDicts(data=data) >> TruncateTextColumn(max_length=6)
    assert pipeline.run()["default"]["train"]["text"] == ["", "xxxxx", "xxxxxx"]
    with Pipeline(name="trunc-bad") as pipeline:
        LoadDataFromDicts(data=[{"body": 3}]) >> TruncateTextColumn(name="cut", column="body")
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert "column 'body' must hold strings; row 0 holds int" in str(info.value)


def test_truncate_by_tokens_with_a_local_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from synthpipe.testing.tiny_models import build_tiny_tokenizer

    path = build_tiny_tokenizer(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(path))
    texts = ["the cat sat on the mat and then the dog ran far away", "hi"]
    with Pipeline(name="trunc-tok") as pipeline:
        LoadDataFromDicts(data=[{"text": t} for t in texts]) >> TruncateTextColumn(tokenizer=str(path), max_length=4)
    out = pipeline.run()["default"]["train"]["text"]
    ids = tok.encode(texts[0], add_special_tokens=False)
    assert len(ids) > 4
    assert out[0] == tok.decode(ids[:4], skip_special_tokens=True) and len(out[0]) < len(texts[0])
    assert len(tok.encode(out[0], add_special_tokens=False)) <= 4
    assert out[1] == "hi"
