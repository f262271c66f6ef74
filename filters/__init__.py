"""Filters stage: quality, exact/near dedup and eval contamination, each a named step."""

from __future__ import annotations

from typing import Sequence

from core.records import Example
from core.skills import FilterConfig
from filters.base import ExampleFilter, FilterResult, FilterStats, Step, run_filters
from filters.contamination import Contamination
from filters.dedup import ExactDedup, NearDedup
from filters.normalize import NORMALIZER_VERSION, normalize, words
from filters.quality import QualityFilter

__all__ = [
    "Contamination", "ExactDedup", "ExampleFilter", "FilterResult", "FilterStats", "NORMALIZER_VERSION",
    "NearDedup", "QualityFilter", "Step", "default_steps", "normalize", "run_filters", "words",
]


def default_steps(cfg: FilterConfig, labels: Sequence[str], reference: list[Example],
                  eval_sets: dict[str, list[Example]]) -> list[Step]:
    """The usual order: cheapest checks first, so costlier ones see fewer items."""
    return [
        QualityFilter(cfg, labels),
        ExactDedup(reference),
        Contamination.from_config(eval_sets, cfg),
        NearDedup.from_config(reference, cfg),
    ]
