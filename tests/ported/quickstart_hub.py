"""distilabel's README / quickstart pipeline as written: LoadDataFromHub >> TextGeneration.

With no network here the Hub loader must fail before the run starts, naming the step and the
dataset (tests/test_ported_pipelines.py runs it with HF_HUB_OFFLINE=1)."""

from synthpipe.models import InferenceEndpointsLLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromHub
from synthpipe.steps.tasks import TextGeneration

with Pipeline(name="simple-text-generation-pipeline", description="A simple text generation pipeline") as pipeline:
    load_dataset = LoadDataFromHub(name="load_dataset", output_mappings={"prompt": "instruction"})
    text_generation = TextGeneration(
        name="text_generation",
        llm=InferenceEndpointsLLM(model_id="meta-llama/Meta-Llama-3.1-8B-Instruct"),
    )
    load_dataset >> text_generation

if __name__ == "__main__":
    distiset = pipeline.run(parameters={
        load_dataset.name: {"repo_id": "distilabel-internal-testing/instruction-dataset-mini", "split": "test"}})
