"""Expansion strategies: new inputs in the style of the seeds, then labels from the
teacher prompted with few-shot seeds. Plain functions; flows/ wraps them in tasks.
"""

from __future__ import annotations

import random
from typing import Callable, Protocol, Sequence

from core.prompting import format_prompt, parse_output
from core.records import Example, Rejected, content_id
from core.skills import Skill
from teachers.local import Completion


class Teacher(Protocol):
    name: str

    def complete(self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0,
                 batch_size: int = 16, seed: int = 0, stop_at_newline: bool = True,
                 progress: Callable[[int], None] | None = None) -> list[Completion]: ...


def _by_label(seeds: list[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = {}
    for s in seeds:
        groups.setdefault(s.output or "", []).append(s)
    return groups


def style_prompt(skill: Skill, shots: Sequence[Example]) -> str:
    name = skill.config.input_name
    lines = [f"Real examples of the {name.lower()}s we receive, one per line:", ""]
    lines += [f"{name}: {' '.join(s.input.split())}" for s in shots]
    return "\n".join(lines) + f"\n{name}:"


def new_inputs(skill: Skill, teacher: Teacher, n: int, seed: int = 0,
               progress: Callable[[int], None] | None = None) -> tuple[list[Example], list[Rejected]]:
    """Self-instruct: show seed inputs of one label, sample one more input.

    Shots for each prompt come from a single label, cycling through the labels, so
    the new inputs cover every label instead of the teacher's favourite.
    """
    cfg = skill.config.teacher
    rng = random.Random(seed)
    groups = _by_label(skill.seeds)
    labels = sorted(groups)
    prompts, parents = [], []
    for i in range(n):
        pool = groups[labels[i % len(labels)]]
        shots = rng.sample(pool, min(cfg.style_shots, len(pool)))
        prompts.append(style_prompt(skill, shots))
        parents.append(shots)
    completions = teacher.complete(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                   batch_size=cfg.batch_size, seed=seed, progress=progress)
    kept: list[Example] = []
    rejected: list[Rejected] = []
    for shots, c in zip(parents, completions):
        text = " ".join(c.text.split())
        ex = Example(
            id=content_id(skill.name, text), skill=skill.name, input=text, output=None, source="teacher",
            teacher=teacher.name, parent_ids=[s.id for s in shots],
            meta={"strategy": "self_instruct", "seed_label": shots[0].output, "input_tokens": c.completion_tokens,
                  "prompt_tokens": c.prompt_tokens},
        )
        if c.finish_reason == "length":
            rejected.append(Rejected(ex, "generate_inputs", "truncated", {"max_new_tokens": cfg.max_new_tokens}))
        elif not text:
            rejected.append(Rejected(ex, "generate_inputs", "empty_generation"))
        else:
            kept.append(ex)
    return kept, rejected


def balanced_shots(seeds: list[Example], k: int, rng: random.Random) -> list[Example]:
    """k seeds spread evenly over the labels, in random order."""
    groups = {lab: rng.sample(xs, len(xs)) for lab, xs in _by_label(seeds).items()}
    shots: list[Example] = []
    while len(shots) < min(k, len(seeds)):
        for lab in sorted(groups):
            if groups[lab] and len(shots) < k:
                shots.append(groups[lab].pop())
    rng.shuffle(shots)
    return shots


def label_inputs(skill: Skill, teacher: Teacher, examples: list[Example], seed: int = 0,
                 progress: Callable[[int], None] | None = None) -> tuple[list[Example], list[Rejected]]:
    """The teacher answers each input, prompted with few-shot seeds; unparseable answers are dropped."""
    cfg = skill.config
    rng = random.Random(seed + 1)
    prompts, shot_ids = [], []
    for ex in examples:
        shots = balanced_shots(skill.seeds, cfg.teacher.few_shot, rng)
        prompts.append(format_prompt(cfg, ex.input, [(s.input, s.output) for s in shots]))
        shot_ids.append([s.id for s in shots])
    completions = teacher.complete(prompts, max_new_tokens=8, temperature=0.0,
                                   batch_size=cfg.teacher.batch_size, seed=seed, progress=progress)
    kept: list[Example] = []
    rejected: list[Rejected] = []
    for ex, ids, c in zip(examples, shot_ids, completions):
        answer = parse_output(cfg, c.text)
        labeled = Example(
            id=content_id(skill.name, ex.input, answer), skill=ex.skill, input=ex.input, output=answer,
            source="teacher", teacher=teacher.name, parent_ids=list(dict.fromkeys(ex.parent_ids + ids)),
            confidence=None, created_at=ex.created_at,
            meta={**ex.meta, "raw_answer": c.text, "label_prompt_tokens": c.prompt_tokens},
        )
        if answer is None:
            rejected.append(Rejected(labeled, "label", "unparseable_answer", {"raw": c.text[:200]}))
        else:
            kept.append(labeled)
    return kept, rejected
