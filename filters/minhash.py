"""MinHash signatures computed for whole batches in numpy, equal to datasketch's.

datasketch's `MinHash.update` hashes one shingle at a time in Python and applies the
permutations to it alone. Here a batch of texts becomes one array of shingle hashes,
and datasketch's own "affine32" permutations (MurmurHash3 finalizer, then
`a * h + b mod 2**32`) are applied to all of them at once, then a per-document
minimum. The values are bit-for-bit those of
`MinHash(num_perm, seed, hashfunc=shingle_hash).update(shingle)` over the same shingles
(tests/filters/test_minhash.py checks it), so the results work with datasketch's
`MinHashLSH`, `LeanMinHash` and `jaccard`.

The shingle hash is vectorizable by construction: each word is hashed once with xxh32
(cached per word), and a shingle's hash is the polynomial `h = h * M + word_hash (mod 2**32)`
over its words, which numpy evaluates for every shingle of a batch in `shingle` steps.
"""

from __future__ import annotations

from itertools import chain
from typing import Iterable, Sequence

import numpy as np
from datasketch import LeanMinHash, MinHash
from xxhash import xxh32_intdigest

from filters.normalize import words

SCHEME = "affine32"  # datasketch >= 2.0 default; 32-bit values, collision-free permutations
HASH_NAME = "xxh32-words-poly-v1"  # recorded in the index manifest; change it when shingle_hash changes
_MULT = 0x01000193  # odd (the 32-bit FNV prime): the polynomial stays a bijection in its last word
_MASK = 0xFFFFFFFF
# Shingle hashes per numpy block: (num_perm x block) uint32 stays ~8 MB at 128 perms, in cache-friendly pieces.
_BLOCK = 16_384


def shingle_hash(shingle: bytes | str) -> int:
    """The 32-bit hash of one shingle ("w1 w2 w3"): pass it to datasketch as `hashfunc`."""
    if isinstance(shingle, str):
        shingle = shingle.encode()
    h = 0
    for w in shingle.split(b" "):
        h = (h * _MULT + xxh32_intdigest(w)) & _MASK
    return h


def shingle_strings(text: str, size: int) -> list[str]:
    """Word `size`-grams of the normalized text; a shorter text is one shingle (maybe "")."""
    w = words(text)
    if len(w) < size:
        return [" ".join(w)]
    return [" ".join(w[i:i + size]) for i in range(len(w) - size + 1)]


class _WordHashes(dict):
    """word -> xxh32 of its UTF-8 bytes, computed on first sight."""

    def __missing__(self, word: str) -> int:
        v = self[word] = xxh32_intdigest(word.encode())
        return v


def _fmix32(h: np.ndarray) -> np.ndarray:
    # datasketch's pre-mix for the affine schemes (MurmurHash3 finalizer), uint32 wrap-around.
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class MinHasher:
    """Signatures for batches of texts: `signatures(texts) -> (n, num_perm) uint32`."""

    def __init__(self, num_perm: int = 128, seed: int = 1, shingle: int = 3) -> None:
        self.num_perm, self.seed, self.shingle = num_perm, seed, shingle
        # The exact permutations datasketch draws for (num_perm, seed, scheme).
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME).permutations
        self._a, self._b = a.astype(np.uint32), b.astype(np.uint32)
        self._powers = [np.uint32(pow(_MULT, j, 1 << 32)) for j in range(shingle)]
        self._words = _WordHashes()

    def word_hashes(self, texts: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """All word hashes of all texts in one array, and each text's start offset (length n + 1)."""
        if len(self._words) > 2_000_000:  # bound the cache on endless streams of new words
            self._words.clear()
        docs = [words(text) or [""] for text in texts]  # an empty text is one empty shingle, as in shingle_strings
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum([len(w) for w in docs], out=offsets[1:])
        flat = np.fromiter(map(self._words.__getitem__, chain.from_iterable(docs)), dtype=np.uint32,
                           count=int(offsets[-1]))
        return flat, offsets

    def shingle_hashes(self, wh: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every shingle of every text, and each text's start offset into them."""
        k = self.shingle
        lengths = np.diff(offsets)
        n_sh = np.maximum(lengths - k + 1, 1)  # a text shorter than k is one shingle of all its words
        sh_offsets = np.concatenate(([0], np.cumsum(n_sh)))
        total = int(sh_offsets[-1])
        # Start of each shingle in `wh`, and how many words it has (k, or the whole short text).
        doc_of = np.repeat(np.arange(len(lengths)), n_sh)
        starts = offsets[:-1][doc_of] + (np.arange(total) - sh_offsets[:-1][doc_of])
        sizes = np.minimum(lengths[doc_of], k)
        h = np.zeros(total, dtype=np.uint32)
        for j in range(k):  # h = h * M + w_j, only while j < size (short texts have fewer words)
            live = sizes > j
            if live.all():
                h = h * np.uint32(_MULT) + wh[starts + j]
            else:
                h[live] = h[live] * np.uint32(_MULT) + wh[starts[live] + j]
        return h, sh_offsets

    def signatures_from_hashes(self, hv: np.ndarray, sh_offsets: np.ndarray) -> np.ndarray:
        """Apply the permutations to shingle hashes and take each text's minimum."""
        n = len(sh_offsets) - 1
        out = np.empty((n, self.num_perm), dtype=np.uint32)
        if n == 0:
            return out
        hv = _fmix32(hv)
        # Blocks of whole texts, so the (shingles x num_perm) product stays small.
        d0 = 0
        while d0 < n:
            d1 = int(np.searchsorted(sh_offsets, sh_offsets[d0] + _BLOCK, side="right")) - 1
            d1 = min(max(d1, d0 + 1), n)
            s0, s1 = int(sh_offsets[d0]), int(sh_offsets[d1])
            # (num_perm x shingles): the per-text minimum then runs along contiguous memory,
            # ~8x faster in numpy than the (shingles x num_perm) layout.
            phv = np.multiply(self._a[:, None], hv[None, s0:s1])
            phv += self._b[:, None]
            out[d0:d1] = np.minimum.reduceat(phv, sh_offsets[d0:d1] - s0, axis=1).T
            d0 = d1
        return out

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        wh, offsets = self.word_hashes(texts)
        hv, sh_offsets = self.shingle_hashes(wh, offsets)
        return self.signatures_from_hashes(hv, sh_offsets)

    def lean(self, signature: np.ndarray) -> LeanMinHash:
        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=SCHEME)

    def lean_minhashes(self, texts: Sequence[str]) -> list[LeanMinHash]:
        """datasketch objects for `texts` (equal to MinHash.bulk with hashfunc=shingle_hash)."""
        return [self.lean(s) for s in self.signatures(texts)]


def estimated_jaccard(sig: np.ndarray, others: np.ndarray) -> np.ndarray:
    """MinHash Jaccard of one signature against rows of `others` (same as MinHash.jaccard)."""
    return (others == sig[None, :]).mean(axis=1)
