"""``MinHashDedup``: near-duplicate detection over the whole dataset with MinHash + LSH.

Why a ``GlobalStep``: distilabel's version keeps its LSH index inside one replica, so two
near-duplicates in batches that went to different replicas (or across a restart) are both
kept. A global step sees every row of the dataset in its original order in one process,
whatever the batch sizes and replica counts upstream, so "first occurrence wins" is exact
and the result equals a plain single-process loop. A resume is covered by the engine: the
global step's output is durable once done; if the run stopped before, it runs again on the
durable upstream rows, so no index state has to survive on its own. The price is that the
rows sit in one worker's memory and the hashing runs in one process (workers are daemonic
and cannot start a pool); it is made cheap by hashing chunks of texts in numpy
(``_minhash_core``), with marks bit-for-bit those of datasketch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from synthpipe.steps.base import GlobalStep, StepInput, StepOutput

KEEP_COLUMN = "keep_row_after_minhash_filtering"
_CHUNK_ROWS = 8192  # rows tokenised and hashed at a time: bounds the token lists held


class MinHashDedup(GlobalStep):
    """Marks near-duplicate ``text`` rows: ``keep_row_after_minhash_filtering`` is False for a
    row whose estimated Jaccard similarity to an earlier kept row reaches ``threshold``.
    Rows are marked, never dropped (filter on the column afterwards). ``tokenizer`` is
    ``words`` or character ``ngrams`` of size ``n``; ``storage`` is accepted for distilabel
    compatibility (the index lives in memory)."""

    num_perm: int = Field(default=128, ge=2)
    seed: int = 1
    tokenizer: Literal["words", "ngrams"] = "words"
    n: int = Field(default=5, ge=1)
    threshold: float = Field(default=0.9, gt=0, le=1)
    storage: Literal["dict", "disk"] = "dict"

    @property
    def inputs(self) -> list[str]:
        return ["text"]

    @property
    def outputs(self) -> list[str]:
        return [KEEP_COLUMN]

    def process(self, inputs: StepInput) -> StepOutput:
        from synthpipe.steps.filtering._minhash_core import BandIndex, Hasher, tokens

        texts = []
        for i, row in enumerate(inputs):
            text = row.get("text")
            if not isinstance(text, str):
                raise TypeError(f"step '{self.name}': column 'text' must hold strings; row {i} holds "
                                f"{type(text).__name__}")
            texts.append(text)
        hasher = Hasher(self.num_perm, self.seed)
        index = BandIndex(self.threshold, self.num_perm)
        for lo in range(0, len(texts), _CHUNK_ROWS):
            part = [tokens(t, self.tokenizer, self.n) for t in texts[lo:lo + _CHUNK_ROWS]]
            keep = index.first_occurrences(hasher.signatures(part))
            for row, flag in zip(inputs[lo:lo + _CHUNK_ROWS], keep, strict=True):
                row[KEEP_COLUMN] = flag
        yield inputs
