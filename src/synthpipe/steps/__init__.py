"""Step classes, the ``@step`` decorator and built-in steps."""

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # for type checkers and editors; at run time they come from __getattr__ below
    from synthpipe.steps.clustering import DBSCAN, UMAP
    from synthpipe.steps.columns import (
        CombineOutputs,
        ExpandColumns,
        GroupColumns,
        KeepColumns,
        MergeColumns,
        TruncateTextColumn,
    )
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

_BUILT_IN = {
    "DBSCAN": "clustering",
    "UMAP": "clustering",
    "CombineOutputs": "columns",
    "ExpandColumns": "columns",
    "GroupColumns": "columns",
    "KeepColumns": "columns",
    "MergeColumns": "columns",
    "TruncateTextColumn": "columns",
    "DeitaFiltering": "filtering",
    "EmbeddingDedup": "filtering",
    "FaissNearestNeighbour": "filtering",
    "MinHashDedup": "filtering",
    "ConversationTemplate": "formatting",
    "FormatChatGenerationDPO": "formatting",
    "FormatChatGenerationSFT": "formatting",
    "FormatTextGenerationDPO": "formatting",
    "FormatTextGenerationSFT": "formatting",
    "DataSampler": "generators",
    "LoadDataFromDicts": "generators",
    "LoadDataFromDisk": "generators",
    "LoadDataFromFileSystem": "generators",
    "LoadDataFromHub": "generators",
    "PushToHub": "hub",
    "RewardModelScore": "reward_model",
}
"""Built-in steps, by the subpackage they come from: imported on first use, so that the step API
(which every worker and the fork server import) does not bring every built-in step with it."""

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
_compat_getattr, _compat_dir = _compat.install(__name__, globals())


def __getattr__(name: str) -> Any:
    where = _BUILT_IN.get(name)
    if where is None:
        return _compat_getattr(name)
    value = getattr(importlib.import_module(f"{__name__}.{where}"), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted({*_compat_dir(), *_BUILT_IN})
