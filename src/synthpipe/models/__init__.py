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
    RemoteLLM,
    StructuredOutput,
)
from synthpipe.models.openai import ClientvLLM, OllamaLLM, OpenAILLM

_LAZY = {  # backends whose modules are only imported when named (they pull in more)
    "AnthropicLLM": "synthpipe.models.anthropic",
    "InferenceEndpointsLLM": "synthpipe.models.huggingface",
    "LiteLLM": "synthpipe.models.litellm",
    "TransformersLLM": "synthpipe.models.transformers",
    "LlamaCppLLM": "synthpipe.models.llamacpp",
    "MixtureOfAgentsLLM": "synthpipe.models.mixture_of_agents",
    "LlamaCppEmbeddings": "synthpipe.models.llamacpp",
    "SentenceTransformerEmbeddings": "synthpipe.models.sentence_transformers",
    "vLLM": "synthpipe.models.vllm",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    from synthpipe import _compat  # distilabel names: what they are here, or what to use instead

    return _compat.resolve(__name__, name)


def __dir__() -> list[str]:
    from synthpipe import _compat

    return sorted({*globals(), *_LAZY, *_compat.available(__name__)})


__all__ = [
    *_LAZY,
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
    "RemoteLLM",
    "StructuredOutput",
]
