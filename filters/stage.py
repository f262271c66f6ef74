"""The filter stage of a run, without Prefect: candidates in, accepted + audit out.

`filter_stage` runs every step, writes `accepted.jsonl`, `filter_rejected.jsonl` (each drop
with its stage, reason and the id it matched), `filter_stats.json` (counts per stage and
reason) and the pending dedup signatures into the run folder. It never touches the
persistent index: `commit_index(skill, cfg, run_dir)` does, at the end of a successful run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from core import structured
from core.records import (TEACHER_LABELLED, DataError, Example, Rejected, read_jsonl, write_examples,
                          write_json, write_jsonl)
from core.skills import FilterConfig, Skill, SkillConfig, SkillError
from core.tasks import get_task
from filters.base import Step, run_filters
from filters.confidence import LabelDistribution, LabelThresholds, distribution, label_thresholds, tv_distance
from filters.contamination import Contamination
from filters.dedup import ExactDedup, NearDedup
from filters.index import DedupIndex, commit_index
from filters.quality import MinConfidence, QualityFilter


def dedup_text(cfg: SkillConfig) -> Callable[[str], str]:
    """The text dedup and contamination compare: the task type's matching text (a function
    call's request: its tool definitions repeat across items and would make everything alike)."""
    return get_task(cfg).match_text


def load_external_eval_sets(cfg: SkillConfig, folder: Path) -> dict[str, list[Example]]:
    """`filters.external_eval_sets`: JSONL files with id, input and optionally output, relative to
    the skill folder. Every missing file and bad line is reported in one error."""
    out: dict[str, list[Example]] = {}
    problems: list[str] = []
    for n, rel in enumerate(cfg.filters.external_eval_sets):
        path = (folder / rel).resolve()
        if not path.is_file():
            problems.append(f"filters.external_eval_sets[{n}]: {path} does not exist (paths are relative to "
                            f"{folder}); fix the path or remove the entry")
            continue
        items: list[Example] = []
        seen: set[str] = set()
        try:
            for lineno, obj in read_jsonl(path):
                where = f"{path}:{lineno}"
                if not isinstance(obj.get("id"), (str, int)) or str(obj["id"]) in seen:
                    problems.append(f"{where}: 'id' must be a unique string")
                    continue
                inp = obj.get("input")
                if isinstance(inp, (dict, list)):
                    inp = structured.canonical_json(inp)
                if not isinstance(inp, str) or not inp.strip():
                    problems.append(f"{where}: 'input' must be a non-empty string or a JSON object")
                    continue
                outp = obj.get("output")
                if isinstance(outp, (dict, list)):
                    outp = structured.canonical_json(outp)
                seen.add(str(obj["id"]))
                items.append(Example(id=str(obj["id"]), skill=cfg.name, input=inp,
                                     output=outp if isinstance(outp, str) else None, source="human"))
        except DataError as e:
            problems.append(str(e))
            continue
        out[rel] = items
    if problems:
        raise SkillError(f"{folder / 'skill.yaml'}: {len(problems)} problem(s) with external eval sets:\n"
                         + "\n".join(f"  - {p}" for p in problems))
    return out


def eval_sets_for(skill: Skill, replay_items: Sequence[Example]) -> dict[str, list[Example]]:
    """Every eval set the skill names: its regression set, the replay hold-out, external files."""
    return {"eval": list(skill.eval_set), "replay": list(replay_items),
            **load_external_eval_sets(skill.config, skill.folder)}


def default_steps(cfg: FilterConfig, reference: list[Example], eval_sets: dict[str, list[Example]], *,
                  skill: SkillConfig | None = None, labels: Sequence[str] | None = None,
                  index: DedupIndex | None = None, text: Callable[[str], str] | None = None) -> list[Step]:
    """The usual order: cheapest checks first, so costlier ones see fewer items. Near-dedup
    runs last so only items that will be accepted join the index."""
    text = text or (dedup_text(skill) if skill else (lambda s: s))
    steps: list[Step] = [QualityFilter(cfg, skill, labels)]
    if cfg.min_confidence > 0:
        steps.append(MinConfidence(cfg.min_confidence))
    steps += [
        ExactDedup.from_config(reference, cfg),
        Contamination.from_config(eval_sets, cfg, text),
        NearDedup(index if index is not None else DedupIndex.in_memory(cfg, reference, text=text)),
    ]
    return steps


