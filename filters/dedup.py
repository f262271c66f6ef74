"""Exact and near-duplicate removal against a reference set and within the batch.

The reference (e.g. human seeds) always wins; inside a batch the first copy wins.
Each call is independent: the candidates of one call are not remembered by the next.
"""

from __future__ import annotations

from typing import Iterable

from datasketch import MinHash, MinHashLSH

from core.records import Example, Rejected
from core.skills import FilterConfig
from filters.base import FilterResult
from filters.normalize import normalize, words

# LSH hits are always re-checked with a Jaccard, so tune the index for recall:
# with datasketch's default (0.5, 0.5) weights, 128 perms at 0.7 find under half the pairs at J=0.7.
LSH_WEIGHTS = (0.1, 0.9)
# datasketch cannot band thresholds near 1.0 (b < 2); the Jaccard check applies the real threshold.
MAX_LSH_THRESHOLD = 0.9


def shingles(text: str, size: int) -> set[str]:
    """Word `size`-grams of the normalized text; a shorter text is one shingle."""
    w = words(text)
    if len(w) < size:
        return {" ".join(w)}
    return {" ".join(w[i:i + size]) for i in range(len(w) - size + 1)}


def minhashes(shingle_sets: Iterable[set[str]], num_perm: int, seed: int) -> list[MinHash]:
    # sorted: MinHash is order-free, but a fixed order keeps runs byte-identical.
    return MinHash.bulk([[s.encode() for s in sorted(sh)] for sh in shingle_sets], num_perm=num_perm, seed=seed)


def make_lsh(threshold: float, num_perm: int) -> MinHashLSH:
    return MinHashLSH(threshold=min(threshold, MAX_LSH_THRESHOLD), num_perm=num_perm, weights=LSH_WEIGHTS)


class ExactDedup:
    name = "exact_dedup"

    def __init__(self, reference: Iterable[Example]) -> None:
        self.reference: dict[str, str] = {}  # normalized input -> id
        for ex in reference:
            self.reference.setdefault(normalize(ex.input), ex.id)

    def __call__(self, examples: list[Example]) -> FilterResult:
        seen = dict(self.reference)
        out = FilterResult()
        for ex in examples:
            key = normalize(ex.input)
            if key in seen:
                out.rejected.append(Rejected(ex, self.name, "exact_duplicate", {"matched_id": seen[key]}))
            else:
                seen[key] = ex.id
                out.kept.append(ex)
        return out


class NearDedup:
    name = "near_dedup"

    def __init__(self, reference: Iterable[Example], threshold: float, num_perm: int, shingle: int,
                 seed: int = 1) -> None:
        self.threshold, self.num_perm, self.shingle, self.seed = threshold, num_perm, shingle, seed
        ref = list(reference)
        self.ref_ids = [ex.id for ex in ref]
        # Reference MinHashes are computed once and reused by every call.
        self.ref_hashes = minhashes((shingles(ex.input, shingle) for ex in ref), num_perm, seed)

    @classmethod
    def from_config(cls, reference: Iterable[Example], cfg: FilterConfig, seed: int = 1) -> "NearDedup":
        return cls(reference, cfg.near_dup_threshold, cfg.num_perm, cfg.shingle, seed)

    def __call__(self, examples: list[Example]) -> FilterResult:
        lsh = make_lsh(self.threshold, self.num_perm)
        ids = list(self.ref_ids)  # LSH key i -> example id (ids themselves may repeat across sources)
        hashes = list(self.ref_hashes)
        for key, m in enumerate(hashes):
            lsh.insert(key, m)
        out = FilterResult()
        cand_hashes = minhashes((shingles(ex.input, self.shingle) for ex in examples), self.num_perm, self.seed)
        for ex, m in zip(examples, cand_hashes):
            # Best confirmed match; ties go to the earliest key so runs are reproducible.
            scored = sorted((-m.jaccard(hashes[k]), k) for k in lsh.query(m))
            if scored and -scored[0][0] >= self.threshold:
                j, k = -scored[0][0], scored[0][1]
                out.rejected.append(Rejected(ex, self.name, "near_duplicate",
                                             {"matched_id": ids[k], "jaccard": round(j, 3)}))
            else:
                lsh.insert(len(hashes), m)
                ids.append(ex.id)
                hashes.append(m)
                out.kept.append(ex)
        return out
