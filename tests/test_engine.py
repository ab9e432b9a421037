"""The user-facing API end to end, with real worker processes."""

from __future__ import annotations

import gc
import logging

import pytest
from datasets import Dataset

from steps_lib import CollectBranches, CountAll, Join, KeepEven, Measure, RebuildEven, RecordPid, Upper, rows
from synthpipe.distiset import Distiset
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, StepInput, StepResources, step

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("no_leftover_workers")]


def test_issue_example_runs_and_keeps_order():
    with Pipeline(name="demo") as pipeline:
        load = LoadDataFromDicts(data=rows(10_000), batch_size=100)
        measure = Measure(input_batch_size=50)
        load >> measure
    collector = (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled())
    distiset = pipeline.run()
    # the coordinator's loop collects less often while it runs, and gives the collector back as it was
    assert (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled()) == collector
    train = distiset["default"]["train"]
    assert train.num_rows == 10_000
    assert train[0] == {"instruction": "q0", "length": 2}
    assert train["instruction"] == [f"q{i}" for i in range(10_000)]
    assert train[9_999]["length"] == len("q9999")


def test_step_names_are_inferred_and_unique():
    with Pipeline():
        a = Measure()
        b = Measure()
        c = Upper(name="shout")
    assert (a.name, b.name, c.name) == ("measure_0", "measure_1", "shout")


def test_replicas_run_in_separate_processes_and_keep_order():
    with Pipeline(name="replicas") as pipeline:
        load = LoadDataFromDicts(data=rows(600), batch_size=20)
        where = RecordPid(input_batch_size=10, delay=0.05, resources=StepResources(replicas=3))
        load >> where
    train = pipeline.run()["default"]["train"]
    assert train["instruction"] == [f"q{i}" for i in range(600)]
    assert len(set(train["pid"])) == 3


def test_fan_out_and_join_align_rows_in_original_order():
    with Pipeline(name="join") as pipeline:
        load = LoadDataFromDicts(data=rows(1_000), batch_size=64)
        measure = Measure(input_batch_size=30, resources=StepResources(replicas=2))
        upper = Upper(input_batch_size=7)
        join = Join(input_batch_size=50)
        load >> [measure, upper] >> join
    train = pipeline.run()["default"]["train"]
    assert train["instruction"] == [f"q{i}" for i in range(1_000)]
    assert train["upper"] == [f"Q{i}" for i in range(1_000)]
    assert train["length"] == [len(f"q{i}") for i in range(1_000)]


def test_several_leaves_are_keyed_by_step_name():
    with Pipeline(name="leaves") as pipeline:
        load = LoadDataFromDicts(data=rows(50), batch_size=10)
        load >> [Measure(name="m"), KeepEven(name="even")]
    distiset = pipeline.run()
    assert sorted(distiset) == ["even", "m"]
    assert distiset["m"]["train"].num_rows == 50
    assert distiset["even"]["train"]["instruction"] == [f"q{i}" for i in range(0, 50, 2)]


def test_global_step_receives_every_row_at_once():
    with Pipeline(name="global") as pipeline:
        load = LoadDataFromDicts(data=rows(333), batch_size=10)
        load >> KeepEven(input_batch_size=7) >> CountAll() >> Upper()
    train = pipeline.run()["default"]["train"]
    assert train.to_list() == [{"instruction": "all", "total": 167, "upper": "ALL"}]


def test_runtime_parameters_are_applied():
    with Pipeline(name="params") as pipeline:
        load = LoadDataFromDicts(data=rows(20))
        load >> Measure(name="measure")
    distiset = pipeline.run(parameters={"measure": {"factor": 10, "input_batch_size": 3},
                                        load.name: {"batch_size": 4}})
    assert distiset["default"]["train"]["length"][:2] == [20, 20]
    # the user's step objects are not changed by a run's parameters
    assert pipeline.steps["measure"].factor == 1


def test_input_and_output_mappings():
    with Pipeline(name="mappings") as pipeline:
        load = LoadDataFromDicts(data=[{"prompt": "abc"}, {"prompt": "hello"}])
        measure = Measure(input_mappings={"instruction": "prompt"}, output_mappings={"length": "n_chars"})
        load >> measure
    train = pipeline.run()["default"]["train"]
    assert train.to_list() == [{"prompt": "abc", "n_chars": 3}, {"prompt": "hello", "n_chars": 5}]


