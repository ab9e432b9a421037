"""The README's first pipeline, built at module level so the command line can run it:
``synthpipe run examples/first_pipeline.py`` (``python examples/first_pipeline.py`` works too)."""

from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, StepInput, step


@step(inputs=["instruction"], outputs=["length"])
def Measure(inputs: StepInput):
    for row in inputs:
        row["length"] = len(row["instruction"])
    yield inputs


with Pipeline(name="first-pipeline") as pipeline:
    load = LoadDataFromDicts(data=[{"instruction": f"q{i}"} for i in range(10_000)], batch_size=100)
    measure = Measure(input_batch_size=50)
    load >> measure

if __name__ == "__main__":
    distiset = pipeline.run()
    print(distiset["default"]["train"][0])
