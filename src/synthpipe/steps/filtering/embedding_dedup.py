"""``EmbeddingDedup``: marks near-duplicates from the neighbour lists ``FaissNearestNeighbour``
writes.

Why a ``GlobalStep``: ``nn_indices`` are positions in the whole dataset, so the step must see
every row, in the same order the neighbour search saw them, to know which row a position is.

The rule: two rows are near-duplicates when either lists the other with a score above
``threshold`` (strictly above, as distilabel compares). Going through the rows in order, a row
is kept unless it is a near-duplicate of an earlier row that was kept — the first occurrence
of each group is kept, as ``MinHashDedup`` does. (distilabel 1.5 instead marks every row that
appears above the threshold in any row's list, which for two mutual neighbours drops both.)
"""

from __future__ import annotations

from pydantic import Field

from synthpipe.steps.base import GlobalStep, StepInput, StepOutput
from synthpipe.steps.filtering._vectors import neighbour_lists

KEEP_COLUMN = "keep_row_after_embedding_filtering"


def first_occurrences(links: list[tuple[list[int], list[float]]], threshold: float) -> list[bool]:
    """True for each row that no earlier kept row is linked to by a score above ``threshold``."""
    n = len(links)
    duplicate_of: list[set[int]] = [set() for _ in range(n)]
    for i, (positions, scores) in enumerate(links):
        for j, score in zip(positions, scores, strict=True):
            if score > threshold and j != i:
                duplicate_of[i].add(j)
                duplicate_of[j].add(i)
    keep = [True] * n
    for i in range(n):
        if any(keep[j] for j in duplicate_of[i] if j < i):
            keep[i] = False
    return keep


class EmbeddingDedup(GlobalStep):
    """Marks near-duplicate rows: ``keep_row_after_embedding_filtering`` is False for a row
    whose ``nn_scores`` link to an earlier kept row (either row's list counts) is above
    ``threshold``. Rows are marked, never dropped (filter on the column afterwards).

    The threshold is read in the index's own unit: with ``faiss.METRIC_INNER_PRODUCT`` on
    normalized embeddings it is a cosine similarity (0.9: very close texts). With faiss'
    default L2 metric scores are distances, where larger means farther: pick the metric first."""

    threshold: float = Field(default=0.9)

    @property
    def inputs(self) -> list[str]:
        return ["nn_scores", "nn_indices"]

    @property
    def outputs(self) -> list[str]:
        return [KEEP_COLUMN]

    def process(self, inputs: StepInput) -> StepOutput:
        lists = neighbour_lists(str(self.name), inputs, "nn_indices", "nn_scores")
        links = [(positions.tolist(), scores.tolist()) for positions, scores in lists]
        for row, flag in zip(inputs, first_occurrences(links, self.threshold), strict=True):
            row[KEEP_COLUMN] = flag
        yield inputs
