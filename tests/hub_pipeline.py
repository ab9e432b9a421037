"""(Imported, not run as a script: its step class must live in a module for pipeline.yaml.)
A pipeline that ends in two leaves (one a PushToHub step), pushed to the Hub stand-in whose
address is in HF_ENDPOINT, then read back with ``datasets.load_dataset``. Run as a program so
the Hub clients read the stand-in's address at import. Prints one JSON line, RESULT {...}.

``python -c "import hub_pipeline; hub_pipeline.main()" ARGS``,
argv: llm_base_url repo_id token cache_dir mode (mode: "push" or "badtoken")
"""

from __future__ import annotations

import json
import sys

from synthpipe.models import OpenAILLM
from synthpipe.pipeline import Pipeline
from synthpipe.steps import KeepColumns, LoadDataFromDicts, PushToHub, step
from synthpipe.steps.tasks import UltraFeedback

LLM_KEY = "sk-llm-key-DO-NOT-LEAK-42"


@step(inputs=["instruction"], outputs=["generations"])
def Candidates(inputs):
    """Two candidate answers per instruction; the poisoned row fails (its batch is skipped)."""
    for row in inputs:
        if row["instruction"] == "poison":
            raise ValueError("poisoned row")
        row["generations"] = [f"first answer to {row['instruction']}", f"second answer to {row['instruction']}"]
    yield inputs


def build(base_url: str, repo_id: str, token: str, cache_dir: str) -> Pipeline:
    rows = [{"instruction": f"question {i}"} for i in range(9)] + [{"instruction": "poison"}]
    with Pipeline(name="hub-program", cache_dir=cache_dir) as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=4)
        cands = Candidates(input_batch_size=1, on_error="skip")
        judge = UltraFeedback(name="judge", llm=OpenAILLM(model="judge-model", base_url=base_url, api_key=LLM_KEY))
        keep = KeepColumns(name="keep", columns=["instruction", "generations"])
        pushed = PushToHub(name="pushed", repo_id=f"{repo_id}-step", token=token)
        load >> cands >> [judge, keep]
        keep >> pushed
    return pipeline


def main() -> None:
    base_url, repo_id, token, cache_dir, mode = sys.argv[1:6]
    import datasets

    pipeline = build(base_url, repo_id, token, cache_dir)
    if mode == "badtoken":
        distiset = build(base_url, repo_id, "hf_standin_token", cache_dir).run()
        try:
            distiset.push_to_hub(repo_id, token=token)
        except Exception as exc:  # noqa: BLE001  (reported to the test)
            print("RESULT", json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    distiset = pipeline.run()
    distiset.push_to_hub(repo_id, token=token, private=True)
    loaded = {name: datasets.load_dataset(repo_id, name, split="train", token=token).to_list()
              for name in ("judge", "pushed")}
    step_rows = datasets.load_dataset(f"{repo_id}-step", split="train", token=token).to_list()
    local = {name: dd["train"].to_list() for name, dd in distiset.items()}
    split = distiset.train_test_split(train_size=0.75, seed=1)
    sizes = {name: {s: dd[s].num_rows for s in dd} for name, dd in split.items()}
    print("RESULT", json.dumps({"loaded": loaded, "local": local, "step_rows": step_rows, "split": sizes,
                                "failed": len(distiset.failed_rows)}, default=str), flush=True)
