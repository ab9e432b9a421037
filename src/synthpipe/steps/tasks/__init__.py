"""LLM tasks: a prompt from each row, an LLM's answer back into columns."""

from synthpipe import _compat
from synthpipe.steps.tasks.base import Task
from synthpipe.steps.tasks.text_generation import ChatGeneration, TextGeneration

__all__ = ["ChatGeneration", "Task", "TextGeneration"]

# distilabel names this package lacks: what they are here, or what to use instead (synthpipe/_compat.py)
__getattr__, __dir__ = _compat.install(__name__, globals())
