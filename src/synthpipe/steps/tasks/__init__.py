"""LLM tasks: a prompt from each row, an LLM's answer back into columns."""

from synthpipe.steps.tasks.base import Task
from synthpipe.steps.tasks.text_generation import ChatGeneration, TextGeneration

__all__ = ["ChatGeneration", "Task", "TextGeneration"]

from synthpipe.steps.tasks.ultrafeedback import UltraFeedback  # noqa: E402

__all__ += ["UltraFeedback"]

from synthpipe.steps.tasks.prometheus_eval import PrometheusEval  # noqa: E402

__all__ += ["PrometheusEval"]

from synthpipe.steps.tasks.scorers import ComplexityScorer, InstructionBacktranslation, QualityScorer  # noqa: E402

__all__ += ["ComplexityScorer", "InstructionBacktranslation", "QualityScorer"]

from synthpipe.steps.tasks.clair import CLAIR  # noqa: E402

__all__ += ["CLAIR"]

from synthpipe.steps.tasks.sentence_pair import GenerateSentencePair  # noqa: E402
from synthpipe.steps.tasks.text_classification import TextClassification  # noqa: E402

__all__ += ["GenerateSentencePair", "TextClassification"]

from synthpipe.steps.tasks.text_clustering import TextClustering  # noqa: E402

__all__ += ["TextClustering"]
