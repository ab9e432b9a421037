"""distilabel's public names and what each one is in synthpipe: the one table behind the
distilabel-compatible import paths.

A ported pipeline changes ``distilabel`` to ``synthpipe`` in its imports. Each public module of
distilabel 1.5 (its ``__init__`` files and the paths its documentation uses) has a synthpipe
module of the same dotted name. A name that module does not define itself is looked up in
``NAMES`` by the module's ``__getattr__`` (see ``install``):

* ``"package.module:Name"``: the synthpipe object it stands for, imported when first asked for;
* ``No("why, and what to use instead")``: an ``ImportError`` carrying that text, so
  ``from synthpipe.x import Name`` says what to do instead of "cannot import name".

When a module starts to define a name itself (a task or step lands in the library), its entry
here is no longer consulted; ``tests/test_compat.py`` then asks for the entry to be removed, so
this table stays the list of what is still missing. Nothing here imports anything: the table is
data, read only when a name is not found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple


class No(NamedTuple):
    """A distilabel name with no synthpipe object (yet): the reason, with what to use instead."""

    reason: str


class NotInSynthpipe(ImportError):
    """A distilabel name that synthpipe does not have; the message says what to use instead.

    An ``ImportError`` (not an ``AttributeError``) so that ``from module import Name`` shows
    this message instead of Python's generic one."""


def _task(name: str) -> No:
    return No(f"the distilabel task {name} is not in synthpipe's task library yet; subclass "
              "synthpipe.steps.tasks.Task (format_input/format_output) to write it meanwhile")


def _llm(name: str, instead: str = "") -> No:
    return No(f"{name} is not supported yet" + (f"; {instead}" if instead else ""))


_OPENAI_COMPATIBLE = "its API speaks OpenAI's chat format: use OpenAILLM(model=..., base_url=..., api_key=...)"
_VIA_LITELLM = "LiteLLM(model='{prefix}/...') reaches it meanwhile"
_NO_IMAGES = No("synthpipe handles text only so far: image inputs and image generation are not supported yet")
_ENGINE_ONLY = No("this is part of distilabel's engine, not of a pipeline's definition; synthpipe has no "
                  "counterpart and a pipeline does not need one")
_STRUCTURED = No("synthpipe asks for structured output on the LLM: set llm.structured_output to a JSON schema, "
                 "a pydantic model class or synthpipe.models.StructuredOutput")
_GPU_PLACEMENT = No("synthpipe has no CUDA placement mixin; set the device on the model (e.g. "
                    "TransformersLLM(device=...)); per-step GPU placement is not supported yet")

_LLMS: dict[str, str | No] = {
    "LLM": "synthpipe.models.base:LLM",
    "AsyncLLM": "synthpipe.models.base:AsyncLLM",
    "GenerateOutput": "synthpipe.models.base:GenerateOutput",
    "OpenAILLM": "synthpipe.models.openai:OpenAILLM",
    "OllamaLLM": "synthpipe.models.openai:OllamaLLM",
    "ClientvLLM": "synthpipe.models.openai:ClientvLLM",
    "AnthropicLLM": "synthpipe.models.anthropic:AnthropicLLM",
    "InferenceEndpointsLLM": "synthpipe.models.huggingface:InferenceEndpointsLLM",
    "LiteLLM": "synthpipe.models.litellm:LiteLLM",
    "TransformersLLM": "synthpipe.models.transformers:TransformersLLM",
    "LlamaCppLLM": "synthpipe.models.llamacpp:LlamaCppLLM",
    "vLLM": "synthpipe.models.vllm:vLLM",
    "AnyscaleLLM": _llm("AnyscaleLLM", _OPENAI_COMPATIBLE),
    "TogetherLLM": _llm("TogetherLLM", _OPENAI_COMPATIBLE),
    "GroqLLM": _llm("GroqLLM", _OPENAI_COMPATIBLE),
    "AzureOpenAILLM": _llm("AzureOpenAILLM", _VIA_LITELLM.format(prefix="azure")),
    "CohereLLM": _llm("CohereLLM", _VIA_LITELLM.format(prefix="cohere")),
    "MistralLLM": _llm("MistralLLM", _VIA_LITELLM.format(prefix="mistral")),
    "VertexAILLM": _llm("VertexAILLM", _VIA_LITELLM.format(prefix="vertex_ai")),
    "MlxLLM": _llm("MlxLLM"),
    "MixtureOfAgentsLLM": "synthpipe.models.mixture_of_agents:MixtureOfAgentsLLM",
    "SGLang": _llm("SGLang (in-process)", "a `python -m sglang.launch_server` endpoint speaks OpenAI's format: "
                   "use OpenAILLM(base_url=...)"),
    "ClientSGLang": _llm("ClientSGLang", _OPENAI_COMPATIBLE),
    "CudaDevicePlacementMixin": _GPU_PLACEMENT,
    "HiddenState": No("hidden states of local models are not supported yet"),
}

