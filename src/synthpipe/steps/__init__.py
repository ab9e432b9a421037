"""Step classes, the ``@step`` decorator and built-in steps."""

from synthpipe.steps.base import (
    GeneratorStep,
    GeneratorStepOutput,
    GlobalStep,
    RowFailure,
    RuntimeParameter,
    Step,
    StepInput,
    StepOutput,
    StepResources,
    StepResult,
)
from synthpipe.steps.decorator import step
from synthpipe.steps.generators.data import LoadDataFromDicts

__all__ = [
    "GeneratorStep",
    "GeneratorStepOutput",
    "GlobalStep",
    "LoadDataFromDicts",
    "RowFailure",
    "RuntimeParameter",
    "Step",
    "StepInput",
    "StepOutput",
    "StepResources",
    "StepResult",
    "step",
]
