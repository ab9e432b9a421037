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


def _plain_loop(rows, tokenizer="words", n=5, threshold=0.9, num_perm=128, seed=1, scheme="affine32"):
    """The reference: one datasketch MinHash per row and a MinHashLSH, query then insert."""
    from datasketch import MinHash, MinHashLSH

    from synthpipe.steps.filtering._minhash_core import tokens

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    keep, sigs = [], []
    for key, row in enumerate(rows):
        m = MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
        m.update_batch([t.encode("utf-8") for t in set(tokens(row["text"], tokenizer, n))])
        sigs.append(m.hashvalues)
        if lsh.query(m):
            keep.append(False)
        else:
            lsh.insert(key, m)
            keep.append(True)
    return keep, sigs


@pytest.mark.parametrize("scheme", ["affine32", "affine64", "legacy"])
@pytest.mark.parametrize("tokenizer,n", [("words", 5), ("ngrams", 3)])
def test_numpy_signatures_and_marks_are_datasketchs_bit_for_bit(scheme, tokenizer, n):
    import numpy as np

    from synthpipe.steps.filtering._minhash_core import Hasher, first_occurrences, tokens

    rows, _ = corpus(400, 80, seed=3)
    rng = random.Random(5)
    rows += [{"text": ""}, {"text": "Ünïcode ß straße"}, {"text": "ab"}, {"text": "  "}]
    rows += [{"text": "".join(rng.choices("abc xyz", k=rng.randrange(1, 60)))} for _ in range(100)]
    keep, sigs = _plain_loop(rows, tokenizer, n, threshold=0.7, num_perm=64, seed=7, scheme=scheme)
    mine = Hasher(64, 7, scheme).signatures([tokens(r["text"], tokenizer, n) for r in rows])
    assert mine.dtype == sigs[0].dtype
    assert np.array_equal(mine, np.array(sigs))
    assert first_occurrences([r["text"] for r in rows], tokenizer, n, 64, 7, 0.7, scheme) == keep
    assert not all(keep) and any(keep)


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
    assert [r["keep_row_after_minhash_filtering"] for r in out] == _plain_loop(rows, threshold=0.8)[0]


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
