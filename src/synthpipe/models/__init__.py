"""LLMs and embedding models. Backends import their engines (aiohttp, torch, llama.cpp...)
only when they load, so importing this package stays cheap."""

from synthpipe.models.base import (
    LLM,
    AsyncLLM,
    BatchLLM,
    ChatType,
    Embeddings,
    GenerateOutput,
    InvalidStructuredOutput,
    StructuredOutput,
)
from synthpipe.models.openai import ClientvLLM, OllamaLLM, OpenAILLM

__all__ = [
    "LLM",
    "AsyncLLM",
    "BatchLLM",
    "ChatType",
    "ClientvLLM",
    "Embeddings",
    "GenerateOutput",
    "InvalidStructuredOutput",
    "OllamaLLM",
    "OpenAILLM",
    "StructuredOutput",
]
