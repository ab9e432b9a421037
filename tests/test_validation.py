"""Bad pipelines are refused before any worker starts, with every problem named at once."""

from __future__ import annotations

import pytest

from steps_lib import Join, Measure, Upper, rows
from synthpipe.errors import PipelineDefinitionError, PipelineValidationError
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _no_worker_may_start(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a worker was started for an invalid pipeline")

    monkeypatch.setattr("synthpipe.runtime.local.LocalExecutor._start_workers", refuse)


def _problems(pipeline: Pipeline, **run_kwargs) -> list[str]:
    with pytest.raises(PipelineValidationError) as info:
        pipeline.run(**run_kwargs)
    return info.value.problems


def test_missing_column_names_step_column_and_suggests():
    with Pipeline() as pipeline:
        LoadDataFromDicts(data=[{"instructions": "x"}]) >> Measure(name="measure")
    (problem,) = _problems(pipeline)
    assert "step 'measure' needs column 'instruction'" in problem
    assert "did you mean 'instructions'" in problem


def test_cycle_is_reported():
    with Pipeline() as pipeline:
        load = LoadDataFromDicts(data=rows(3))
        a, b = Measure(name="a"), Upper(name="b")
        load >> a >> b >> a
    problems = _problems(pipeline)
    assert any("cycle: a >> b >> a" in p for p in problems)


def test_root_that_is_not_a_generator():
    with Pipeline() as pipeline:
        Measure(name="orphan")
    (problem,) = _problems(pipeline)
    assert "step 'orphan' has no predecessor and is not a generator" in problem


def test_unknown_runtime_parameters_and_bad_values():
    with Pipeline() as pipeline:
        LoadDataFromDicts(name="load", data=rows(3)) >> Measure(name="measure")
    problems = _problems(
        pipeline,
        parameters={
            "measure": {"factr": 2, "input_batch_size": "many"},
            "mesure": {},
            "load": {"data": []},
        },
    )
    text = "\n".join(problems)
    assert "step 'measure': parameter 'factr' is unknown (did you mean 'factor'?)" in text
    assert "step 'measure': parameter 'input_batch_size'='many' is invalid" in text
    assert "unknown step 'mesure' (did you mean 'measure'?)" in text
    assert "step 'load': parameter 'data' is not a runtime parameter" in text
    assert len(problems) == 4


def test_mappings_to_columns_that_do_not_exist():
    with Pipeline() as pipeline:
        load = LoadDataFromDicts(data=rows(3))
        load >> Measure(name="m", input_mappings={"instrucion": "prompt"}, output_mappings={"lenght": "n"})
    problems = _problems(pipeline)
    text = "\n".join(problems)
    assert "step 'm': input_mappings names 'instrucion'" in text and "did you mean 'instruction'" in text
    assert "step 'm': output_mappings names 'lenght'" in text and "did you mean 'length'" in text


def test_join_of_branches_from_different_generators():
    with Pipeline() as pipeline:
        a = LoadDataFromDicts(name="a", data=rows(3)) >> Measure()
        b = LoadDataFromDicts(name="b", data=rows(3)) >> Upper()
        [a, b] >> Join(name="join")
    (problem,) = _problems(pipeline)
    assert "step 'join' joins branches that start from different sources (a, b)" in problem


def test_all_problems_are_listed_together():
    with Pipeline() as pipeline:
        LoadDataFromDicts(data=[{"x": 1}]) >> Measure(name="m1")
        Upper(name="lonely")
    problems = _problems(pipeline, parameters={"m1": {"nope": 1}})
    assert len(problems) == 3
    with pytest.raises(PipelineValidationError, match="3 problem"):
        pipeline.run(parameters={"m1": {"nope": 1}})


def test_definition_errors_are_immediate():
    with Pipeline() as pipeline:
        Measure(name="same")
        with pytest.raises(PipelineDefinitionError, match="already has a step named 'same'"):
            Measure(name="same")
    with Pipeline():
        other = Upper(name="other")
    with pytest.raises(PipelineDefinitionError, match="not in the same pipeline"):
        pipeline.steps["same"] >> other


def test_wrong_parameter_type_at_construction_is_a_pydantic_error():
    with Pipeline(), pytest.raises(ValueError, match="input_batch_size"):
        Measure(input_batch_size=0)


def test_dataset_of_wrong_type():
    with Pipeline() as pipeline:
        Measure()
    problems = _problems(pipeline, dataset="not rows")
    assert "dataset must be a list of dicts, a datasets.Dataset or a pandas DataFrame, not str" in problems[0]


def test_step_function_parameter_may_not_replace_a_step_attribute():
    from synthpipe.steps import StepInput, step

    with pytest.raises(TypeError, match="parameter\\(s\\) timeout, name would replace"):

        @step(inputs=["a"])
        def Clash(inputs: StepInput, timeout: float = 1.0, name: str = "x"):
            yield inputs
