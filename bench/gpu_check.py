"""A GPU check of the local engines (run where CUDA is; CI has none).

Builds the tests' tiny random Llama, then runs ``TextGeneration`` with
``TransformersLLM(device="cuda")`` through a whole pipeline (worker processes, the store,
the result), in float32 and bfloat16, and reports rows/s and what device the model ran on.
The text is noise (random weights); the point is that the plumbing works on a GPU.

    python bench/gpu_check.py            # writes bench/results/gpu_check.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> int:
    import torch

    from synthpipe.models.transformers import TransformersLLM
    from synthpipe.pipeline import Pipeline
    from synthpipe.steps import LoadDataFromDicts
    from synthpipe.steps.tasks import TextGeneration
    from synthpipe.testing.tiny_models import build_tiny_llama

    report: dict = {"cuda": torch.cuda.is_available(), "torch": torch.__version__,
                    "device_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    print(report, flush=True)
    if not torch.cuda.is_available():
        print("no CUDA device here", flush=True)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_llama(Path(tmp) / "llama")
        direct = TransformersLLM(model=str(model_dir), device="cuda", torch_dtype="bfloat16")
        direct.load()
        report["direct_param_device"] = str(next(direct._model.parameters()).device)
        report["direct_dtype"] = str(next(direct._model.parameters()).dtype)
        out = direct.generate([[{"role": "user", "content": "hello"}]] * 4, num_generations=2, max_new_tokens=8)
        report["direct_generations"] = [len(o["generations"]) for o in out]
        direct.unload()
        for dtype in ("float32", "bfloat16"):
            prompts = [f"Question number {i}: what is {i} plus {i}?" for i in range(256)]
            with Pipeline(name=f"gpu-{dtype}", cache_dir=str(Path(tmp) / "cache")) as pipeline:
                load = LoadDataFromDicts(data=[{"instruction": p} for p in prompts], batch_size=64)
                load >> TextGeneration(name="gen", input_batch_size=64, llm=TransformersLLM(
                    model=str(model_dir), device="cuda", torch_dtype=dtype))
            start = time.perf_counter()
            result = pipeline.run(parameters={"gen": {"llm": {"generation_kwargs": {"max_new_tokens": 32}}}},
                                  log_level="WARNING")
            wall = time.perf_counter() - start
            rows = result["default"]["train"].to_list()
            ok = [r["instruction"] for r in rows] == prompts and not result.failed_rows
            tokens = sum(r["synthpipe_metadata"]["statistics_gen"]["output_tokens"] for r in rows)
            report[f"pipeline_{dtype}"] = {"rows": len(rows), "in_order": ok, "wall_s": round(wall, 2),
                                           "rows_per_s": round(len(rows) / wall, 1), "output_tokens": tokens}
            print(dtype, report[f"pipeline_{dtype}"], flush=True)
    out_dir = Path(os.environ.get("OUT", ROOT / "bench" / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report), flush=True)
    good = report["direct_param_device"].startswith("cuda") and all(
        report[f"pipeline_{d}"]["in_order"] for d in ("float32", "bfloat16"))
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
