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
from synthpipe.steps.columns import (
    CombineOutputs,
    ExpandColumns,
    GroupColumns,
    KeepColumns,
    MergeColumns,
    TruncateTextColumn,
)
from synthpipe.steps.decorator import step
from synthpipe.steps.formatting import (
    ConversationTemplate,
    FormatChatGenerationDPO,
    FormatChatGenerationSFT,
    FormatTextGenerationDPO,
    FormatTextGenerationSFT,
)
from synthpipe.steps.generators.data import LoadDataFromDicts

__all__ = [
    "CombineOutputs",
    "ConversationTemplate",
    "ExpandColumns",
    "FormatChatGenerationDPO",
    "FormatChatGenerationSFT",
    "FormatTextGenerationDPO",
    "FormatTextGenerationSFT",
    "GeneratorStep",
    "GeneratorStepOutput",
    "GlobalStep",
    "GroupColumns",
    "KeepColumns",
    "LoadDataFromDicts",
    "MergeColumns",
    "RowFailure",
    "RuntimeParameter",
    "Step",
    "StepInput",
    "StepOutput",
    "StepResources",
    "StepResult",
    "TruncateTextColumn",
    "step",
]
