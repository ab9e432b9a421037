"""``MinHashDedup``: near-duplicate detection over the whole dataset with MinHash + LSH.

Why a ``GlobalStep``: distilabel's version keeps its LSH index inside one replica, so two
near-duplicates in batches that went to different replicas (or across a restart) are both
kept. A global step sees every row of the dataset in its original order in one process,
whatever the batch sizes and replica counts upstream, so "first occurrence wins" is exact
and the result equals a plain single-process loop. A resume is covered by the engine: the
global step's output is durable once done; if the run stopped before, it runs again on the
durable upstream rows, so no index state has to survive on its own. The price is that the
rows sit in one worker's memory and the hashing runs in one process (workers are daemonic
and cannot start a pool).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from synthpipe.steps.base import GlobalStep, StepInput, StepOutput

_WORD = re.compile(r"\w+", re.UNICODE)
KEEP_COLUMN = "keep_row_after_minhash_filtering"


def shingles(text: str, tokenizer: str, n: int) -> set[bytes]:
    """Lower-cased words, or character ``n``-grams, as bytes for datasketch."""
    text = text.lower()
    if tokenizer == "words":
        return {w.encode("utf-8") for w in _WORD.findall(text)}
    if len(text) <= n:
        return {text.encode("utf-8")}
    return {text[i:i + n].encode("utf-8") for i in range(len(text) - n + 1)}


def signatures(texts: list[str], tokenizer: str, n: int, num_perm: int, seed: int) -> list[Any]:
    """Hash values of each text's MinHash (plain arrays, cheap to send between processes)."""
    from datasketch import MinHash

    out = []
    for text in texts:
        m = MinHash(num_perm=num_perm, seed=seed)
        m.update_batch(list(shingles(text, tokenizer, n)))
        out.append(m.hashvalues)
    return out


def first_occurrences(hashvalues: list[Any], threshold: float, num_perm: int, seed: int) -> list[bool]:
    """True for a row no earlier row is a near-duplicate of (LSH query, then insert)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    scheme = MinHash(num_perm=num_perm, seed=seed).scheme  # the scheme ``signatures`` hashed with
    keep = []
    for key, values in enumerate(hashvalues):
        m = MinHash(num_perm=num_perm, seed=seed, hashvalues=values, scheme=scheme)
        if lsh.query(m):
            keep.append(False)
        else:
            lsh.insert(key, m)
            keep.append(True)
    return keep


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
        texts = []
        for i, row in enumerate(inputs):
            text = row.get("text")
            if not isinstance(text, str):
                raise TypeError(f"step '{self.name}': column 'text' must hold strings; row {i} holds "
                                f"{type(text).__name__}")
            texts.append(text)
        hashes = signatures(texts, self.tokenizer, self.n, self.num_perm, self.seed)
        keep = first_occurrences(hashes, self.threshold, self.num_perm, self.seed)
        for row, flag in zip(inputs, keep, strict=True):
            row[KEEP_COLUMN] = flag
        yield inputs
