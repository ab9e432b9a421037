"""LLM tasks: a prompt from each row, an LLM's answer back into columns."""

from synthpipe import _compat
from synthpipe.steps.tasks.base import Task
from synthpipe.steps.tasks.evol_generator import EvolComplexityGenerator, EvolInstructGenerator
from synthpipe.steps.tasks.evol_instruct import EvolComplexity, EvolInstruct, EvolQuality
from synthpipe.steps.tasks.generation import StructuredGeneration, TextGenerationWithImage
from synthpipe.steps.tasks.instructions import URIAL, Genstruct, SelfInstruct
from synthpipe.steps.tasks.magpie import Magpie, MagpieGenerator
from synthpipe.steps.tasks.text_generation import ChatGeneration, TextGeneration

__all__ = ["ChatGeneration", "Task", "TextGeneration"]
__all__ += ["EvolComplexity", "EvolComplexityGenerator", "EvolInstruct", "EvolInstructGenerator", "EvolQuality",
            "Genstruct", "SelfInstruct", "StructuredGeneration", "TextGenerationWithImage", "URIAL"]
__all__ += ["Magpie", "MagpieGenerator"]

# distilabel names this package lacks: what they are here, or what to use instead (synthpipe/_compat.py)
__getattr__, __dir__ = _compat.install(__name__, globals())
