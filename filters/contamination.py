"""Drop candidates that overlap an eval set, so gates never score on training data.

Two checks, on the (dedup) text of the input:
- eval_ngram_overlap: the candidate contains a word n-gram of an eval item (GPT-3 /
  datatrove style). Items shorter than `ngram` words use their own length, down to
  `min_ngram`; items shorter still match only as a whole text, since a 3-word phrase
  showing up inside a candidate is no evidence of leakage.
- eval_near_duplicate: MinHash LSH finds eval items that look alike, and the exact
  Jaccard of their shingle sets must reach `near_dup_threshold` (paraphrase-level copies).

Speed: n-grams are hashed for a whole batch at once. Each word is hashed once (xxh64,
cached) and the hash of every n-gram is a polynomial over its word hashes mod 2**64,
read off a prefix sum: sum_t w[i+t] R^t = (C[i+k] - C[i]) * R^-i with C[j] = sum_{t<j} w[t] R^t
(R odd, so R^-1 exists mod 2**64). Hits are looked up with one `searchsorted` against
the eval grams and then confirmed word for word, so a hash collision never drops a candidate.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from xxhash import xxh64_intdigest

from core.records import Example, Rejected
from core.skills import FilterConfig
from filters.base import FilterResult
from filters.index import _MemoryLayer, band_keys
from filters.minhash import MinHasher, shingle_strings
from filters.normalize import words

_R = 0x100000001B3  # odd 64-bit multiplier (FNV-64 prime)
_R_INV = pow(_R, -1, 1 << 64)
# Pre-filter: one bit per top-24-bit prefix of the eval gram hashes; most candidate grams miss it
# and skip the binary search (2 MB of bits for any eval size).
_BITS = 24


def _powers(base: int, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) mod 2**64."""
    out = np.full(max(n, 1), base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)[:n]  # uint64 products wrap mod 2**64, as intended


class _WordHashes64(dict):
    def __missing__(self, word: str) -> int:
        v = self[word] = xxh64_intdigest(word.encode())
        return v