@dataclass
class ConfidenceSteps:
    """The audit-driven steps of a run (filters/confidence.py) and what they report."""

    skill: Skill
    audit: dict[str, Any] | None
    thresholds: LabelThresholds | None = None
    distribution: LabelDistribution | None = None
    table: dict[str, dict[str, Any]] | None = None

    def report(self, candidates: list[Example], kept: list[Example]) -> dict[str, Any]:
        """Thresholds with what each kept, and the label distributions of seeds, generated and accepted data."""
        cfg = self.skill.config
        out: dict[str, Any] = {"target_precision": cfg.filters.target_precision}
        if self.table is not None and self.thresholds is not None:
            out["thresholds"] = {k: {**v, "kept": self.thresholds.kept_by_label.get(k, 0)}
                                 for k, v in self.table.items()}
        elif cfg.filters.target_precision is not None:
            out["thresholds_skipped"] = ("no teacher audit in this run" if self.audit is None else
                                         "the audit answers carry no confidence (answerer label)")
        if get_task(cfg).one_label:
            teacher_kept = [e.output for e in kept if e.source in TEACHER_LABELLED and e.output]
            seeds = distribution([s.output for s in self.skill.seeds if s.output])
            generated = distribution([e.output for e in candidates if e.output])
            accepted = distribution(teacher_kept)
            out["label_distribution"] = {
                "seeds": _rounded(seeds), "generated": _rounded(generated), "accepted": _rounded(accepted),
                "accepted_counts": dict(sorted(Counter(teacher_kept).items())),
                "distance_generated": round(tv_distance(generated, seeds), 4) if candidates else None,
                "distance_accepted": round(tv_distance(accepted, seeds), 4) if teacher_kept else None,
            }
            if self.distribution is not None:
                out["label_distribution"]["bound"] = self.distribution.report
        return out


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}


def read_audit(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "teacher_audit.json"
    return json.loads(path.read_text()) if path.is_file() else None


def confidence_steps(skill: Skill, run_dir: Path) -> ConfidenceSteps:
    """Per-label thresholds from this run's teacher audit (teacher_audit.json) and the label
    distribution bound, as the skill's filters ask."""
    fc, cfg = skill.config.filters, skill.config
    out = ConfidenceSteps(skill, read_audit(run_dir))
    classification = get_task(cfg).one_label
    if fc.target_precision is not None and out.audit is not None and any(
            i.get("confidence") is not None for i in out.audit.get("items", [])):
        out.table = label_thresholds(out.audit["items"], fc.target_precision, fc.threshold_min_support,
                                     cfg.labels if classification else None, shrinkage=fc.threshold_shrinkage)
        out.thresholds = LabelThresholds(out.table, fc.target_precision, classification)
    if fc.max_label_distance is not None and classification:
        out.distribution = LabelDistribution([s.output for s in skill.seeds if s.output], fc.max_label_distance)
    return out


@dataclass
class FilterOutcome:
    kept: list[Example]
    rejected: list[Rejected]
    stats: dict[str, Any] = field(default_factory=dict)


def filter_stage(skill: Skill, candidates: list[Example], replay_items: Sequence[Example], pool: list[Example],
                 run_dir: Path, fits: Step | None = None) -> FilterOutcome:
    """Filter one run's candidates against seeds, the accepted pool and every eval set. `fits`
    (filters.quality.FitsMaxLength, from the flow) drops what the trainer could not fit."""
    cfg = skill.config
    t0 = time.time()
    text = dedup_text(cfg)
    eval_sets = eval_sets_for(skill, replay_items)
    index = DedupIndex.open(skill.name, cfg.filters, pool=pool, reference=skill.seeds, text=text)
    steps = default_steps(cfg.filters, skill.seeds + pool, eval_sets, skill=cfg, index=index, text=text)
    confidence = confidence_steps(skill, run_dir)
    if fits is not None:
        steps.insert(1, fits)
    if confidence.thresholds is not None:
        steps.insert(1, confidence.thresholds)  # right after the quality checks: cheap, and drops many
    if confidence.distribution is not None:
        steps.append(confidence.distribution)  # last: on what would otherwise be accepted
    kept, rejected, stats = run_filters(candidates, steps)
    index.write_pending(run_dir, keep_ids=[e.id for e in kept])
    stats["confidence"] = confidence.report(candidates, kept)
    stats["eval_sets"] = {name: len(items) for name, items in eval_sets.items()}
    stats["index"] = {"backend": "redis" if cfg.filters.redis_url else "local", "pool": len(pool),
                      "rebuilt_from_pool": index.rebuilt, "lsh_bands": index.lsh.b, "lsh_rows": index.lsh.r,
                      "pending": len(kept)}
    stats["seconds"] = round(time.time() - t0, 3)
    write_examples(run_dir / "accepted.jsonl", kept)
    write_jsonl(run_dir / "filter_rejected.jsonl", (r.to_dict() for r in rejected))
    write_json(run_dir / "filter_stats.json", stats)
    return FilterOutcome(kept, rejected, stats)


__all__ = ["FilterOutcome", "commit_index", "dedup_text", "default_steps", "eval_sets_for", "filter_stage",
           "load_external_eval_sets"]
