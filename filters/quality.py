"""Cheap per-example checks: lengths, a valid answer, no refusals or chat filler, confidence."""

from __future__ import annotations

import re
from typing import Any, Sequence

from core.records import Example
from core.skills import FilterConfig, SkillConfig
from core.tasks.base import label_of
from filters.base import ExampleFilter
from filters.normalize import words


class QualityFilter(ExampleFilter):
    """Reasons: too_short, too_long, missing_output, output_too_long, refusal, boilerplate, and
    the answer-validity reasons of `core.prompting.validate_output` (not_a_label, invalid_json,
    schema_violation, unknown_function, ...) when a skill config is given."""

    name = "quality"

    def __init__(self, cfg: FilterConfig, skill: SkillConfig | None = None, labels: Sequence[str] | None = None) -> None:
        self.min_words, self.max_words, self.max_chars = cfg.min_input_words, cfg.max_input_words, cfg.max_output_chars
        self.skill = skill
        self.labels = set(labels if labels is not None else (skill.labels if skill else ()))
        self.refusals = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in cfg.refusal_patterns]
        self.boilerplate = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in cfg.boilerplate_patterns]

    def _answer_problem(self, ex: Example) -> tuple[str, dict[str, Any]] | None:
        if self.skill is not None:
            from core import prompting

            if hasattr(prompting, "output_problem"):  # the reason plus a human detail
                bad = prompting.output_problem(self.skill, ex.output, ex.input)
                return (bad[0], {"problem": bad[1], "output": ex.output[:200]}) if bad else None
            reason = prompting.validate_output(self.skill, ex.output, ex.input)
            return (reason, {"output": ex.output[:200]}) if reason else None
        if self.labels and label_of(sorted(self.labels), ex.output) is None:  # Unicode form and case aside
            return "not_a_label", {"output": ex.output, "labels": sorted(self.labels)}
        return None

    def check(self, ex: Example) -> tuple[str, dict[str, Any]] | None:
        n = len(words(ex.input))
        if n < self.min_words:
            return "too_short", {"words": n, "min_input_words": self.min_words}
        if n > self.max_words:
            return "too_long", {"words": n, "max_input_words": self.max_words}
        if ex.output is None or not ex.output.strip():
            return "missing_output", {}
        if len(ex.output) > self.max_chars:
            return "output_too_long", {"chars": len(ex.output), "max_output_chars": self.max_chars}
        for field, text, patterns, reason in (("output", ex.output, self.refusals, "refusal"),
                                              ("input", ex.input, self.boilerplate, "boilerplate"),
                                              ("output", ex.output, self.boilerplate, "boilerplate")):
            for p in patterns:
                if m := p.search(text):
                    return reason, {"field": field, "pattern": p.pattern, "match": m.group(0)}
        return self._answer_problem(ex)


class MinConfidence(ExampleFilter):
    """Drops teacher examples whose confidence (vote agreement) is below a bound; examples
    without a confidence (human, traffic) pass."""

    name = "confidence"

    def __init__(self, min_confidence: float) -> None:
        self.min_confidence = min_confidence

    def check(self, ex: Example) -> tuple[str, dict[str, Any]] | None:
        if ex.confidence is not None and ex.confidence < self.min_confidence:
            return "low_confidence", {"confidence": ex.confidence, "min_confidence": self.min_confidence}
        return None


class FitsMaxLength(ExampleFilter):
    """Drops an example the trainer could not fit into `student.train.max_length` tokens with its
    whole answer and end token, even with its input cut (reason too_long): the same rule and the
    same tokenizer as trainers.qlora.fit_to_max_length, so the filter report and the train record
    agree. An example that fits once its input is cut passes (the trainer cuts it)."""

    name = "max_length"

    def __init__(self, skill: SkillConfig, tokenizer) -> None:
        self.skill, self.tokenizer = skill, tokenizer
        self.max_length = skill.student.train.max_length

    @classmethod
    def for_student(cls, skill: SkillConfig) -> "FitsMaxLength":
        from trainers.base_model import load_tokenizer, resolve_model

        return cls(skill, load_tokenizer(resolve_model(skill.student.base_model, "student.base_model")))

    def check(self, ex: Example) -> tuple[str, dict[str, Any]] | None:
        from trainers.qlora import fit_to_max_length

        if ex.output is None:
            return None
        fitted = fit_to_max_length(self.skill, self.tokenizer, [ex], self.max_length)
        if fitted.too_long:
            return "too_long", {"tokens": fitted.too_long[0]["tokens"], "max_length": self.max_length,
                                "key": "student.train.max_length"}
        return None
