"""Input novelty: is a served input like the inputs the version was trained on?

A version keeps, in its registry folder (`novelty.json`), the MinHash signatures of a sample of its
training inputs (at most `drift.novelty_pool`) and a calibrated threshold. An input is *novel* when its
nearest training input is less similar than the threshold, the `drift.novelty_quantile` of the eval set's
inputs' nearest similarities: held-out inputs of the skill's own distribution are novel at about that
rate (0.1), so a window of served inputs that is far more often novel has moved away from the training
data. The gateway's drift monitor (gateway/drift.py) reports the novel share of its window.

Similarity is the MinHash estimate of the Jaccard similarity of the two inputs' word sets (1-word
shingles), with the project's datasketch-compatible signatures (filters.minhash). Not 3-word shingles
as in near-dedup: two different tickets about the same thing share words, rarely 3-word runs (on
ticket-triage the eval inputs' nearest training input shares a median 0.03 of its 2-word shingles).
The nearest neighbour is found by comparing with every stored signature in one numpy operation rather
than through MinHashLSH: LSH finds candidates above a high threshold (near-duplicates), but the
thresholds that tell in-distribution from shifted inputs are low (about 0.13), where banding returns
nearly the whole pool anyway; `novelty_pool` bounds the comparison (1,000 x 128 values).

The signatures are computed on the task type's matching text (a function call's request without its
tool definitions), as dedup compares.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from filters.minhash import HASH_NAME, SCHEME, MinHasher
from filters.normalize import NORMALIZER_VERSION

NOVELTY_FILE = "novelty.json"  # in a registry version folder
FORMAT = 1
NUM_PERM = 128  # MinHash values per input: the Jaccard estimate's sd is about 0.03 at 0.13
SHINGLE = 1  # words, not runs of words (see the module docstring)
SEED = 1
MIN_HOLDOUT = 20  # fewer held-out inputs cannot place a 10th percentile


class NoveltyError(ValueError):
    """A novelty.json that cannot be used (another format, signature parameters or a damaged array)."""


def _hasher() -> MinHasher:
    return MinHasher(NUM_PERM, SEED, SHINGLE)


def nearest_similarity(signatures: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """For each row of `signatures` (n, num_perm) uint32, the MinHash Jaccard estimate of its nearest row
    of `pool` (m, num_perm): float array of shape (n,), values in [0, 1]; 0.0 for every row when m == 0."""
    if len(pool) == 0:
        return np.zeros(len(signatures))
    out = np.empty(len(signatures))
    eq = np.empty(pool.shape, dtype=bool)  # one buffer; summing its bytes as uint8 is about 2x count_nonzero
    for i, s in enumerate(signatures):
        out[i] = np.equal(pool, s[None, :], out=eq).view(np.uint8).sum(axis=1, dtype=np.uint16).max()
    return out / pool.shape[1]


def build_novelty(train_texts: Sequence[str], holdout_texts: Sequence[str], quantile: float = 0.1,
                  max_pool: int = 1000, seed: int = 0) -> dict[str, Any]:
    """novelty.json's content for a version: the signatures of up to `max_pool` distinct training texts (a
    seeded sample beyond it) and the threshold, the `quantile` of the held-out texts' nearest similarities.
    `holdout_texts` must never have been trained on (the eval set). Without `MIN_HOLDOUT` held-out texts,
    or with no training text, `threshold` is None and the monitor reports the signal as unavailable.
    Returns a JSON-serialisable dict (signatures base64, little-endian uint32, shape [n, NUM_PERM])."""
    distinct = list(dict.fromkeys(t for t in train_texts if isinstance(t, str)))
    sample = distinct if len(distinct) <= max_pool else random.Random(seed).sample(distinct, max_pool)
    h = _hasher()
    pool = h.signatures(sample) if sample else np.zeros((0, NUM_PERM), np.uint32)
    held = [t for t in holdout_texts if isinstance(t, str)]
    threshold = novel = None
    why = None
    if not sample:
        why = "no training inputs"
    elif len(held) < MIN_HOLDOUT:
        why = f"{len(held)} held-out inputs; calibrating the threshold needs at least {MIN_HOLDOUT}"
    else:
        sims = nearest_similarity(h.signatures(held), pool)
        threshold = float(np.quantile(sims, quantile))
        novel = float(np.mean(sims < threshold))
    return {
        "format": FORMAT, "num_perm": NUM_PERM, "seed": SEED, "shingle": SHINGLE, "scheme": SCHEME,
        "hash_function": HASH_NAME, "normalizer_version": NORMALIZER_VERSION,
        "similarity": "MinHash estimate of the Jaccard similarity of the inputs' word sets",
        "quantile": quantile, "threshold": threshold, "unavailable": why,
        "holdout": {"n": len(held), "novel_share": None if novel is None else round(novel, 4)},
        "pool": {"n": len(sample), "of": len(distinct)},
        "signatures": base64.b64encode(pool.astype("<u4").tobytes()).decode("ascii"),
    }


def farthest_first(candidates: np.ndarray, covered: np.ndarray, k: int, seed: int = 0) -> tuple[list[int], np.ndarray]:
    """Greedy k-center selection (Gonzalez 1985; the core-set sampling of Sener & Savarese, ICLR 2018): `k`
    rows of `candidates` (n, num_perm) uint32 MinHash signatures, each time the one least similar to its
    nearest row among `covered` (m, num_perm) and the rows picked before it, so the picks cover what the
    covered set lacks first and do not repeat one another. Ties go by a permutation seeded by `seed`.

    Returns (indices into `candidates` in pick order, at most min(k, n); the initial nearest similarity of
    every candidate to `covered`, float array (n,), 0.0 where m == 0)."""
    n = len(candidates)
    first = nearest_similarity(candidates, covered) if n else np.zeros(0)
    best = first.copy()
    rank = np.random.default_rng(seed).permutation(n)  # tie-break: seeded, not the log's order
    picked: list[int] = []
    free = np.ones(n, dtype=bool)
    for _ in range(min(max(k, 0), n)):
        order = np.lexsort((rank[free], best[free]))  # least similar first, then the seeded rank
        i = int(np.flatnonzero(free)[order[0]])
        picked.append(i)
        free[i] = False
        best = np.maximum(best, np.equal(candidates, candidates[i][None, :]).mean(axis=1))
    return picked, first


@dataclass
class NoveltyIndex:
    """A version's training-input signatures and threshold (from novelty.json): `novel(texts)`."""

    pool: np.ndarray  # (n, NUM_PERM) uint32
    threshold: float | None  # None: not calibrated (novel() raises)
    holdout_novel_share: float | None
    quantile: float
    unavailable: str | None = None

    def __post_init__(self) -> None:
        self.hasher = _hasher()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NoveltyIndex":
        """Read novelty.json's content. Raises NoveltyError naming the field for another format, other
        signature parameters than this code computes, or a signature array of the wrong size."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise NoveltyError(f"novelty.json: format {d.get('format') if isinstance(d, dict) else d!r}; this code reads {FORMAT}")
        want = {"num_perm": NUM_PERM, "seed": SEED, "shingle": SHINGLE, "scheme": SCHEME, "hash_function": HASH_NAME,
                "normalizer_version": NORMALIZER_VERSION}
        bad = [f"{k}: {d.get(k)!r}, this code computes {v!r}" for k, v in want.items() if d.get(k) != v]
        if bad:
            raise NoveltyError("novelty.json: signatures made with other parameters (" + "; ".join(bad) + ")")
        raw = base64.b64decode(d.get("signatures") or "")
        if len(raw) % (4 * NUM_PERM):
            raise NoveltyError(f"novelty.json: signatures: {len(raw)} bytes, not a whole number of {NUM_PERM} uint32 rows")
        pool = np.frombuffer(raw, dtype="<u4").reshape(-1, NUM_PERM).astype(np.uint32)
        thr = d.get("threshold")
        return cls(pool, float(thr) if thr is not None else None, (d.get("holdout") or {}).get("novel_share"),
                   float(d.get("quantile") or 0.0), d.get("unavailable"))

    def similarity(self, texts: Sequence[str]) -> np.ndarray:
        """Each text's nearest-training-input similarity: float array (len(texts),) in [0, 1]."""
        return nearest_similarity(self.hasher.signatures(list(texts)), self.pool)

    def novel(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text is novel (similarity below the threshold). Raises NoveltyError when uncalibrated."""
        if self.threshold is None:
            raise NoveltyError(f"novelty is not calibrated for this version ({self.unavailable})")
        return [bool(s < self.threshold) for s in self.similarity(texts)]


__all__ = ["NOVELTY_FILE", "NoveltyError", "NoveltyIndex", "build_novelty", "farthest_first", "nearest_similarity"]
