"""MinHashDedup across the whole dataset, whatever the batching and replicas upstream."""

from __future__ import annotations

import random

import pytest

from synthpipe.errors import StepFailed
from synthpipe.pipeline import Pipeline
from synthpipe.steps import LoadDataFromDicts, MinHashDedup, StepResources, step

pytest.importorskip("datasketch")
pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("no_leftover_workers")]

WORDS = [f"w{i}" for i in range(2000)]


@step(inputs=["text"], outputs=["text"])
def PassThrough(inputs):
    yield inputs


def corpus(n_unique: int, n_dups: int, seed: int = 0) -> tuple[list[dict], set[int]]:
    """Unique 40-word texts, then near-copies (one word changed) placed far from their source."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choices(WORDS, k=40)) for _ in range(n_unique)]
    rows = [{"text": t} for t in texts]
    for _ in range(n_dups):
        source = rng.choice(texts)
        words = source.split()
        words[rng.randrange(40)] = "changed"
        after = next(i for i, r in enumerate(rows) if r["text"] == source)
        pos = rng.randrange(after + 1, len(rows) + 1)
        rows.insert(pos, {"text": " ".join(words)})
    for i, row in enumerate(rows):
        row["id"] = i
    # the known duplicates: every near-copy is placed after its source, so it is the one marked
    originals = set(texts)
    dup_positions = {r["id"] for r in rows if r["text"] not in originals}
    return rows, dup_positions


def _plain_loop(rows, **kw):
    from synthpipe.steps.filtering.minhash import first_occurrences, signatures

    sigs = signatures([r["text"] for r in rows], kw.get("tokenizer", "words"), 5, 128, 1)
    return first_occurrences(sigs, kw.get("threshold", 0.9), 128, 1)


@pytest.mark.parametrize("replicas", [1, 3])
def test_duplicates_in_different_batches_and_replicas_are_found(replicas):
    rows, dups = corpus(300, 40)
    with Pipeline(name=f"dedup-{replicas}") as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=17)
        spread = PassThrough(input_batch_size=5, resources=StepResources(replicas=replicas))
        load >> spread >> MinHashDedup(threshold=0.8)
    out = pipeline.run()["default"]["train"].to_list()
    assert [r["id"] for r in out] == list(range(len(rows)))  # no row lost, order kept
    marked = {r["id"] for r in out if not r["keep_row_after_minhash_filtering"]}
    assert marked == dups
    assert [r["keep_row_after_minhash_filtering"] for r in out] == _plain_loop(rows, threshold=0.8)


def test_ngram_tokenizer_and_wrong_type():
    rows = [{"text": "abcdefghij klmnop"}, {"text": "abcdefghij klmnoq"}, {"text": "zzzz yyyy xxxx"}]
    with Pipeline(name="dedup-ngrams") as pipeline:
        LoadDataFromDicts(data=rows) >> MinHashDedup(tokenizer="ngrams", n=3, threshold=0.5)
    keep = pipeline.run()["default"]["train"]["keep_row_after_minhash_filtering"]
    assert keep == [True, False, True]
    with Pipeline(name="dedup-bad") as pipeline:
        LoadDataFromDicts(data=[{"text": "a"}, {"text": None}]) >> MinHashDedup(name="dedup")
    with pytest.raises(StepFailed) as info:
        pipeline.run()
    assert "column 'text' must hold strings; row 1 holds NoneType" in str(info.value)
