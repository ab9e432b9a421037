"""synthpipe: pipelines that generate synthetic data with LLMs, where a failure is never
hidden, never hangs and never loses finished work.

Importing the package is cheap; ``synthpipe.pipeline`` and ``synthpipe.steps`` hold the API.
"""

__version__ = "0.1.0"
