"""Exact and near-duplicate removal against a reference set and within the batch.

The reference (seeds, then everything accepted before) always wins; inside a batch the
first copy wins. Near-dedup goes through a `DedupIndex` (filters/index.py), which
remembers what it accepted for the rest of the run and persists it only on commit.
"""

from __future__ import annotations

from typing import Iterable, Literal

from core.records import Example, Rejected
from core.skills import FilterConfig
from filters.base import FilterResult
from filters.index import DedupIndex
from filters.minhash import shingle_strings
from filters.normalize import normalize


def shingles(text: str, size: int) -> set[str]:
    """Word `size`-grams of the normalized text; a shorter text is one shingle."""
    return set(shingle_strings(text, size))


class ExactDedup:
    """Drops `exact_duplicate` with detail {matched_id, match}: `match` is "input_output" when
    the input and the output both repeat, "input" when only the input does (the same question
    with another answer: a conflicting label). With `mode="input_output"` only full copies drop."""

    name = "exact_dedup"

    def __init__(self, reference: Iterable[Example], mode: Literal["input", "input_output"] = "input") -> None:
        self.mode = mode
        self.inputs: dict[str, str] = {}  # normalized input -> first id
        self.pairs: dict[tuple[str, str], str] = {}  # (normalized input, normalized output) -> first id
        for ex in reference:
            self._remember(ex, *self._keys(ex))

    @staticmethod
    def _keys(ex: Example) -> tuple[str, tuple[str, str]]:
        key = normalize(ex.input)
        return key, (key, normalize(ex.output or ""))

    def _remember(self, ex: Example, key: str, pair: tuple[str, str]) -> None:
        self.inputs.setdefault(key, ex.id)
        self.pairs.setdefault(pair, ex.id)

    @classmethod
    def from_config(cls, reference: Iterable[Example], cfg: FilterConfig) -> "ExactDedup":
        return cls(reference, cfg.exact_dedup)

    def __call__(self, examples: list[Example]) -> FilterResult:
        # A copy per call: the batch's own items are not remembered by the next call.
        inputs, pairs = dict(self.inputs), dict(self.pairs)
        out = FilterResult()
        for ex in examples:
            key, pair = self._keys(ex)
            if pair in pairs:
                out.rejected.append(Rejected(ex, self.name, "exact_duplicate",
                                             {"matched_id": pairs[pair], "match": "input_output"}))
            elif self.mode == "input" and key in inputs:
                out.rejected.append(Rejected(ex, self.name, "exact_duplicate",
                                             {"matched_id": inputs[key], "match": "input"}))
            else:
                inputs.setdefault(key, ex.id)
                pairs.setdefault(pair, ex.id)
                out.kept.append(ex)
        return out


class NearDedup:
    """MinHash near-duplicates (`near_duplicate`, detail {matched_id, matched_in, jaccard})."""

    name = "near_dedup"

    def __init__(self, index: DedupIndex) -> None:
        self.index = index

    @classmethod
    def in_memory(cls, reference: Iterable[Example], cfg: FilterConfig) -> "NearDedup":
        return cls(DedupIndex.in_memory(cfg, list(reference)))

    def __call__(self, examples: list[Example]) -> FilterResult:
        out = FilterResult()
        for ex, match in zip(examples, self.index.query_and_add(examples)):
            if match is None:
                out.kept.append(ex)
            else:
                out.rejected.append(Rejected(ex, self.name, "near_duplicate", match.to_detail()))
        return out
