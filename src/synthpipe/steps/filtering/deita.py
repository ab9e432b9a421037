"""``DeitaFiltering``: picks a data budget of high-scoring, mutually diverse rows.

Implements the selection of Liu et al., *What Makes Good Data for Alignment? A Comprehensive
Study of Automatic Data Selection in Instruction Tuning* (Deita), 2023, arXiv:2312.15685:
"score-first, diversity-aware" selection. Each example's score is its complexity score times
its quality score; the pool is sorted by score, best first, and walked in that order; an
example joins the selected set only if it is far enough from its nearest neighbour *among the
examples already selected* (the paper's Repr Filter), until the budget is full. So a
high-scoring near-copy of something already chosen is passed over for the next distinct
example, and the budget is filled with the best examples that are not redundant.

Why a ``GlobalStep``: the order is global (by score over the whole dataset) and each decision
depends on everything selected before it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from synthpipe.steps.base import GlobalStep, RuntimeParameter, StepInput, StepOutput
from synthpipe.steps.filtering._vectors import vector_matrix

_SCORES = ("evol_instruction_score", "evol_response_score")


def deita_scores(step: str, rows: list[dict[str, Any]]) -> list[tuple[float, list[str]]]:
    """Each row's score and the columns it came from: the product of both scores, or the one
    present when the other is None (0 and no columns when both are)."""
    out = []
    for i, row in enumerate(rows):
        present = []
        for column in _SCORES:
            value = row.get(column)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"step '{step}': column '{column}' must hold numbers (or None); row {i} holds "
                                f"{type(value).__name__}")
            if value != value:  # NaN would sort anywhere
                raise ValueError(f"step '{step}': column '{column}' holds NaN in row {i}")
            present.append(column)
        score = 1.0
        for column in present:
            score *= float(row[column])
        out.append((score if present else 0.0, present))
    return out


def select(scores: list[float], vectors: Any, budget: int, threshold: float, metric: str) -> list[tuple[int, Any]]:
    """The rows chosen, in the order chosen, each with its distance to the nearest row chosen
    before it (None for the first): best score first, a row taken only when that distance
    reaches ``threshold``."""
    import numpy as np

    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: ties keep input order
    chosen_vectors = np.empty((min(budget, len(scores)), vectors.shape[1] if vectors.size else 0),
                              dtype=vectors.dtype)
    chosen: list[tuple[int, Any]] = []
    for i in order:
        if len(chosen) >= budget:
            break
        taken = chosen_vectors[: len(chosen)]
        distance = None
        if len(chosen):
            if metric == "cosine":
                distance = float(1.0 - (taken @ vectors[i]).max())
            else:
                distance = float(np.abs(taken - vectors[i]).sum(axis=1).min())
            if distance < threshold:
                continue
        chosen_vectors[len(chosen)] = vectors[i]
        chosen.append((i, distance))
    return chosen


class DeitaFiltering(GlobalStep):
    """Keeps ``data_budget`` rows: the highest ``deita_score`` (``evol_instruction_score`` x
    ``evol_response_score``) first, skipping a row whose distance to its nearest already-kept
    row is below ``diversity_threshold``. Outputs only the kept rows, best first, with
    ``deita_score``, ``deita_score_computed_with`` (the score columns used) and
    ``nearest_neighbor_distance`` (to the nearest row kept before it; None for the first).

    ``distance_metric`` is ``cosine`` (1 - cosine similarity, 0..2; the paper's τ = 0.9
    similarity is ``diversity_threshold=0.1``) or ``manhattan`` (L1, on unit-length vectors
    when ``normalize_embeddings``). A missing score (None) falls back to the other one; fewer
    than ``data_budget`` rows come out when not enough rows are diverse enough."""

    data_budget: RuntimeParameter[int] = Field(default=None, ge=1)
    diversity_threshold: RuntimeParameter[float] = 0.9
    normalize_embeddings: RuntimeParameter[bool] = True
    distance_metric: RuntimeParameter[Literal["cosine", "manhattan"]] = "cosine"

    @property
    def inputs(self) -> list[str]:
        return ["evol_instruction_score", "evol_response_score", "embedding"]

    @property
    def outputs(self) -> list[str]:
        return ["deita_score", "nearest_neighbor_distance", "deita_score_computed_with"]

    def process(self, inputs: StepInput) -> StepOutput:
        import numpy as np

        step = str(self.name)
        if self.data_budget is None:
            raise ValueError(f"step '{step}': data_budget is not set: give the number of rows to keep "
                             f"(DeitaFiltering(data_budget=...) or pipeline.run(parameters={{'{step}': "
                             "{'data_budget': ...}}))")
        scored = deita_scores(step, inputs)
        vectors = vector_matrix(step, inputs, "embedding")
        metric = self.distance_metric or "cosine"
        if inputs and (metric == "cosine" or self.normalize_embeddings):
            norms = np.linalg.norm(vectors, axis=1)
            if not norms.all():
                raise ValueError(f"step '{step}': column 'embedding' holds an all-zero vector in row "
                                 f"{int(np.argmin(norms))}; it has no direction to compare")
            vectors = vectors / norms[:, None]
        threshold = 0.9 if self.diversity_threshold is None else float(self.diversity_threshold)
        chosen = select([s for s, _ in scored], vectors, int(self.data_budget), threshold, metric)
        out = []
        for i, distance in chosen:
            row = inputs[i]
            row["deita_score"], row["deita_score_computed_with"] = scored[i]
            row["nearest_neighbor_distance"] = distance
            out.append(row)
        self.logger.info("kept %d of %d rows (data_budget %d)", len(out), len(inputs), self.data_budget)
        yield out
