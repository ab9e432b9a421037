"""Step classes, the ``@step`` decorator and built-in steps."""

from synthpipe import _compat
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

# distilabel names this package lacks: what they are here, or what to use instead (synthpipe/_compat.py)
__getattr__, __dir__ = _compat.install(__name__, globals())
