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
from synthpipe.steps.clustering import DBSCAN, UMAP
from synthpipe.steps.columns import (
    CombineOutputs,
    ExpandColumns,
    GroupColumns,
    KeepColumns,
    MergeColumns,
    TruncateTextColumn,
)
from synthpipe.steps.decorator import step
from synthpipe.steps.filtering import DeitaFiltering, EmbeddingDedup, FaissNearestNeighbour, MinHashDedup
from synthpipe.steps.formatting import (
    ConversationTemplate,
    FormatChatGenerationDPO,
    FormatChatGenerationSFT,
    FormatTextGenerationDPO,
    FormatTextGenerationSFT,
)
from synthpipe.steps.generators import (
    DataSampler,
    LoadDataFromDicts,
    LoadDataFromDisk,
    LoadDataFromFileSystem,
    LoadDataFromHub,
)
from synthpipe.steps.hub import PushToHub
from synthpipe.steps.reward_model import RewardModelScore

__all__ = [
    "DBSCAN",
    "UMAP",
    "CombineOutputs",
    "ConversationTemplate",
    "DataSampler",
    "DeitaFiltering",
    "EmbeddingDedup",
    "ExpandColumns",
    "FaissNearestNeighbour",
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
    "LoadDataFromDisk",
    "LoadDataFromFileSystem",
    "LoadDataFromHub",
    "MergeColumns",
    "MinHashDedup",
    "PushToHub",
    "RewardModelScore",
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

# distilabel names this package lacks: what they are here, or what to use instead (synthpipe/_compat.py)
__getattr__, __dir__ = _compat.install(__name__, globals())
