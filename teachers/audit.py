"""The teacher audit: how good is this teacher on this skill, and how is it best used?

Before any expansion the teacher answers the human seeds, k-fold: each seed is answered
once, with shots drawn only from the other folds, and scored with the skill's own metric
(core/tasks/). Every option the config leaves open is measured on the same folds:
random vs similar shots (`teacher.shot_selection: auto`), raw vs contextually calibrated
label scores (`teacher.calibration: auto`, score answerer). The best option labels the run;
its per-item confidences set the per-label thresholds (filters/confidence.py); a score below
`audit.floor` stops the run before expansion.

Plain functions; the flow's `teacher-audit` task wraps `run_audit` and writes teacher_audit.json.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from core.records import Example
from core.skills import Skill, SkillConfig
from core.tasks import get_task
from teachers.base import Failure
from teachers.client import Teacher
from teachers.strategies import Progress, _no_progress, answerer, label, self_consistency, shot_picker


@dataclass
class AuditItem:
    """One seed as the teacher answered it under one option."""

    id: str
    gold: str
    prediction: str | None  # None: no valid answer
    confidence: float | None  # calibrated probability (score) or vote share (self_consistency)
    score: float  # the skill's primary metric on this item

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "gold": self.gold, "prediction": self.prediction, "confidence": self.confidence,
                "score": self.score}


def audit_seeds(skill: Skill, seed: int) -> list[Example]:
    """The seeds audited: all, or a label-stratified sample of `audit.max_items`."""
    seeds = list(skill.seeds)
    cap = skill.config.audit.max_items
    if cap is None or cap >= len(seeds):
        return seeds
    rng = random.Random(seed + 31)
    order = rng.sample(seeds, len(seeds))
    if get_task(skill.config).one_label:  # round-robin over labels keeps their shares
        groups: dict[str, list[Example]] = {}
        for s in order:
            groups.setdefault(s.output or "", []).append(s)
        order = [g[i] for i in range(max(map(len, groups.values()))) for g in groups.values() if i < len(g)]
    return order[:cap]


def make_folds(cfg: SkillConfig, seeds: list[Example], k: int, seed: int) -> list[list[Example]]:
    """k folds; classification folds are stratified (each label dealt round-robin)."""
    rng = random.Random(seed + 29)
    order = rng.sample(seeds, len(seeds))
    if get_task(cfg).one_label:
        order.sort(key=lambda s: s.output or "")  # stable: shuffled within each label
    folds: list[list[Example]] = [[] for _ in range(min(k, len(seeds)))]
    for i, s in enumerate(order):
        folds[i % len(folds)].append(s)
    return folds


def options_for(cfg: SkillConfig) -> list[dict[str, str | None]]:
    """The options the audit measures, cheapest first (ties go to the cheaper one)."""
    tc = cfg.teacher
    shots = ["random", "similar"] if tc.shot_selection == "auto" else [tc.shot_selection]
    if answerer(cfg) == "score":
        cals: list[str | None] = ["none", "contextual"] if tc.calibration == "auto" else [tc.calibration]
    else:
        cals = [None]
    return [{"shots": s, "calibration": c} for s in shots for c in cals]


def option_name(opt: dict[str, str | None]) -> str:
    cal = {"none": "raw", "contextual": "calibrated"}.get(opt["calibration"] or "")
    return f"{opt['shots']} shots" + (f", {cal}" if cal else "")


def _blank(ex: Example) -> Example:
    """A seed as an unlabeled input (what the answerers take)."""
    return Example(id=ex.id, skill=ex.skill, input=ex.input, output=None, source="human", meta={})


def _answer_fold(skill: Skill, teacher: Teacher, who: str, fold: list[Example], pool: list[Example], shots: str,
                 seed: int, advance) -> list[tuple[str | None, float | None, dict[str, float] | None]]:
    """(prediction, confidence, label log-likelihoods) for each held-out seed of one fold."""
    picker = shot_picker(skill, shots, pool=pool, seed=seed)
    blanks = [_blank(s) for s in fold]
    if who == "score":
        from teachers.scoring import run_scores
        from teachers.strategies import _answer_prompts

        prompts, _ = _answer_prompts(skill, blanks, seed, picker)
        return [(None, None, None) if isinstance(sc, Failure) else (None, None, sc)
                for sc in run_scores(skill.config, teacher, prompts, advance)]
    fn = label if who == "label" else self_consistency
    kept, _ = fn(skill, teacher, blanks, seed=seed, advance=advance, picker=picker)
    got = {e.input: e for e in kept}
    out = []
    for s in fold:
        e = got.get(s.input)
        conf = e.confidence if (e is not None and who == "self_consistency") else None
        out.append((e.output if e is not None else None, conf, None))
    return out


def _summarize(cfg: SkillConfig, seeds: list[Example], items: list[AuditItem]) -> dict[str, Any]:
    task = get_task(cfg)
    preds = [i.prediction for i in items]
    agg = task.aggregate([task.score(e, p) for e, p in zip(seeds, preds)], seeds, preds)
    out: dict[str, Any] = {"score": agg.get(task.primary), "invalid_rate": agg.get("invalid_rate")}
    # The label tables, where the task type's metrics have them (per-label bias of the teacher).
    out.update({k: agg[k] for k in ("macro_f1", "per_label_precision", "per_label_recall",
                                    "predicted_distribution", "confusion") if k in agg})
    return out


def run_audit(skill: Skill, teacher: Teacher, seed: int, progress: Progress | None = None) -> dict[str, Any]:
    """Score every open option on the seeds (k-fold); choose the best; check the floor."""
    from teachers.scoring import argmax, calibrate, content_free_prior, softmax

    progress = progress or _no_progress
    cfg, ac = skill.config, skill.config.audit
    task = get_task(cfg)
    who = answerer(cfg)
    seeds = audit_seeds(skill, seed)
    folds = make_folds(cfg, seeds, ac.folds, seed)
    order = [s for f in folds for s in f]  # items in fold order
    options = options_for(cfg)
    t_start = time.perf_counter()

    # Content-free priors, one per fold (from that fold's pool only), when any option calibrates.
    priors: list[dict[str, float] | None] = [None] * len(folds)
    calibration_seconds = 0.0
    if any(o["calibration"] == "contextual" for o in options):
        t0 = time.perf_counter()
        n = cfg.teacher.calibration_shot_sets
        with progress("audit: content-free prior", n * 3 * len(folds)) as advance:
            for f, fold in enumerate(folds):
                pool = [s for g, other in enumerate(folds) if g != f for s in other]
                priors[f] = content_free_prior(cfg, teacher, pool, seed + f, advance=advance)
        calibration_seconds = time.perf_counter() - t0

    results: list[dict[str, Any]] = []
    all_items: dict[str, list[AuditItem]] = {}
    for shots in dict.fromkeys(o["shots"] for o in options):
        t0, sent0 = time.perf_counter(), teacher.accounting.sent
        answers: list[tuple[str | None, float | None, dict[str, float] | None]] = []
        with progress(f"audit: {shots} shots", len(seeds) * (cfg.expansion.self_consistency_samples
                                                              if who == "self_consistency" else 1)) as advance:
            for f, fold in enumerate(folds):
                pool = [s for g, other in enumerate(folds) if g != f for s in other]
                answers += _answer_fold(skill, teacher, who, fold, pool, shots, seed + f, advance)
        seconds, sent = time.perf_counter() - t0, teacher.accounting.sent - sent0
        fold_of = [f for f, fold in enumerate(folds) for _ in fold]
        for opt in (o for o in options if o["shots"] == shots):
            items = []
            for s, (pred, conf, lps), f in zip(order, answers, fold_of):
                if lps is not None:
                    probs = calibrate(softmax(lps), priors[f] if opt["calibration"] == "contextual" else None)
                    pred = argmax(probs)
                    conf = round(probs[pred], 4)
                score = task.score(s, pred)[task.primary]
                items.append(AuditItem(s.id, s.output or "", pred, conf, float(score)))
            name = option_name(opt)
            all_items[name] = items
            extra = calibration_seconds if opt["calibration"] == "contextual" else 0.0
            results.append({"option": name, **opt, **_summarize(cfg, order, items),
                            "teacher_seconds": round(seconds + extra, 2), "requests_sent": sent})

    best = max(results, key=lambda r: (r["score"] or 0.0, -results.index(r)))
    floor = ac.floor
    passed = floor is None or (best["score"] or 0.0) >= floor
    metric = task.primary
    reason = (f"teacher audit: {metric} {best['score']:.3f} ({best['option']}, {len(seeds)} seeds, "
              f"{len(folds)}-fold) " + ("has no floor" if floor is None else
                                        f"{'>=' if passed else '<'} audit.floor {floor:.3f}"))
    if not passed:
        reason += ("; expansion refused: the teacher's labels would be mostly noise. Use a stronger teacher "
                   "(teacher.model / backend), more or clearer seeds, or lower audit.floor")
    return {
        "metric": metric, "n": len(seeds), "folds": len(folds), "answerer": who, "options": results,
        "chosen": best["option"], "use": {"shots": best["shots"], "calibration": best["calibration"]},
        "score": best["score"], "floor": floor, "passed": passed, "reason": reason,
        "seed_distribution": dict(Counter(s.output for s in seeds)) if task.one_label else None,
        "items": [i.to_dict() for i in all_items[best["option"]]],
        "seconds": round(time.perf_counter() - t_start, 2),
    }
