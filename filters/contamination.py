"""Drop candidates that overlap an eval set, so gates never score on training data.

Two checks, on the input text only:
- eval_ngram_overlap: the candidate contains a word n-gram of an eval item (hashed,
  GPT-3/datatrove style). Items shorter than `ngram` words use their own length,
  down to `min_ngram`; items shorter still match only as a whole text, since a
  3-word phrase showing up inside a candidate is no evidence of leakage.
- eval_near_duplicate: MinHash LSH finds eval items that look alike, and the exact
  Jaccard of their shingle sets must reach `near_threshold` (paraphrase-level copies).
"""

from __future__ import annotations

import hashlib
from typing import Any

from datasketch import MinHash

from core.records import Example, Rejected
from core.skills import FilterConfig
from filters.base import FilterResult
from filters.dedup import make_lsh, minhashes, shingles
from filters.normalize import words


def gram_hash(gram: list[str]) -> int:
    # blake2b, not hash(): Python's str hash is salted per process.
    return int.from_bytes(hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest(), "big")


class Contamination:
    name = "contamination"

    def __init__(self, eval_sets: dict[str, list[Example]], ngram: int, min_ngram: int, near_threshold: float,
                 num_perm: int, shingle: int, seed: int = 1) -> None:
        self.near_threshold, self.num_perm, self.shingle, self.seed = near_threshold, num_perm, shingle, seed
        # Per eval set: (k, hash) -> eval item id (first item wins). The keys are the set of grams.
        self.grams: dict[str, dict[tuple[int, int], str]] = {}
        self.sizes: set[int] = set()  # n-gram sizes to scan candidates with
        self.whole_max = min(ngram, min_ngram)  # texts shorter than this match only as a whole
        items: list[tuple[str, Example, set[str]]] = []  # LSH key -> (set name, item, shingles)
        for set_name, examples in eval_sets.items():
            table = self.grams.setdefault(set_name, {})
            for ex in examples:
                w = words(ex.input)
                if not w:
                    continue  # nothing to leak
                k = ngram if len(w) >= ngram else len(w)
                if k >= self.whole_max:
                    self.sizes.add(k)
                for i in range(len(w) - k + 1):
                    table.setdefault((k, gram_hash(w[i:i + k])), ex.id)
                items.append((set_name, ex, shingles(ex.input, shingle)))
        self.items = items
        self.lsh = make_lsh(near_threshold, num_perm)
        for key, m in enumerate(minhashes((sh for _, _, sh in items), num_perm, seed)):
            self.lsh.insert(key, m)

    @classmethod
    def from_config(cls, eval_sets: dict[str, list[Example]], cfg: FilterConfig, seed: int = 1) -> "Contamination":
        return cls(eval_sets, cfg.ngram, cfg.min_ngram, cfg.near_dup_threshold, cfg.num_perm, cfg.shingle, seed)

    def _ngram_hit(self, w: list[str]) -> dict[str, Any] | None:
        spans = [(k, i) for k in sorted(self.sizes, reverse=True) for i in range(len(w) - k + 1)]
        if w and len(w) < self.whole_max:
            spans.append((len(w), 0))  # the whole candidate may equal a short eval item
        for k, i in spans:
            key = (k, gram_hash(w[i:i + k]))
            for set_name, table in self.grams.items():
                if key in table:
                    return {"eval_set": set_name, "eval_id": table[key], "ngram": " ".join(w[i:i + k]), "n": k}
        return None

    def _near_hit(self, ex: Example, m: MinHash) -> dict[str, Any] | None:
        sh = shingles(ex.input, self.shingle)
        best_j, best_key = 0.0, None
        for key in sorted(self.lsh.query(m)):  # sorted: ties go to the first eval item
            item_sh = self.items[key][2]
            # LSH hits are only likely matches; the exact Jaccard of the shingle sets decides.
            j = len(sh & item_sh) / len(sh | item_sh)
            if j >= self.near_threshold and j > best_j:
                best_j, best_key = j, key
        if best_key is None:
            return None
        set_name, item, _ = self.items[best_key]
        return {"eval_set": set_name, "eval_id": item.id, "jaccard": round(best_j, 3)}

    def __call__(self, examples: list[Example]) -> FilterResult:
        out = FilterResult()
        cand_hashes = minhashes((shingles(ex.input, self.shingle) for ex in examples), self.num_perm, self.seed)
        for ex, m in zip(examples, cand_hashes):
            if hit := self._ngram_hit(words(ex.input)):
                out.rejected.append(Rejected(ex, self.name, "eval_ngram_overlap", hit))
            elif hit := self._near_hit(ex, m):
                out.rejected.append(Rejected(ex, self.name, "eval_near_duplicate", hit))
            else:
                out.kept.append(ex)
        return out
