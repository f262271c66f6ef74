"""Confidence decides what trains.

`label_thresholds` picks, per predicted label, the lowest confidence at which the teacher's
audit answers (k-fold on the seeds, teachers/audit.py) reach `filters.target_precision`;
`LabelThresholds` drops teacher examples below their label's threshold. A label whose audit
answers never reach the precision keeps no teacher examples (the seeds still teach it).

`LabelDistribution` keeps the labels of accepted teacher examples within
`filters.max_label_distance` (total variation) of the seeds' distribution, dropping the least
confident examples of the most over-represented label first: a biased teacher (the 270M one
labels most tickets `account`) must not teach its bias by volume.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

from core.records import TEACHER_LABELLED, Example, Rejected
from filters.base import ExampleFilter, FilterResult

ALL = "*"  # the one group of skills without labels


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def label_thresholds(items: Sequence[dict[str, Any]], target: float, min_support: int,
                     labels: Sequence[str] | None = None, shrinkage: float = 0.0) -> dict[str, dict[str, Any]]:
    """{group: {threshold, precision, support, reachable[, estimate]}} from audit items (prediction,
    confidence, score). Groups are predicted labels (classification) or ALL. Precision at t is
    the mean item score of audit answers in the group with confidence >= t.

    `shrinkage` s > 0: a label's precision at t is estimated as (hits + s * P(t)) / (n + s), where
    P(t) is the precision of every audit answer at or above t (empirical-Bayes shrinkage toward the
    pooled rate, as in Efron & Morris 1975): a label with few audit answers is judged mostly by the
    pooled rate instead of losing all its teacher examples, one with many by its own; the threshold
    is the lowest t whose estimate reaches `target` with at least `min_support` own answers."""
    groups: dict[str, list[tuple[float, float]]] = {lab: [] for lab in labels or ()}
    for it in items:
        if it.get("prediction") is None or not _finite(it.get("confidence")):
            continue  # no comparable confidence (None, NaN, inf): it cannot vouch for a threshold
        key = it["prediction"] if labels else ALL
        groups.setdefault(key, []).append((float(it["confidence"]), float(it["score"])))
    if shrinkage > 0:
        return _shrunk_thresholds(groups, target, min_support, shrinkage)
    out: dict[str, dict[str, Any]] = {}
    for key, xs in groups.items():
        xs.sort(key=lambda x: -x[0])
        best = None
        hits = 0.0
        for n, (conf, score) in enumerate(xs, start=1):
            hits += score
            # Only at the last item of a run of equal confidences: a threshold keeps all of them.
            if n < len(xs) and xs[n][0] == conf:
                continue
            if n >= min_support and hits / n >= target:
                best = {"threshold": conf, "precision": round(hits / n, 4), "support": n}
        out[key] = ({**best, "reachable": True} if best else
                    {"threshold": None, "precision": round(hits / len(xs), 4) if xs else None,
                     "support": len(xs), "reachable": False})
    return out


def _shrunk_thresholds(groups: dict[str, list[tuple[float, float]]], target: float, min_support: int,
                       s: float) -> dict[str, dict[str, Any]]:
    pooled = sorted((x for xs in groups.values() for x in xs), key=lambda x: -x[0])
    cands = sorted({c for c, _ in pooled}, reverse=True)
    # Pooled (count, hits) at or above each candidate threshold.
    at: dict[float, tuple[int, float]] = {}
    n = hits = 0
    for i, (c, sc) in enumerate(pooled):
        n, hits = n + 1, hits + sc
        if i + 1 == len(pooled) or pooled[i + 1][0] != c:
            at[c] = (n, hits)
    out: dict[str, dict[str, Any]] = {}
    for key, xs in groups.items():
        best, own = None, sorted(xs, key=lambda x: -x[0])
        j = n_own = 0
        h_own = 0.0
        for t in cands:
            while j < len(own) and own[j][0] >= t:
                n_own, h_own, j = n_own + 1, h_own + own[j][1], j + 1
            big_n, big_h = at[t]
            est = (h_own + s * big_h / big_n) / (n_own + s)
            if n_own >= min_support and est >= target:
                best = {"threshold": t, "precision": round(h_own / n_own, 4) if n_own else None,
                        "estimate": round(est, 4), "support": n_own}
        out[key] = ({**best, "reachable": True} if best else
                    {"threshold": None, "precision": round(h_own / n_own, 4) if n_own else None,
                     "support": len(xs), "reachable": False})
    return out


class LabelThresholds(ExampleFilter):
    """Teacher examples under their label's audit threshold are dropped (`below_label_threshold`),
    as are those of a label whose threshold is unreachable (`label_precision_unreachable`)."""

    name = "label_threshold"

    def __init__(self, thresholds: dict[str, dict[str, Any]], target: float, classification: bool) -> None:
        self.thresholds, self.target, self.classification = thresholds, target, classification
        self.kept_by_label: Counter[str] = Counter()

    def check(self, ex: Example) -> tuple[str, dict[str, Any]] | None:
        if ex.source not in TEACHER_LABELLED:  # the teacher's labels, traffic relabels included
            return None
        key = (ex.output or "") if self.classification else ALL
        t = self.thresholds.get(key)
        if t is None or not t["reachable"]:
            return "label_precision_unreachable", {"label": key, "target_precision": self.target,
                                                   "audit_precision": (t or {}).get("precision")}
        if not _finite(ex.confidence) or ex.confidence < t["threshold"]:  # NaN < t is False: check it first
            return "below_label_threshold", {"label": key, "confidence": ex.confidence, "threshold": t["threshold"]}
        self.kept_by_label[key] += 1
        return None


def distribution(labels: Sequence[str]) -> dict[str, float]:
    n = len(labels)
    return {k: v / n for k, v in sorted(Counter(labels).items())} if n else {}


def tv_distance(p: dict[str, float], q: dict[str, float]) -> float:
    """Total variation distance: half the L1 distance (0 = same, 1 = disjoint)."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


