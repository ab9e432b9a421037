"""Makes docs/report.png: a small pipeline (an LLM step on the test server, two replicas, a step that
fails some rows) run once, its report rendered by headless Chromium.

Run from the repository root: ``PYTHONPATH=src:tests python docs/make_report_png.py``."""

import subprocess
import sys

sys.path.insert(0, "tests")
from llm_server import LLMTestServer
from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, StepInput, StepResources, step
from synthpipe.steps.tasks import TextGeneration
from synthpipe.ui.report import write_report


@step(inputs=["generation"], outputs=["words"])
def CountWords(inputs: StepInput):
    for row in inputs:
        if int(row["instruction"].rsplit(" ", 1)[1]) % 50 == 7:
            raise ValueError(f"refusing {row['instruction']!r}")
        row["words"] = len(row["generation"].split())
    yield inputs

if __name__ == "__main__":
    with LLMTestServer(latency=0.05, fail_first=6, retry_after=0.05) as srv:
        with Pipeline(name="report-demo", cache_dir="/tmp/synthpipe-report-demo",
                      prices={"test-model": {"input": 0.15, "output": 0.6}}) as p:
            rows = [{"instruction": f"Write a haiku about topic {i}"} for i in range(400)]
            load = LoadDataFromDicts(data=rows, batch_size=20)
            llm = OpenAILLM(model="test-model", base_url=srv.base_url, max_concurrency=8)
            gen = TextGeneration(name="generate", llm=llm, input_batch_size=10, resources=StepResources(replicas=2))
            count = CountWords(name="count_words", on_error="skip", input_batch_size=5)
            load >> gen >> count
        d = p.run(use_cache=False)
    out = write_report(d.run_dir, "/tmp/synthpipe-report-demo/report.html")
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--screenshot=docs/report.png",
                    "--window-size=1200,1900", out.resolve().as_uri()], capture_output=True, timeout=90)
