"""distilabel's public import paths under synthpipe: each name is the same concept, or its
import fails with a message saying what to use instead (the table in synthpipe/_compat.py)."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys

import pytest

from conftest import python_path
from synthpipe import _compat
from synthpipe.models.llms import OpenAILLM as PortedLLM
from synthpipe.steps import StepInput, step
from synthpipe.typing import StepOutput

# distilabel 1.5's public names, by module (its __init__ files and the paths its docs import from).
DISTILABEL = {
    "typing": [
        "ChatItem", "ChatType", "DownstreamConnectable", "DownstreamConnectableSteps", "FormattedInput",
        "GenerateOutput", "GeneratorStepOutput", "HiddenState", "ImageContent", "ImageUrl", "InputDataset",
        "InstructorStructuredOutputType", "LLMLogprobs", "LLMOutput", "LLMStatistics", "LoadGroups", "Logprob",
        "OutlinesStructuredOutputType", "PipelineRuntimeParametersInfo", "StandardInput", "StepColumns",
        "StepLoadStatus", "StepOutput", "StructuredInput", "StructuredOutputType", "TextContent", "TokenCount",
        "UpstreamConnectableSteps",
    ],
    "mixins.runtime_parameters": ["RuntimeParameter", "RuntimeParametersMixin"],
    "models": [
        "LLM", "AnthropicLLM", "AnyscaleLLM", "AsyncImageGenerationModel", "AsyncLLM", "AzureOpenAILLM",
        "ClientSGLang", "ClientvLLM", "CohereLLM", "CudaDevicePlacementMixin", "Embeddings", "GenerateOutput",
        "GroqLLM", "HiddenState", "ImageGenerationModel", "InferenceEndpointsImageGeneration",
        "InferenceEndpointsLLM", "LiteLLM", "LlamaCppEmbeddings", "LlamaCppLLM", "MistralLLM", "MixtureOfAgentsLLM",
        "MlxLLM", "OllamaLLM", "OpenAIImageGeneration", "OpenAILLM", "SGLang", "SGLangEmbeddings",
        "SentenceTransformerEmbeddings", "TogetherLLM", "TransformersLLM", "VertexAILLM", "vLLM", "vLLMEmbeddings",
    ],
    "models.llms": [
        "AnthropicLLM", "AnyscaleLLM", "AzureOpenAILLM", "LLM", "AsyncLLM", "CohereLLM", "GroqLLM",
        "InferenceEndpointsLLM", "LiteLLM", "LlamaCppLLM", "MistralLLM", "CudaDevicePlacementMixin",
        "MixtureOfAgentsLLM", "MlxLLM", "OllamaLLM", "OpenAILLM", "TogetherLLM", "TransformersLLM",
        "GenerateOutput", "HiddenState", "VertexAILLM", "ClientvLLM", "vLLM",
    ],
    "models.llms.huggingface": ["InferenceEndpointsLLM", "TransformersLLM"],
    "models.llms.openai": ["OpenAILLM"],
    "models.llms.anthropic": ["AnthropicLLM"],
    "models.llms.vllm": ["vLLM", "ClientvLLM"],
    "models.embeddings": ["Embeddings", "LlamaCppEmbeddings", "SentenceTransformerEmbeddings", "vLLMEmbeddings"],
    "llms": ["OpenAILLM", "InferenceEndpointsLLM", "TransformersLLM", "vLLM", "GroqLLM"],
    "embeddings": ["SentenceTransformerEmbeddings", "LlamaCppEmbeddings", "vLLMEmbeddings"],
    "steps": [
        "DBSCAN", "UMAP", "CombineOutputs", "ConversationTemplate", "DataSampler", "DeitaFiltering",
        "EmbeddingDedup", "EmbeddingGeneration", "ExpandColumns", "FaissNearestNeighbour",
        "FormatChatGenerationDPO", "FormatChatGenerationSFT", "FormatTextGenerationDPO", "FormatTextGenerationSFT",
        "GeneratorStep", "GeneratorStepOutput", "GlobalStep", "GroupColumns", "KeepColumns", "LoadDataFromDicts",
        "LoadDataFromDisk", "LoadDataFromFileSystem", "LoadDataFromHub", "MergeColumns", "MinHashDedup",
        "PreferenceToArgilla", "PushToHub", "RewardModelScore", "Step", "StepInput", "StepOutput",
        "StepResources", "TextClustering", "TextGenerationToArgilla", "TruncateTextColumn", "make_generator_step",
        "step", "StepColumns", "CombineColumns",
    ],
    "steps.tasks": [
        "CLAIR", "URIAL", "APIGenExecutionChecker", "APIGenGenerator", "APIGenSemanticChecker", "ArgillaLabeller",
        "BitextRetrievalGenerator", "ChatGeneration", "ChatItem", "ChatType", "ComplexityScorer",
        "EmbeddingTaskGenerator", "EvolComplexity", "EvolComplexityGenerator", "EvolInstruct",
        "EvolInstructGenerator", "EvolQuality", "FormatPRM", "GenerateEmbeddings", "GenerateLongTextMatchingData",
        "GenerateSentencePair", "GenerateShortTextMatchingData", "GenerateTextClassificationData",
        "GenerateTextRetrievalData", "GeneratorTask", "Genstruct", "ImageGeneration", "ImageTask",
        "InstructionBacktranslation", "Magpie", "MagpieGenerator", "MathShepherdCompleter", "MathShepherdGenerator",
        "MonolingualTripletGenerator", "PairRM", "PrometheusEval", "QualityScorer", "SelfInstruct",
        "StructuredGeneration", "Task", "TextClassification", "TextGeneration", "TextGenerationWithImage",
        "UltraFeedback", "task",
    ],
    "steps.typing": ["StepOutput", "GeneratorStepOutput", "StepColumns"],
    "steps.tasks.typing": ["ChatType", "ChatItem", "FormattedInput"],
    "pipeline": ["Pipeline", "RayPipeline", "routing_batch_function", "sample_n_steps"],
    "distiset": ["Distiset", "create_distiset"],
    "errors": ["DistilabelError", "DistilabelUserError", "DistilabelTypeError", "DistilabelNotImplementedError"],
}

CASES = [(f"synthpipe.{module}", name) for module, names in DISTILABEL.items() for name in names]
TABLE = [(module, name, entry) for module, names in _compat.NAMES.items() for name, entry in names.items()]


@pytest.mark.parametrize("module", sorted({m for m, _ in CASES} | set(_compat.NAMES)))
def test_every_distilabel_path_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize(("module", "name"), CASES, ids=[f"{m}.{n}" for m, n in CASES])
def test_every_distilabel_name_resolves_or_says_what_to_use(module, name):
    """Each name is either there, or its import fails with the table's message, never with
    Python's bare "cannot import name"."""
    namespace: dict = {}
    try:
        exec(f"from {module} import {name}", namespace)
    except _compat.NotInSynthpipe as exc:
        assert name in str(exc) and _compat.NAMES[module][name].reason in str(exc)
    else:
        assert namespace[name] is not None


