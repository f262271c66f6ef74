"""Scoring instead of sampling, for closed label sets, and contextual calibration.

The teacher is asked for the log-likelihood of each label after the prompt (a forward pass
locally; completions with `echo` + `logprobs` over HTTP) instead of writing an answer, so
every labeled example carries a probability over all labels, and an answer is always a label.

Contextual calibration (Zhao et al. 2021, "Calibrate Before Use"): a few-shot prompt leans
toward some labels whatever the input (majority and recency of the shots, common tokens).
The lean is measured on content-free inputs ("N/A", "[MASK]", "") and divided out:
p_cal(label) ∝ p(label | x) / p(label | content-free). With per-item shots there is no single
prompt to calibrate, so the prior is averaged over several random balanced shot sets.
"""

from __future__ import annotations

import json
import math
import random
from typing import Callable, Sequence

from core import prompting
from core.records import Example
from core.skills import SkillConfig
from teachers.base import Completion, Failure, Request
from teachers.client import Teacher
from teachers.shots import balanced_shots

CONTENT_FREE = ("N/A", "[MASK]", "")


def label_options(cfg: SkillConfig) -> tuple[str, ...]:
    """The continuation each label is scored as: exactly what the student is trained to write."""
    return tuple(prompting.format_completion(cfg, lab) for lab in cfg.labels)


def score_requests(cfg: SkillConfig, prompts: Sequence[str]) -> list[Request]:
    return [Request(prompt=p, max_tokens=1, temperature=0.0, stop=(), options=label_options(cfg)) for p in prompts]


def parse_scores(cfg: SkillConfig, c: Completion) -> dict[str, float]:
    """{label: log-likelihood} from a scoring completion (keys are the options as sent)."""
    raw = json.loads(c.text)
    return {lab: float(raw[opt]) for lab, opt in zip(cfg.labels, label_options(cfg))}


def run_scores(cfg: SkillConfig, teacher: Teacher, prompts: Sequence[str],
               advance: Callable[..., None] = lambda *a, **k: None) -> list[dict[str, float] | Failure]:
    """Each prompt's label log-likelihoods (or the Failure that ended its request)."""
    outcomes = teacher.run(score_requests(cfg, prompts), validate=None, progress=advance)
    return [o if isinstance(o, Failure) else parse_scores(cfg, o) for o in outcomes]


def softmax(logprobs: dict[str, float]) -> dict[str, float]:
    top = max(logprobs.values())
    exp = {k: math.exp(v - top) for k, v in logprobs.items()}
    z = sum(exp.values())
    return {k: v / z for k, v in exp.items()}


def calibrate(probs: dict[str, float], prior: dict[str, float] | None) -> dict[str, float]:
    """p(label) / prior(label), renormalized; unchanged without a prior."""
    if not prior:
        return dict(probs)
    q = {k: v / max(prior.get(k, 0.0), 1e-12) for k, v in probs.items()}
    z = sum(q.values())
    return {k: v / z for k, v in q.items()}


def argmax(probs: dict[str, float]) -> str:
    return max(probs, key=lambda k: (probs[k], k))


def content_free_prompts(cfg: SkillConfig, pool: list[Example], shot_sets: int, seed: int) -> list[str]:
    rng = random.Random(seed + 17)
    prompts = []
    for _ in range(shot_sets):
        shots = balanced_shots(pool, cfg.teacher.few_shot, rng)
        pairs = [(s.input, s.output) for s in shots]
        prompts += [prompting.format_prompt(cfg, cf, pairs) for cf in CONTENT_FREE]
    return prompts


def content_free_prior(cfg: SkillConfig, teacher: Teacher, pool: list[Example], seed: int,
                       shot_sets: int | None = None,
                       advance: Callable[..., None] = lambda *a, **k: None) -> dict[str, float]:
    """The label distribution the teacher shows on content-free inputs, averaged over random
    balanced shot sets drawn from `pool` (the audit passes the other folds only)."""
    n = shot_sets if shot_sets is not None else cfg.teacher.calibration_shot_sets
    scores = run_scores(cfg, teacher, content_free_prompts(cfg, pool, n, seed), advance)
    ok = [softmax(s) for s in scores if not isinstance(s, Failure)]
    if not ok:
        raise RuntimeError("contextual calibration: the teacher scored none of the content-free prompts "
                           f"({len(scores)} failed); see teacher_accounting.json")
    mean = {lab: sum(p[lab] for p in ok) / len(ok) for lab in cfg.labels}
    z = sum(mean.values())
    return {k: v / z for k, v in mean.items()}