_EMBEDDINGS: dict[str, str | No] = {
    "Embeddings": "synthpipe.models.base:Embeddings",
    "SentenceTransformerEmbeddings": "synthpipe.models.sentence_transformers:SentenceTransformerEmbeddings",
    "LlamaCppEmbeddings": "synthpipe.models.llamacpp:LlamaCppEmbeddings",
    "vLLMEmbeddings": _llm("vLLMEmbeddings", "SentenceTransformerEmbeddings or LlamaCppEmbeddings embed locally"),
    "SGLangEmbeddings": _llm("SGLangEmbeddings", "SentenceTransformerEmbeddings or LlamaCppEmbeddings embed locally"),
}

_IMAGE_MODELS: dict[str, str | No] = dict.fromkeys(
    ["ImageGenerationModel", "AsyncImageGenerationModel", "InferenceEndpointsImageGeneration",
     "OpenAIImageGeneration"], _NO_IMAGES)

_TYPING: dict[str, str | No] = {
    "StepOutput": "synthpipe.steps.base:StepOutput",
    "GeneratorStepOutput": "synthpipe.steps.base:GeneratorStepOutput",
    "StepColumns": "synthpipe.typing:StepColumns",
    "ChatType": "synthpipe.models.base:ChatType",
    "ChatItem": "synthpipe.typing:ChatItem",
    "GenerateOutput": "synthpipe.models.base:GenerateOutput",
    "FormattedInput": "synthpipe.typing:FormattedInput",
    "StandardInput": "synthpipe.typing:StandardInput",
    "LLMOutput": "synthpipe.typing:LLMOutput",
    "LLMStatistics": "synthpipe.typing:LLMStatistics",
    "TokenCount": "synthpipe.typing:TokenCount",
    "InputDataset": "synthpipe.typing:InputDataset",
    "StructuredInput": _STRUCTURED,
    "StructuredOutputType": _STRUCTURED,
    "OutlinesStructuredOutputType": _STRUCTURED,
    "InstructorStructuredOutputType": _STRUCTURED,
    "HiddenState": _LLMS["HiddenState"],
    "LLMLogprobs": No("log-probabilities of generations are not supported yet"),
    "Logprob": No("log-probabilities of generations are not supported yet"),
    "ImageContent": _NO_IMAGES,
    "ImageUrl": _NO_IMAGES,
    "TextContent": No("message contents are plain strings in synthpipe (text only so far)"),
    "LoadGroups": "synthpipe.pipeline.stages:LoadGroups",
    "StepLoadStatus": _ENGINE_ONLY,
    "PipelineRuntimeParametersInfo": _ENGINE_ONLY,
    "DownstreamConnectable": _ENGINE_ONLY,
    "DownstreamConnectableSteps": _ENGINE_ONLY,
    "UpstreamConnectableSteps": _ENGINE_ONLY,
}

_STEPS: dict[str, str | No] = {
    "StepColumns": "synthpipe.typing:StepColumns",
    "EmbeddingGeneration": "synthpipe.steps.embeddings:EmbeddingGeneration",
    "TextClustering": "synthpipe.steps.tasks.text_clustering:TextClustering",
    "CombineColumns": No("distilabel 1.4 renamed CombineColumns to GroupColumns (synthpipe.steps.GroupColumns)"),
    "MinHash": No("distilabel 1.5 replaced MinHash/MinHashLSH with MinHashDedup (synthpipe.steps.MinHashDedup)"),
    "MinHashLSH": No("distilabel 1.5 replaced MinHash/MinHashLSH with MinHashDedup (synthpipe.steps.MinHashDedup)"),
    "PreferenceToArgilla": No("Argilla export steps are not supported yet; save the Distiset and push it with "
                              "the argilla client"),
    "TextGenerationToArgilla": No("Argilla export steps are not supported yet; save the Distiset and push it "
                                  "with the argilla client"),
    "make_generator_step": No("make_generator_step is not supported yet; LoadDataFromDicts(data=rows) or "
                              "pipeline.run(dataset=...) feed in-memory rows"),
}

_TASKS: dict[str, str | No] = {
    "ChatType": "synthpipe.models.base:ChatType",
    "ChatItem": "synthpipe.typing:ChatItem",
    "ImageTask": _NO_IMAGES,
    "ImageGeneration": _NO_IMAGES,
    "task": No("the @task decorator is not supported yet; subclass synthpipe.steps.tasks.Task"),
    "ArgillaLabeller": _task("ArgillaLabeller"),
    "PairRM": _task("PairRM"),
}