@pytest.mark.parametrize(("module", "name", "entry"), TABLE, ids=[f"{m}.{n}" for m, n, _ in TABLE])
def test_the_table_is_what_the_modules_do(module, name, entry):
    mod = importlib.import_module(module)
    if isinstance(entry, _compat.No):
        assert name not in vars(mod), (
            f"{module} defines {name} now: replace its 'not yet' entry in synthpipe/_compat.py by the object's "
            "path (or remove it)")
        with pytest.raises(ImportError, match=f"cannot import '{name}' from '{module}': "):
            exec(f"from {module} import {name}", {})
        assert name not in dir(mod)
    else:
        target_module, _, attr = entry.partition(":")
        assert getattr(mod, name) is getattr(importlib.import_module(target_module), attr)
        assert name in dir(mod)


def test_same_concepts_under_the_distilabel_paths():
    import synthpipe.errors as errors
    import synthpipe.llms
    import synthpipe.mixins.runtime_parameters as rp
    import synthpipe.models
    import synthpipe.models.llms.huggingface as hf
    import synthpipe.steps
    import synthpipe.typing

    assert synthpipe.typing.StepOutput is synthpipe.steps.StepOutput
    assert synthpipe.typing.GenerateOutput is synthpipe.models.GenerateOutput
    assert rp.RuntimeParameter is synthpipe.steps.RuntimeParameter
    assert synthpipe.llms.OpenAILLM is synthpipe.models.OpenAILLM
    assert hf.TransformersLLM is synthpipe.models.TransformersLLM
    assert issubclass(errors.DistilabelUserError, ValueError) and issubclass(errors.DistilabelUserError,
                                                                            errors.DistilabelError)
    error = errors.DistilabelUserError("bad input", page="sections/faq")
    assert str(error) == "bad input" and error.page == "sections/faq"
    assert issubclass(errors.DistilabelTypeError, TypeError)
    assert issubclass(errors.DistilabelNotImplementedError, NotImplementedError)


def test_unknown_names_are_plain_attribute_errors():
    import synthpipe.steps

    assert not hasattr(synthpipe.steps, "NoSuchStep")
    with pytest.raises(ImportError, match="cannot import name 'NoSuchStep'"):
        exec("from synthpipe.steps import NoSuchStep", {})


def test_the_distilabel_paths_stay_light():
    """Importing every compatible path, and naming every backend, loads no engine or SDK."""
    modules = sorted({m for m, _ in CASES})
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import synthpipe.models.llms as llms\n"
        "for n in llms.__all__: getattr(llms, n)\n"
        "heavy = ('torch', 'transformers', 'vllm', 'anthropic', 'litellm', 'llama_cpp', 'sentence_transformers', "
        "'datasets', 'yaml')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    env = {**os.environ, "PYTHONPATH": python_path()}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# A pipeline written as distilabel's documentation writes one, with only the prefix changed.
@step(inputs=["generation"], outputs=["words"])
def CountWords(inputs: StepInput) -> StepOutput:
    for row in inputs:
        row["words"] = len(row["generation"].split())
    yield inputs


@pytest.mark.timeout(180)
@pytest.mark.usefixtures("no_leftover_workers")
def test_a_pipeline_written_for_distilabel_runs_with_the_prefix_changed(server):
    from synthpipe.pipeline import Pipeline
    from synthpipe.steps import LoadDataFromDicts
    from synthpipe.steps.tasks import TextGeneration

    with Pipeline(name="ported") as pipeline:
        load = LoadDataFromDicts(data=[{"instruction": f"Tell me about {x}"} for x in ("tides", "owls", "rust")])
        generate = TextGeneration(llm=PortedLLM(model="test-model", base_url=server.base_url, api_key="k"))
        count = CountWords()
        load >> generate >> count
    distiset = pipeline.run(parameters={generate.name: {"llm": {"generation_kwargs": {"temperature": 0.7}}}})
    rows = distiset["default"]["train"].to_list()
    assert len(rows) == 3 and all(row["words"] == len(row["generation"].split()) > 0 for row in rows)
    assert all(f"raw_output_{generate.name}" in row["synthpipe_metadata"] for row in rows)
