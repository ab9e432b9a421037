"""MinHash signatures of many texts at once, and the LSH "first occurrence" pass over them.

Why not datasketch per row: a ``MinHash`` object per row pays its set-up, a hash call and a
small numpy product per row, and the LSH index pays a byte swap and a storage call per band.
Here a chunk of texts is hashed in one numpy product and each band is looked up in a plain
set. The arithmetic is datasketch's own (its permutations for the seed, the SHA-1 token hash,
the MurmurHash3 pre-mix of the 2.x schemes, the legacy Mersenne-prime scheme) and the bands
are its bands for the threshold, so the marks are bit-for-bit those of a datasketch
``MinHash`` + ``MinHashLSH`` loop — tests/test_steps_dedup.py checks it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

_WORD = re.compile(r"\w+", re.UNICODE)
_CHUNK_TOKENS = 1 << 16  # tokens hashed per numpy product: 2**16 x num_perm x 4-8 bytes
_MAX_CACHE = 1 << 19  # token -> hash entries kept between chunks (words repeat, n-grams less): ~50 MB
SCHEMES = ("affine32", "affine64", "legacy")


def tokens(text: str, tokenizer: str, n: int) -> list[str]:
    """Lower-cased words, or character ``n``-grams (the whole text when it is shorter).
    Repeats are left in: they do not change a minimum."""
    text = text.lower()
    if tokenizer == "words":
        return _WORD.findall(text)
    if len(text) <= n:
        return [text]
    return [text[i:i + n] for i in range(len(text) - n + 1)]


class Hasher:
    """Signatures under one (num_perm, seed, scheme), as datasketch computes them."""

    def __init__(self, num_perm: int, seed: int, scheme: str = "affine32") -> None:
        import numpy as np
        from datasketch import MinHash

        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(SCHEMES)}, not {scheme!r}")
        self.scheme = scheme
        self.num_perm = num_perm
        perm = MinHash(num_perm=num_perm, seed=seed, scheme=scheme).permutations
        self.dtype = np.uint32 if scheme == "affine32" else np.uint64
        self.a = np.asarray(perm[0], dtype=self.dtype)
        self.b = np.asarray(perm[1], dtype=self.dtype)
        self.width = 8 if scheme == "affine64" else 4
        self.empty = np.iinfo(self.dtype).max if scheme != "legacy" else np.uint64((1 << 32) - 1)
        self._cache: dict[str, int] = {}

    def _token_hashes(self, flat: list[str]) -> Any:
        import numpy as np

        cache = self._cache
        if len(cache) > _MAX_CACHE:
            cache.clear()
        width = self.width
        for tok in set(flat).difference(cache):
            cache[tok] = int.from_bytes(hashlib.sha1(tok.encode("utf-8")).digest()[:width], "little")
        return np.fromiter(map(cache.__getitem__, flat), dtype=self.dtype, count=len(flat))

    def _permuted(self, hv: Any) -> Any:
        """Every permutation of every token hash: shape (num_perm, tokens), so that the
        per-text minimum runs along contiguous memory."""
        import numpy as np

        a, b = self.a[:, None], self.b[:, None]
        if self.scheme == "legacy":
            out = a * hv[None, :]
            out += b
            out %= np.uint64((1 << 61) - 1)
            out &= np.uint64((1 << 32) - 1)
            return out
        out = a * _fmix(hv, 64 if self.scheme == "affine64" else 32)[None, :]
        out += b
        return out

    def signatures(self, token_lists: Sequence[list[str]]) -> Any:
        """One row of ``num_perm`` minima per token list (all-max for an empty list)."""
        import numpy as np

        out = np.full((len(token_lists), self.num_perm), self.empty, dtype=self.dtype)
        for lo, hi in _chunks(token_lists):
            part = token_lists[lo:hi]
            lengths = np.fromiter(map(len, part), dtype=np.int64, count=len(part))
            flat = [tok for toks in part for tok in toks]
            if not flat:
                continue
            with np.errstate(over="ignore"):
                permuted = self._permuted(self._token_hashes(flat))
            starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
            filled = lengths > 0
            out[lo:hi][filled] = np.minimum.reduceat(permuted, starts[filled], axis=1).T
        return out


def _chunks(token_lists: Sequence[list[str]]) -> Iterator[tuple[int, int]]:
    lo, count = 0, 0
    for i, toks in enumerate(token_lists):
        count += len(toks)
        if count >= _CHUNK_TOKENS:
            yield lo, i + 1
            lo, count = i + 1, 0
    if lo < len(token_lists):
        yield lo, len(token_lists)


def _fmix(hv: Any, width: int) -> Any:
    """The MurmurHash3 finalizer datasketch 2.x applies to token hashes (wrapping arithmetic)."""
    import numpy as np

    if width == 32:
        t = np.uint32
        s1, m1, s2, m2, s3 = t(16), t(0x85EBCA6B), t(13), t(0xC2B2AE35), t(16)
    else:
        t = np.uint64
        s1, m1, s2, m2, s3 = t(33), t(0xFF51AFD7ED558CCD), t(33), t(0xC4CEB9FE1A85EC53), t(33)
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


@functools.lru_cache(maxsize=32)
def bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's ``MinHashLSH`` picks for this threshold."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


class BandIndex:
    """LSH over signature rows: a row is a near-duplicate when any of its bands equals that band
    of a row kept before it; a kept row's bands are remembered. State is plain sets of bytes,
    so it can continue over later chunks of rows."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        self.b, self.r = bands(threshold, num_perm)
        self.seen: list[set[bytes]] = [set() for _ in range(self.b)]

    def first_occurrences(self, sigs: Any) -> list[bool]:
        import numpy as np

        width = sigs.dtype.itemsize * self.r
        columns = []
        for i in range(self.b):
            band = np.ascontiguousarray(sigs[:, i * self.r:(i + 1) * self.r])
            columns.append(band.view(np.dtype((np.void, width))).ravel().tolist())
        seen = self.seen
        keep = []
        for keys in zip(*columns, strict=True):
            if any(key in table for key, table in zip(keys, seen, strict=True)):
                keep.append(False)
            else:
                for key, table in zip(keys, seen, strict=True):
                    table.add(key)
                keep.append(True)
        return keep


def first_occurrences(texts: Sequence[str], tokenizer: str = "words", n: int = 5, num_perm: int = 128,
                      seed: int = 1, threshold: float = 0.9, scheme: str = "affine32") -> list[bool]:
    """True for each text that no earlier kept text is a near-duplicate of."""
    hasher = Hasher(num_perm, seed, scheme)
    index = BandIndex(threshold, num_perm)
    keep: list[bool] = []
    step = 8192
    for lo in range(0, len(texts), step):
        toks = [tokens(t, tokenizer, n) for t in texts[lo:lo + step]]
        keep.extend(index.first_occurrences(hasher.signatures(toks)))
    return keep
