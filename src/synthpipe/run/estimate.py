"""``pipeline.estimate(sample=N)`` / ``synthpipe estimate FILE``: run the pipeline on a small
sample (a dry run: real LLMs, nothing stored) and project tokens, cost and time for the whole
input, saying on what assumptions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthpipe.errors import SynthpipeUserError
from synthpipe.store.run_record import read_batches, read_run
from synthpipe.ui.live import expected_rows

if TYPE_CHECKING:
    from synthpipe.pipeline.base import Pipeline


@dataclass
class Estimate:
    sample_rows: int
    total_rows: int
    scale: float
    sample_seconds: float
    seconds: float
    tokens: int
    cost: float | None
    per_model: list[dict[str, Any]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    run_dir: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        cost = "unknown (no price for some models)" if self.cost is None else f"{self.cost:.4f}"
        lines = [f"estimate for {self.total_rows:,} rows, from a sample of {self.sample_rows:,} "
                 f"(x{self.scale:,.1f}):",
                 f"  tokens  ~{self.tokens:,}", f"  cost    ~{cost}", f"  time    ~{self.seconds:,.0f}s"]
        for m in self.per_model:
            money = "unknown" if m["cost"] is None else f"{m['cost']:.4f}"
            lines.append(f"    {m['step']} / {m['model']}: ~{m['input_tokens']:,} in, ~{m['output_tokens']:,} out, "
                         f"cost ~{money}")
        lines.append("assumptions:")
        lines.extend(f"  - {a}" for a in self.assumptions)
        return "\n".join(lines)


def estimate_pipeline(pipeline: Pipeline, sample: int = 10, rows: int | None = None,
                      parameters: dict[str, dict[str, Any]] | None = None, dataset: Any = None) -> Estimate:
    if sample < 1:
        raise SynthpipeUserError(f"sample must be at least 1 row, not {sample}")
    total = rows
    if total is None and dataset is not None:
        total = len(dataset)
    if total is None:
        order = list(pipeline.steps)
        known = expected_rows(order, pipeline.steps, {n: pipeline.dag.predecessors(n) for n in order})
        generators = [n for n in order if pipeline.steps[n].step_kind == "generator"]
        if generators and all(g in known for g in generators):
            total = max(known[g] for g in generators)
    if total is None:
        raise SynthpipeUserError("the pipeline's generators do not say how many rows they hold; "
                                 "give the full input's size: estimate(rows=N) / --rows N")
    distiset = pipeline.dry_run(parameters=parameters, batch_size=sample, dataset=dataset)
    assert distiset.run_dir is not None
    run_dir = Path(distiset.run_dir)
    info = read_run(run_dir)
    batches = read_batches(run_dir)
    taken = min(sample, total)
    scale = total / taken
    starts = [b["start"] for b in batches if b.get("start") is not None]
    ends = [b["end"] for b in batches if b.get("end") is not None]
    busy = (max(ends) - min(starts)) if starts and ends else float(info.get("seconds") or 0)
    per_model = []
    for u in info.get("usage") or []:
        cost = u.get("cost")
        per_model.append({"step": u["step"], "model": u["model"], "input_tokens": int(u["input_tokens"] * scale),
                          "output_tokens": int(u["output_tokens"] * scale),
                          "cost": None if cost is None else cost * scale})
    tokens = sum(m["input_tokens"] + m["output_tokens"] for m in per_model)
    costs = [m["cost"] for m in per_model]
    cost = None if any(c is None for c in costs) else float(sum(costs))  # type: ignore[arg-type]
    assumptions = [
        f"the sample is the first {taken:,} rows, and the rest are like them (same prompt and answer lengths)",
        "tokens and cost grow in proportion to rows; cost is at the prices given (Pipeline(prices=...)), none guessed",
        f"time grows in proportion to rows at the sample's pace ({busy:.2f}s of work for {taken:,} rows, start-up "
        "not counted); more replicas, LLM concurrency or batches in flight make a full run faster than this",
        "answers in the response cache are not counted as free: the sample asked the LLMs itself (and was paid for)",
    ]
    return Estimate(taken, total, scale, round(busy, 3), busy * scale, tokens, cost, per_model, assumptions,
                    str(run_dir))


def dumps(estimate: Estimate) -> str:
    return json.dumps(estimate.to_json(), indent=1, default=repr)
