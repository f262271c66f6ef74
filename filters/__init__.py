"""Filters stage: quality, exact/near dedup and eval contamination, each a named step.

Entry points: `filter_stage` (one run, Prefect-free) and `commit_index` (append the run's
accepted signatures to the skill's persistent dedup index at the end of a successful run).
"""

from __future__ import annotations

from filters.base import ExampleFilter, FilterResult, FilterStats, Step, run_filters
from filters.contamination import Contamination
from filters.dedup import ExactDedup, NearDedup
from filters.index import DedupIndex, IndexMismatch, IndexSpec, Match, commit_index
from filters.minhash import MinHasher, shingle_hash
from filters.normalize import NORMALIZER_VERSION, normalize, words
from filters.quality import MinConfidence, QualityFilter
from filters.stage import FilterOutcome, dedup_text, default_steps, eval_sets_for, filter_stage, load_external_eval_sets

__all__ = [
    "Contamination", "DedupIndex", "ExactDedup", "ExampleFilter", "FilterOutcome", "FilterResult", "FilterStats",
    "IndexMismatch", "IndexSpec", "Match", "MinConfidence", "MinHasher", "NORMALIZER_VERSION", "NearDedup",
    "QualityFilter", "Step", "commit_index", "dedup_text", "default_steps", "eval_sets_for", "filter_stage",
    "load_external_eval_sets", "normalize", "run_filters", "shingle_hash", "words",
]
