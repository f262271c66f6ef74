"""Cheap per-example checks: input length and a usable output."""

from __future__ import annotations

from typing import Any, Sequence

from core.records import Example
from core.skills import FilterConfig
from filters.base import ExampleFilter
from filters.normalize import words


class QualityFilter(ExampleFilter):
    name = "quality"

    def __init__(self, cfg: FilterConfig, labels: Sequence[str] | None = None) -> None:
        self.min_words = cfg.min_input_words
        self.max_words = cfg.max_input_words
        self.labels = set(labels or ())  # empty: any non-empty output is valid

    def check(self, ex: Example) -> tuple[str, dict[str, Any]] | None:
        n = len(words(ex.input))
        if n < self.min_words:
            return "too_short", {"words": n, "min_input_words": self.min_words}
        if n > self.max_words:
            return "too_long", {"words": n, "max_input_words": self.max_words}
        if ex.output is None or not ex.output.strip():
            return "missing_output", {}
        if self.labels and ex.output not in self.labels:
            return "invalid_label", {"output": ex.output, "labels": sorted(self.labels)}
        return None


class MinConfidence(ExampleFilter):
    """Drops teacher examples whose confidence (vote agreement) is below a bound."""

    name = "confidence"

    def __init__(self, min_confidence: float) -> None:
        self.min_confidence = min_confidence

    def check(self, ex: Example) -> tuple[str, dict[str, Any]] | None:
        if ex.confidence is not None and ex.confidence < self.min_confidence:
            return "low_confidence", {"confidence": ex.confidence, "min_confidence": self.min_confidence}
        return None
