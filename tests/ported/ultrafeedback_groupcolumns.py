"""distilabel's UltraFeedback paper page as written: three generators >> GroupColumns >>
UltraFeedback. GroupColumns is not in synthpipe's step library yet: the import must say so."""

from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import GroupColumns, LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration, UltraFeedback

with Pipeline(name="ultrafeedback-pipeline") as pipeline:
    load = LoadDataFromDicts(data=[{"instruction": "What is 2 + 2?"}])
    gens = [TextGeneration(llm=OpenAILLM(model=m), output_mappings={"model_name": "generation_model"})
            for m in ("gpt-3.5-turbo", "gpt-4o-mini")]
    combine = GroupColumns(columns=["generation", "generation_model"],
                           output_columns=["generations", "generation_models"])
    rate = UltraFeedback(llm=OpenAILLM(model="gpt-4-turbo-2024-04-09"), aspect="overall-rating")
    load >> gens >> combine >> rate

if __name__ == "__main__":
    pipeline.run(use_cache=False)
