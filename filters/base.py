"""Filter steps and the loop that runs them.

A step is any object with a `name` and `__call__(examples) -> FilterResult`
(datatrove-style). Steps work on whole batches because dedup needs to see the
batch; per-example checks subclass `ExampleFilter`. Every input example comes
out either kept or rejected with a snake_case reason: `run_filters` checks it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from core.records import Example, Rejected
from filters.normalize import NORMALIZER_VERSION


@dataclass
class FilterResult:
    kept: list[Example] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


class Step(Protocol):
    name: str

    def __call__(self, examples: list[Example]) -> FilterResult: ...


class ExampleFilter:
    """A step that judges each example on its own: override `check`."""

    name = "example_filter"

    def check(self, ex: Example) -> tuple[str, dict[str, Any]] | None:
        """Return (reason, detail) to drop `ex`, or None to keep it."""
        raise NotImplementedError

    def __call__(self, examples: list[Example]) -> FilterResult:
        out = FilterResult()
        for ex in examples:
            verdict = self.check(ex)
            if verdict is None:
                out.kept.append(ex)
            else:
                out.rejected.append(Rejected(ex, self.name, verdict[0], verdict[1]))
        return out


class FilterStats:
    """Counts per stage (in / kept) and drops per (stage, reason)."""

    def __init__(self) -> None:
        self.candidates = 0
        self.stages: dict[str, dict[str, int]] = {}
        self.drops: Counter[tuple[str, str]] = Counter()

    def add(self, stage: str, n_in: int, result: FilterResult) -> None:
        self.stages[stage] = {"in": n_in, "kept": len(result.kept), "rejected": len(result.rejected)}
        self.drops.update((r.stage, r.reason) for r in result.rejected)

    def to_dict(self) -> dict[str, Any]:
        by_stage: dict[str, dict[str, int]] = {}
        for (stage, reason), n in sorted(self.drops.items()):
            by_stage.setdefault(stage, {})[reason] = n
        rejected = sum(self.drops.values())
        return {
            "normalizer_version": NORMALIZER_VERSION,
            "candidates": self.candidates,
            "kept": self.candidates - rejected,
            "rejected": rejected,
            "stages": {name: {**counts, "reasons": by_stage.get(name, {})} for name, counts in self.stages.items()},
        }


def run_filters(candidates: list[Example], steps: Sequence[Step]) -> tuple[list[Example], list[Rejected], dict[str, Any]]:
    """Apply `steps` in order; each sees only what the previous kept."""
    stats = FilterStats()
    stats.candidates = len(candidates)
    kept, rejected = list(candidates), []
    for step in steps:
        result = step(kept)
        # A step that loses or invents examples is a bug; fail loudly rather than drop data silently.
        if len(result.kept) + len(result.rejected) != len(kept):
            raise RuntimeError(f"filter {step.name!r} got {len(kept)} examples but returned "
                               f"{len(result.kept)} kept + {len(result.rejected)} rejected")
        stats.add(step.name, len(kept), result)
        kept = result.kept
        rejected.extend(result.rejected)
    return kept, rejected, stats.to_dict()
