"""LLM tasks: a prompt from each row, an LLM's answer back into columns."""

from synthpipe.steps.tasks.base import Task
from synthpipe.steps.tasks.text_generation import ChatGeneration, TextGeneration

__all__ = ["ChatGeneration", "Task", "TextGeneration"]

from synthpipe.steps.tasks.embedding_data import (  # noqa: E402
    BitextRetrievalGenerator,
    EmbeddingTaskGenerator,
    GenerateLongTextMatchingData,
    GenerateShortTextMatchingData,
    GenerateTextClassificationData,
    GenerateTextRetrievalData,
    MonolingualTripletGenerator,
)
from synthpipe.steps.tasks.generator_task import GeneratorTask  # noqa: E402

__all__ += [
    "BitextRetrievalGenerator", "EmbeddingTaskGenerator", "GenerateLongTextMatchingData",
    "GenerateShortTextMatchingData", "GenerateTextClassificationData", "GenerateTextRetrievalData",
    "GeneratorTask", "MonolingualTripletGenerator",
]

from synthpipe.steps.tasks.math_shepherd import FormatPRM, MathShepherdCompleter, MathShepherdGenerator  # noqa: E402

__all__ += ["FormatPRM", "MathShepherdCompleter", "MathShepherdGenerator"]

from synthpipe.steps.tasks.apigen import APIGenExecutionChecker, APIGenGenerator, APIGenSemanticChecker  # noqa: E402

__all__ += ["APIGenExecutionChecker", "APIGenGenerator", "APIGenSemanticChecker"]

from synthpipe.steps.tasks.generate_embeddings import GenerateEmbeddings  # noqa: E402

__all__ += ["GenerateEmbeddings"]