_PIPELINE: dict[str, str | No] = {
    "RayPipeline": No("running on Ray is not supported yet; Pipeline runs every step in local processes"),
    "InstructionResponsePipeline": No("pipeline templates are not supported yet; build the pipeline with "
                                      "a generator step >> TextGeneration"),
    "DatasetInstructionResponsePipeline": No("pipeline templates are not supported yet; build the pipeline "
                                             "with a generator step >> TextGeneration"),
}

NAMES: dict[str, dict[str, str | No]] = {
    "synthpipe.typing": _TYPING,
    "synthpipe.steps.typing": {k: _TYPING[k] for k in ("StepOutput", "GeneratorStepOutput", "StepColumns")},
    "synthpipe.steps.tasks.typing": {k: _TYPING[k] for k in (
        "ChatType", "ChatItem", "FormattedInput", "StandardInput", "StructuredInput", "StructuredOutputType",
        "OutlinesStructuredOutputType", "InstructorStructuredOutputType")},
    "synthpipe.mixins.runtime_parameters": {
        "RuntimeParameter": "synthpipe.steps.base:RuntimeParameter",
        "RuntimeParametersMixin": No("synthpipe needs no mixin: annotate a field of a step or model with "
                                     "RuntimeParameter[...] and it can be set at pipeline.run(parameters=...)"),
        "RuntimeParametersModelMixin": No("synthpipe needs no mixin: annotate a field of a step or model with "
                                          "RuntimeParameter[...]"),
        "RuntimeParameterInfo": _ENGINE_ONLY,
        "RuntimeParametersNames": _ENGINE_ONLY,
    },
    "synthpipe.models": {**_LLMS, **_EMBEDDINGS, **_IMAGE_MODELS},
    "synthpipe.models.llms": _LLMS,
    "synthpipe.llms": _LLMS,
    "synthpipe.models.llms.base": {k: _LLMS[k] for k in ("LLM", "AsyncLLM")},
    "synthpipe.models.llms.openai": {k: _LLMS[k] for k in ("OpenAILLM",)},
    "synthpipe.models.llms.ollama": {k: _LLMS[k] for k in ("OllamaLLM",)},
    "synthpipe.models.llms.vllm": {k: _LLMS[k] for k in ("vLLM", "ClientvLLM")},
    "synthpipe.models.llms.anthropic": {k: _LLMS[k] for k in ("AnthropicLLM",)},
    "synthpipe.models.llms.litellm": {k: _LLMS[k] for k in ("LiteLLM",)},
    "synthpipe.models.llms.llamacpp": {k: _LLMS[k] for k in ("LlamaCppLLM",)},
    "synthpipe.models.llms.huggingface": {k: _LLMS[k] for k in ("InferenceEndpointsLLM", "TransformersLLM")},
    "synthpipe.models.embeddings": _EMBEDDINGS,
    "synthpipe.embeddings": _EMBEDDINGS,
    "synthpipe.models.embeddings.base": {k: _EMBEDDINGS[k] for k in ("Embeddings",)},
    "synthpipe.models.embeddings.sentence_transformers": {
        k: _EMBEDDINGS[k] for k in ("SentenceTransformerEmbeddings",)},
    "synthpipe.models.embeddings.llamacpp": {k: _EMBEDDINGS[k] for k in ("LlamaCppEmbeddings",)},
    "synthpipe.steps": _STEPS,
    "synthpipe.steps.tasks": _TASKS,
    "synthpipe.pipeline": _PIPELINE,
    "synthpipe.distiset": {
        "create_distiset": No("synthpipe builds the Distiset from its run store: use the one pipeline.run() "
                              "returns, or Distiset.load_from_disk(path) for a saved one"),
    },
    "synthpipe.errors": {
        "DistilabelError": "synthpipe.errors:SynthpipeError",
        "DistilabelUserError": "synthpipe.errors:SynthpipeUserError",
        "DistilabelTypeError": "synthpipe.errors:SynthpipeTypeError",
        "DistilabelNotImplementedError": "synthpipe.errors:SynthpipeNotImplementedError",
    },
}
"""synthpipe module -> distilabel name -> the synthpipe object's path, or why there is none."""


def resolve(module: str, name: str) -> Any:
    """The object ``name`` stands for in ``module``; ``NotInSynthpipe`` with the table's reason."""
    entry = NAMES.get(module, {}).get(name)
    if entry is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    if isinstance(entry, No):
        raise NotInSynthpipe(f"cannot import {name!r} from {module!r}: {entry.reason}", name=name, path=module)
    import importlib

    target_module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(target_module), attr)


def available(module: str) -> list[str]:
    """The names the table gives ``module`` that do exist in synthpipe."""
    return [name for name, entry in NAMES.get(module, {}).items() if not isinstance(entry, No)]


def install(module: str, namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``module``: names it lacks come from the table (a
    name found is kept in ``namespace``, so it is imported once)."""

    def __getattr__(name: str) -> Any:
        value = resolve(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *available(module)})

    return __getattr__, __dir__