@pytest.mark.parametrize("kind", ["list", "dataset", "pandas"])
def test_run_with_in_memory_dataset(kind):
    data = rows(25)
    if kind == "dataset":
        data = Dataset.from_list(data)
    elif kind == "pandas":
        data = Dataset.from_list(data).to_pandas()
    with Pipeline(name="dataset") as pipeline:
        Measure(input_batch_size=4)
    train = pipeline.run(dataset=data)["default"]["train"]
    assert train["instruction"] == [f"q{i}" for i in range(25)]


def test_dry_run_processes_a_single_row():
    with Pipeline(name="dry") as pipeline:
        load = LoadDataFromDicts(data=rows(1_000), batch_size=100)
        load >> Measure() >> Upper()
    train = pipeline.dry_run()["default"]["train"]
    assert train.to_list() == [{"instruction": "q0", "length": 2, "upper": "Q0"}]


def test_distiset_save_and_load(tmp_path):
    with Pipeline(name="save") as pipeline:
        LoadDataFromDicts(data=rows(12), batch_size=5) >> Measure()
    distiset = pipeline.run()
    distiset.save_to_disk(tmp_path / "out")
    again = Distiset.load_from_disk(tmp_path / "out")
    assert again["default"]["train"].to_list() == distiset["default"]["train"].to_list()


@step(inputs=["instruction"], outputs=["instruction"])
def Chatty(inputs: StepInput):
    logging.getLogger("synthpipe.step.chatty").info("saw %d rows", len(inputs))
    yield inputs


def test_log_file_in_run_directory_holds_worker_lines():
    with Pipeline(name="logs") as pipeline:
        LoadDataFromDicts(data=rows(6), batch_size=3) >> Chatty()
    distiset = pipeline.run()
    text = distiset.log_path.read_text()
    assert "running pipeline 'logs'" in text
    assert "saw 6 rows" in text


def test_filter_that_drops_everything_still_finishes():
    with Pipeline(name="empty") as pipeline:
        LoadDataFromDicts(data=[{"instruction": "q1"}, {"instruction": "q3"}]) >> KeepEven() >> Upper()
    train = pipeline.run()["default"]["train"]
    assert train.num_rows == 0


def test_forkserver_start_method(monkeypatch):
    monkeypatch.setenv("SYNTHPIPE_START_METHOD", "forkserver")
    with Pipeline(name="forkserver") as pipeline:
        LoadDataFromDicts(data=rows(100), batch_size=10) >> Measure(input_batch_size=7) >> Upper()
    train = pipeline.run()["default"]["train"]
    assert train["upper"] == [f"Q{i}" for i in range(100)]


def test_backpressure_bounds_rows_held_by_the_coordinator(monkeypatch):
    """A fast generator feeding a slow step: rows held stay near the bound, not the dataset."""
    from synthpipe.runtime.scheduler import Scheduler

    peak = {"rows": 0}
    original = Scheduler._advance

    def observed(self):
        actions = original(self)
        peak["rows"] = max(peak["rows"], self.rows_held())
        return actions

    monkeypatch.setattr(Scheduler, "_advance", observed)
    with Pipeline(name="backpressure", max_rows_in_flight=300) as pipeline:
        load = LoadDataFromDicts(data=rows(5_000), batch_size=50)
        load >> RecordPid(input_batch_size=50, delay=0.01)
    train = pipeline.run()["default"]["train"]
    assert train.num_rows == 5_000
    # the bound plus one generator batch per outstanding request (2)
    assert peak["rows"] <= 300 + 2 * 50, peak


def test_join_stays_aligned_when_a_branch_rebuilds_and_filters_rows():
    with Pipeline(name="join-filter") as pipeline:
        load = LoadDataFromDicts(data=rows(95), batch_size=10)
        load >> [Upper(input_batch_size=3), RebuildEven(input_batch_size=4)] >> CollectBranches()
    train = pipeline.run()["default"]["train"]
    groups = train.to_list()
    assert len(groups) == 10
    for k, group in enumerate(groups):
        expected = list(range(10 * k, min(10 * k + 10, 95)))
        assert group["left"] == expected
        assert group["right"] == [i for i in expected if i % 2 == 0]
