"""The teacher-expansion stage of a run, without Prefect (the `teacher-expansion` task in flows/pipeline.py
wraps `expansion_stage`): the run's traffic context (flows/traffic_context.py), then the teacher writes and
labels (teachers.strategies.run_expansion)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from core.records import Example, write_examples
from core.skills import Skill

log = logging.getLogger("distill.flows")


def expansion_stage(skill: Skill, teacher_path: str, run_dir: Path, seed: int, choice: dict | None = None,
                    skip: bool = False, replay_items: Sequence[Example] = (), progress=None,
                    logger: Any = None) -> dict:
    """Sample the run's traffic context, then expand with the teacher; writes generated.jsonl (teacher examples
    and traffic relabels), teacher_accounting.json and traffic_context.json. `skip`: the teacher failed its audit
    and audit.on_fail is skip_expansion: no teacher data this run (an empty generated.jsonl, nothing sampled).

    Returns {"requested", "generated", "labeled", "rejected" (list of Rejected), "teacher", "seconds",
    "prompt_tokens", "accounting", "traffic_context" (the sample's counts and the teacher's: relabel_sent,
    relabelled, relabel_dropped, traffic_style_shots, requests_with_traffic_shots, counterfactual_requests)}."""
    from flows.limits import teacher_expansion_slot
    from flows.traffic_context import gather
    from teachers import open_skill_teacher
    from teachers.strategies import run_expansion

    logger = logger or log
    if skip:
        logger.warning("teacher expansion skipped: the teacher is below audit.floor")
        write_examples(Path(run_dir) / "generated.jsonl", [])
        return {"requested": 0, "generated": 0, "labeled": 0, "rejected": [], "teacher": skill.config.teacher.model,
                "seconds": 0.0, "prompt_tokens": 0, "accounting": None, "traffic_context": {}}
    context, sampled = gather(skill, run_dir, seed, replay_items)
    # One slot of the global `teacher-expansion` limit across all runs (uncapped where the API has none).
    with teacher_expansion_slot(), open_skill_teacher(skill, teacher_path, run_dir) as teacher:
        res = run_expansion(skill, teacher, run_dir, seed, progress=progress, choice=choice, traffic=context)
    acc = res.accounting
    logger.info("teacher wrote %d inputs, answered %d, dropped %d; %d requests (%d cached, %d retries)",
                res.inputs, len(res.examples), len(res.rejected), acc["requests"], acc["cache_hits"], acc["retries"])
    traffic = {**sampled, **res.traffic}
    if sampled["read"]:
        logger.info("traffic as context: %d recent inputs read; the teacher labelled %d of %d sampled; %d style "
                    "shots from traffic in %d requests; %d counterfactual requests", traffic["read"],
                    traffic["relabelled"], traffic["relabel_sent"], traffic["traffic_style_shots"],
                    traffic["requests_with_traffic_shots"], traffic["counterfactual_requests"])
    return {"requested": res.requested, "generated": res.inputs, "labeled": len(res.examples),
            "rejected": res.rejected, "teacher": res.teacher, "seconds": round(res.seconds, 1),
            "prompt_tokens": acc["prompt_tokens"], "accounting": acc, "traffic_context": traffic}


__all__ = ["expansion_stage"]
