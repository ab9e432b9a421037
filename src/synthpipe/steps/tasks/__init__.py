"""LLM tasks: a prompt from each row, an LLM's answer back into columns."""

from synthpipe import _compat
from synthpipe.steps.tasks.apigen import APIGenExecutionChecker, APIGenGenerator, APIGenSemanticChecker
from synthpipe.steps.tasks.base import Task
from synthpipe.steps.tasks.clair import CLAIR
from synthpipe.steps.tasks.embedding_data import (
    BitextRetrievalGenerator,
    EmbeddingTaskGenerator,
    GenerateLongTextMatchingData,
    GenerateShortTextMatchingData,
    GenerateTextClassificationData,
    GenerateTextRetrievalData,
    MonolingualTripletGenerator,
)
from synthpipe.steps.tasks.evol_generator import EvolComplexityGenerator, EvolInstructGenerator
from synthpipe.steps.tasks.evol_instruct import EvolComplexity, EvolInstruct, EvolQuality
from synthpipe.steps.tasks.generate_embeddings import GenerateEmbeddings
from synthpipe.steps.tasks.generation import StructuredGeneration, TextGenerationWithImage
from synthpipe.steps.tasks.generator_task import GeneratorTask
from synthpipe.steps.tasks.instructions import URIAL, Genstruct, SelfInstruct
from synthpipe.steps.tasks.magpie import Magpie, MagpieGenerator
from synthpipe.steps.tasks.math_shepherd import FormatPRM, MathShepherdCompleter, MathShepherdGenerator
from synthpipe.steps.tasks.prometheus_eval import PrometheusEval
from synthpipe.steps.tasks.scorers import ComplexityScorer, InstructionBacktranslation, QualityScorer
from synthpipe.steps.tasks.sentence_pair import GenerateSentencePair
from synthpipe.steps.tasks.text_classification import TextClassification
from synthpipe.steps.tasks.text_clustering import TextClustering
from synthpipe.steps.tasks.text_generation import ChatGeneration, TextGeneration
from synthpipe.steps.tasks.ultrafeedback import UltraFeedback

__all__ = [
    "APIGenExecutionChecker",
    "APIGenGenerator",
    "APIGenSemanticChecker",
    "BitextRetrievalGenerator",
    "CLAIR",
    "ChatGeneration",
    "ComplexityScorer",
    "EmbeddingTaskGenerator",
    "EvolComplexity",
    "EvolComplexityGenerator",
    "EvolInstruct",
    "EvolInstructGenerator",
    "EvolQuality",
    "FormatPRM",
    "GenerateEmbeddings",
    "GenerateLongTextMatchingData",
    "GenerateSentencePair",
    "GenerateShortTextMatchingData",
    "GenerateTextClassificationData",
    "GenerateTextRetrievalData",
    "GeneratorTask",
    "Genstruct",
    "InstructionBacktranslation",
    "Magpie",
    "MagpieGenerator",
    "MathShepherdCompleter",
    "MathShepherdGenerator",
    "MonolingualTripletGenerator",
    "PrometheusEval",
    "QualityScorer",
    "SelfInstruct",
    "StructuredGeneration",
    "Task",
    "TextClassification",
    "TextClustering",
    "TextGeneration",
    "TextGenerationWithImage",
    "URIAL",
    "UltraFeedback",
]

# distilabel names this package lacks: what they are here, or what to use instead (synthpipe/_compat.py)
__getattr__, __dir__ = _compat.install(__name__, globals())
