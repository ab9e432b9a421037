"""distilabel's UltraFeedback recipe (papers/ultrafeedback): instructions answered by three LLMs,
their answers grouped side by side, rated by UltraFeedback (``aspect="overall-rating"``), with
the docs' output_mappings and GroupColumns."""

import json

from _ported import conversation, plausible, report, schema_of, serve

from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import GroupColumns, LoadDataFromDicts
from synthpipe.steps.tasks import TextGeneration, UltraFeedback


def judge(body):
    if body["model"] != "gpt-4-turbo-2024-04-09":
        return None  # the generators echo
    n = conversation(body).count("<text ")  # one assessment per text shown
    schema = schema_of(body)
    if schema is not None:
        return json.dumps(plausible(schema, items=n // 2 or 1))
    return "\n".join(f"#### Output for Text {i}\nRating: 4\nRationale: accurate and clear.\n" for i in range(1, n + 1))


server = serve(responder=judge)
KW = {"base_url": server.base_url, "api_key": "sk-test"}


with Pipeline(name="ultrafeedback-pipeline") as pipeline:
    load_dataset = LoadDataFromDicts(
        name="load_dataset",
        data=[{"prompt": f"Explain concept number {i} to a child."} for i in range(6)],
        output_mappings={"prompt": "instruction"},
        batch_size=2,
    )
    generators = [
        TextGeneration(name=f"text_generation_{i}", llm=OpenAILLM(model=model, **KW), input_batch_size=10,
                       output_mappings={"model_name": "generation_model"})
        for i, model in enumerate(["gpt-3.5-turbo", "command-r-plus", "mistral-large"])
    ]
    combine_columns = GroupColumns(
        name="combine_columns",
        columns=["generation", "generation_model"],
        output_columns=["generations", "generation_models"],
    )
    ultrafeedback = UltraFeedback(
        name="ultrafeedback_openai",
        llm=OpenAILLM(model="gpt-4-turbo-2024-04-09", **KW),
        aspect="overall-rating",
        output_mappings={"model_name": "ultrafeedback_model"},
    )
    load_dataset >> generators >> combine_columns >> ultrafeedback

if __name__ == "__main__":
    distiset = pipeline.run(
        parameters={
            ultrafeedback.name: {"llm": {"generation_kwargs": {"max_new_tokens": 2048, "temperature": 0.7}}},
        },
        use_cache=False,
    )
    row = distiset["default"]["train"][0]
    assert len(row["ratings"]) == len(row["rationales"]) == 3, row
    assert row["ultrafeedback_model"] == "gpt-4-turbo-2024-04-09", row
    report(distiset)
