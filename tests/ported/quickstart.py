"""distilabel's quickstart with in-memory data: LoadDataFromDicts >> TextGeneration on an
InferenceEndpointsLLM, generation kwargs as runtime parameters of ``pipeline.run``,
``use_cache=False``, then the Distiset as the docs use it."""

from _ported import report, serve

from synthpipe.models import InferenceEndpointsLLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration

server = serve()

with Pipeline(name="simple-text-generation-pipeline", description="A simple text generation pipeline") as pipeline:
    load_dataset = LoadDataFromDicts(
        name="load_dataset",
        data=[{"prompt": f"Write a short poem about the number {i}."} for i in range(10)],
        output_mappings={"prompt": "instruction"},
    )
    text_generation = TextGeneration(
        name="text_generation",
        llm=InferenceEndpointsLLM(model_id="meta-llama/Meta-Llama-3.1-8B-Instruct",
                                  tokenizer_id="meta-llama/Meta-Llama-3.1-8B-Instruct",
                                  base_url=server.url, api_key="hf_test"),
    )
    load_dataset >> text_generation

if __name__ == "__main__":
    distiset = pipeline.run(
        parameters={
            load_dataset.name: {"batch_size": 4},
            text_generation.name: {"llm": {"generation_kwargs": {"temperature": 0.7, "max_new_tokens": 512}}},
        },
        use_cache=False,
    )
    train = distiset["default"]["train"]
    assert train[0]["generation"].startswith("echo: "), train[0]
    assert train[0]["model_name"] == "meta-llama/Meta-Llama-3.1-8B-Instruct", train[0]["model_name"]
    report(distiset)