class LabelDistribution:
    """Drops the least confident teacher examples (traffic relabels included: their labels are the teacher's)
    of the most over-represented label until the accepted labels are within `max_distance` of the seeds'
    distribution (or no drop brings them closer: a label the teacher never gave cannot be added by dropping;
    `reached` says so)."""

    name = "label_distribution"

    def __init__(self, seed_labels: Sequence[str], max_distance: float) -> None:
        self.full_target = self.target = distribution(seed_labels)
        self.max_distance = max_distance
        self.report: dict[str, Any] = {}

    def __call__(self, examples: list[Example]) -> FilterResult:
        teacher = [e for e in examples if e.source in TEACHER_LABELLED and e.output is not None]
        others = [e for e in examples if not (e.source in TEACHER_LABELLED and e.output is not None)]
        by: dict[str, list[Example]] = {}
        for e in sorted(teacher, key=lambda e: (e.confidence if e.confidence is not None else 0.0, e.id)):
            by.setdefault(e.output, []).append(e)  # least confident first
        dropped: list[Rejected] = []
        # A seed label the teacher never gave cannot be added by dropping: the bound holds on the seeds'
        # distribution over the labels present, so a missing label does not make every other one shrink.
        missing = sorted(k for k in self.full_target if k not in by)
        mass = sum(v for k, v in self.full_target.items() if k in by)
        self.target = {k: v / mass for k, v in self.full_target.items() if k in by} if mass else self.full_target

        def dist() -> dict[str, float]:
            n = sum(len(v) for v in by.values())
            return {k: len(v) / n for k, v in by.items() if v} if n else {}

        before = tv_distance(dist(), self.target) if teacher else 0.0
        d = before
        while d > self.max_distance:
            cur = dist()
            over = max(cur, key=lambda k: cur[k] - self.target.get(k, 0.0))
            victim = by[over][0]
            by[over] = by[over][1:]
            nd = tv_distance(dist(), self.target) if any(by.values()) else 1.0
            if nd >= d:  # no closer: put it back and stop
                by[over].insert(0, victim)
                break
            d = nd
            dropped.append(Rejected(victim, self.name, "label_over_represented",
                                    {"label": over, "confidence": victim.confidence,
                                     "max_label_distance": self.max_distance}))
        gone = {id(r.example) for r in dropped}
        kept = others + [e for e in teacher if id(e) not in gone]
        self.report = {"seeds": {k: round(v, 4) for k, v in self.full_target.items()}, "missing_labels": missing,
                       "target": {k: round(v, 4) for k, v in self.target.items()},
                       "distance_before": round(before, 4), "distance_after": round(d, 4),
                       "max_distance": self.max_distance, "reached": d <= self.max_distance,
                       "dropped": len(dropped)}
        order = {id(e): i for i, e in enumerate(examples)}
        kept.sort(key=lambda e: order[id(e)])
        return FilterResult(kept=kept, rejected=dropped)