class _GramHasher:
    """Hashes of every k-gram of a batch of word lists, position-independent."""

    def __init__(self) -> None:
        self._words = _WordHashes64()

    def flat(self, docs: Sequence[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prefix sums C with a leading 0, R^-i per position, doc start offsets)."""
        get = self._words.__getitem__
        flat: list[int] = []
        offsets = [0]
        for w in docs:
            flat.extend(map(get, w))
            offsets.append(len(flat))
        wh = np.asarray(flat, dtype=np.uint64)
        n = len(wh)
        prefix = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(wh * _powers(_R, n), out=prefix[1:])
        return prefix, _powers(_R_INV, n), np.asarray(offsets, dtype=np.int64)

    @staticmethod
    def grams(prefix: np.ndarray, inv: np.ndarray, offsets: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(start positions, hashes) of every k-gram that lies inside one document."""
        n = len(prefix) - 1
        if n < k:
            return np.zeros(0, np.int64), np.zeros(0, np.uint64)
        starts = np.arange(n - k + 1)
        # A gram is valid when it ends in the document it starts in.
        doc_end = offsets[np.searchsorted(offsets, starts, side="right")]
        starts = starts[starts + k <= doc_end]
        return starts, (prefix[starts + k] - prefix[starts]) * inv[starts]


class Contamination:
    name = "contamination"

    def __init__(self, eval_sets: dict[str, list[Example]], cfg: FilterConfig,
                 text: Callable[[str], str] = lambda s: s) -> None:
        self.cfg, self.text = cfg, text
        self.near_threshold, self.shingle = cfg.near_dup_threshold, cfg.shingle
        self.whole_max = min(cfg.ngram, cfg.min_ngram)  # texts shorter than this match only as a whole
        self.items: list[tuple[str, Example]] = []
        self.item_words: list[list[str]] = []
        for set_name, examples in eval_sets.items():
            for ex in examples:
                w = words(text(ex.input))
                if w:  # nothing to leak otherwise
                    self.items.append((set_name, ex))
                    self.item_words.append(w)
        self.grams = _GramHasher()
        prefix, inv, offsets = self.grams.flat(self.item_words)
        self.item_offsets = offsets
        # Eval grams per size: sorted hashes and, for each, the flat position of its first occurrence.
        lengths = np.diff(offsets)
        self.tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        sizes = {cfg.ngram} | {int(n) for n in lengths if self.whole_max <= n < cfg.ngram}
        for k in sorted(sizes, reverse=True):
            starts, hashes = self.grams.grams(prefix, inv, offsets, k)
            own_len = lengths[np.searchsorted(offsets, starts, side="right") - 1]
            # An item contributes grams of size ngram, or of its own length when shorter.
            keep = (own_len >= cfg.ngram) if k == cfg.ngram else (own_len == k)
            starts, hashes = starts[keep], hashes[keep]
            uniq, first = np.unique(hashes, return_index=True)  # first occurrence: the first eval item wins
            if len(uniq):
                self.tables[k] = (uniq, starts[first])
        self.bloom = np.zeros(1 << _BITS, dtype=bool)
        for uniq, _ in self.tables.values():
            self.bloom[(uniq >> np.uint64(64 - _BITS)).astype(np.int64)] = True
        self.whole = {}
        for i, w in enumerate(self.item_words):
            if len(w) < self.whole_max:
                self.whole.setdefault(" ".join(w), i)
        # Near-duplicates: eval signatures in an in-memory LSH, confirmed by exact shingle Jaccard.
        self.hasher = MinHasher(cfg.num_perm, cfg.minhash_seed, cfg.shingle)
        self.layer = _MemoryLayer("eval", cfg)
        if self.items:
            self.layer.add([str(i) for i in range(len(self.items))],
                           self.hasher.signatures([" ".join(w) for w in self.item_words]))
        self._item_shingles: dict[int, set[str]] = {}

    @classmethod
    def from_config(cls, eval_sets: dict[str, list[Example]], cfg: FilterConfig,
                    text: Callable[[str], str] = lambda s: s) -> "Contamination":
        return cls(eval_sets, cfg, text)

    def _item_of(self, pos: int) -> int:
        return int(np.searchsorted(self.item_offsets, pos, side="right") - 1)

    def _ngram_hits(self, docs: list[list[str]]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = [None] * len(docs)
        if not self.tables and not self.whole:
            return out
        prefix, inv, offsets = self.grams.flat(docs)
        # (doc, k, start in doc, eval flat position) of every hashed hit, longest grams first.
        hits: dict[int, list[tuple[int, int, int]]] = {}
        for k, (uniq, owner) in self.tables.items():
            starts, hashes = self.grams.grams(prefix, inv, offsets, k)
            maybe = self.bloom[(hashes >> np.uint64(64 - _BITS)).astype(np.int64)]
            starts, hashes = starts[maybe], hashes[maybe]
            at = np.searchsorted(uniq, hashes).clip(max=len(uniq) - 1)
            found = uniq[at] == hashes
            starts = starts[found]
            doc = np.searchsorted(offsets, starts, side="right") - 1
            for d, i, o in zip(doc.tolist(), (starts - offsets[doc]).tolist(), owner[at[found]].tolist()):
                hits.setdefault(d, []).append((-k, i, o))
        for d, cand in hits.items():
            for neg_k, i, o in sorted(cand):  # longest gram, then earliest position
                k, item = -neg_k, self._item_of(o)
                gram = docs[d][i:i + k]
                j = o - int(self.item_offsets[item])
                if gram == self.item_words[item][j:j + k]:  # confirm: no hash collision
                    set_name, ex = self.items[item]
                    out[d] = {"eval_set": set_name, "eval_id": ex.id, "ngram": " ".join(gram), "n": k}
                    break
        for d, w in enumerate(docs):
            if out[d] is None and w and len(w) < self.whole_max and (item := self.whole.get(" ".join(w))) is not None:
                set_name, ex = self.items[item]
                out[d] = {"eval_set": set_name, "eval_id": ex.id, "ngram": " ".join(w), "n": len(w)}
        return out

    def _near_hits(self, texts: list[str]) -> list[dict[str, Any] | None]:
        if not self.items or not texts:
            return [None] * len(texts)
        sigs = self.hasher.signatures(texts)
        out: list[dict[str, Any] | None] = []
        for text, cands in zip(texts, self.layer.candidates(band_keys(self.layer.lsh, sigs))):
            best_j, best = 0.0, None
            if cands:
                sh = set(shingle_strings(text, self.shingle))
                for key, _ in cands:  # row order: ties go to the first eval item
                    item = int(key)
                    if item not in self._item_shingles:
                        self._item_shingles[item] = set(shingle_strings(" ".join(self.item_words[item]), self.shingle))
                    other = self._item_shingles[item]
                    # LSH hits are only likely matches; the exact Jaccard of the shingle sets decides.
                    j = len(sh & other) / len(sh | other)
                    if j >= self.near_threshold and j > best_j:
                        best_j, best = j, item
            if best is None:
                out.append(None)
            else:
                set_name, ex = self.items[best]
                out.append({"eval_set": set_name, "eval_id": ex.id, "jaccard": round(best_j, 3)})
        return out

    def check_batch(self, examples: Sequence[Example]) -> list[tuple[str, dict[str, Any]] | None]:
        """(reason, detail) per example, or None when it overlaps no eval item."""
        texts = [self.text(ex.input) for ex in examples]
        docs = [words(t) for t in texts]
        ngram = self._ngram_hits(docs)
        rest = [i for i, h in enumerate(ngram) if h is None]
        near = self._near_hits([" ".join(docs[i]) for i in rest])
        out: list[tuple[str, dict[str, Any]] | None] = [("eval_ngram_overlap", h) if h else None for h in ngram]
        for i, h in zip(rest, near):
            if h:
                out[i] = ("eval_near_duplicate", h)
        return out

    def __call__(self, examples: list[Example]) -> FilterResult:
        out = FilterResult()
        for ex, verdict in zip(examples, self.check_batch(examples)):
            if verdict is None:
                out.kept.append(ex)
            else:
                out.rejected.append(Rejected(ex, self.name, *verdict))
        return out
