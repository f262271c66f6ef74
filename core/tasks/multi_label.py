"""multi_label: the input is text; the answer is one or more of the skill's `labels`, written in the
order the skill declares them and joined by ", " (e.g. a ticket that is both `billing, bug`).

The worked example of adding a task type (docs/skills-and-task-types.md, "Adding a task type"): this file is the whole
type. It reuses the `labels` key, answers with the `label` or `self_consistency` answerer (a set of
labels has no single-label probability to `score`), and is scored per item with the example-based
F1 of the predicted and gold label sets (Godbole & Sarawagi 2004, "Discriminative Methods for
Multi-labeled Classification") plus subset accuracy (exact set match) and per-label recall.
"""

from __future__ import annotations

import re
from collections import Counter

from core.tasks.base import TaskType, label_key, label_of, labels_problems, no_output_schema, register

SEPARATOR = ", "


@register
class MultiLabel(TaskType):
    name, primary = "multi_label", "example_f1"
    answer_tokens = 24  # a few labels
    teacher_answer_tokens = 24
    answer_format = "labels"
    slice_name = "per-label recall"
    scaffold = {
        "instruction": "Tag the input with every label that applies (one or more), separated by commas.",
        "input_name": "Input", "output_name": "Labels", "labels": ["label_a", "label_b", "label_c"],
        "floor": {"example_f1": 0.4},
        "example": {"id": "seed-001", "input": "the text to tag", "output": "label_a, label_c"},
    }

    @classmethod
    def config_problems(cls, cfg):
        out = labels_problems(cfg, required=True)
        if any("," in lab for lab in cfg.labels):
            out.append("labels: a multi_label label cannot contain ',' (answers join labels with ', ')")
        return out + no_output_schema(cfg)

    def _set(self, text: str | None) -> list[str] | None:
        """The labels named in `text` (canonical answer or raw model output), in declared order;
        None when an item is not a label or nothing is named. Items are read by `label_key`, the
        classification parser's rule (Unicode form, case, punctuation and '_' vs ' ' aside)."""
        if not text:
            return None
        by_key = {label_key(lab): lab for lab in self.cfg.labels}
        got = set()
        for part in re.split(r"[,;]", text):
            key = label_key(part)
            if not key:
                continue
            if key not in by_key:
                return None
            got.add(by_key[key])
        return [lab for lab in self.cfg.labels if lab in got] or None

    # --- prompts and answers -------------------------------------------------------------------------------------

    def format_completion(self, output):
        return f" {output}"

    def parse_output(self, text):
        text = (text or "").strip().strip("`").strip()
        first = text.splitlines()[0] if text else ""
        labels = self._set(first)
        return SEPARATOR.join(labels) if labels else None

    def canonical_output(self, output):
        # Each item as declared (label_form), order and separators kept: output_problem still judges them.
        parts = output.split(SEPARATOR)
        return SEPARATOR.join(label_of(self.cfg.labels, part) or part for part in parts)

    def output_problem(self, output, input=None):
        labels = self._set(output)
        if labels is None:
            return "not_a_label", f"{output!r} is not one or more of {self.cfg.labels} joined by ', '"
        if SEPARATOR.join(labels) != self.canonical_output(output):  # Unicode form and case of each item aside
            return "not_canonical", f"write the labels once each, in the declared order: {SEPARATOR.join(labels)!r}"
        return None

    def _answer_regex(self) -> str:
        """One to len(labels) labels: a bounded repetition, so a model repeating ", label" under the
        grammar still ends its answer (an unbounded `*` let it write until the token cap)."""
        alternatives = "|".join(re.escape(lab) for lab in self.cfg.labels)
        return f"({alternatives})(, ({alternatives})){{0,{len(self.cfg.labels) - 1}}}"

    def answer_schema(self, input=None):
        return {"type": "string", "pattern": f"^{self._answer_regex()}$"}, False

    def answer_grammar(self, input=None):
        return {"prefix": " ", "regex": self._answer_regex()}

    def cap_answers(self, inputs=()):
        return [" " + SEPARATOR.join(self.cfg.labels)]  # the longest answer: every label once

    def group_key(self, example):
        return example.output or ""  # new inputs in the style of seeds sharing one label set

    # --- metric --------------------------------------------------------------------------------------------------

    def score(self, example, prediction):
        gold = set(self._set(example.output) or ())
        pred = self._set(prediction)
        if pred is None:
            return {"example_f1": 0.0, "subset_accuracy": 0.0, "valid": 0.0}
        tp = len(gold & set(pred))
        f1 = 2 * tp / (len(gold) + len(pred)) if gold or pred else 1.0
        return {"example_f1": f1, "subset_accuracy": float(gold == set(pred)), "valid": 1.0}

    def error(self, example, prediction):
        pred = self._set(prediction)
        if pred is None:
            return "invalid_output"
        gold = set(self._set(example.output) or ())
        missing, extra = sorted(gold - set(pred)), sorted(set(pred) - gold)
        if not missing and not extra:
            return None
        return "missing " + ", ".join(missing) if missing else "extra " + ", ".join(extra)

    def aggregate(self, per_item, examples, predictions):
        out = super().aggregate(per_item, examples, predictions)
        out["invalid_rate"] = round(1 - out.get("valid", 0.0), 4)
        hit, total = Counter(), Counter()
        for ex, p in zip(examples, predictions):
            pred = set(self._set(p) or ())
            for lab in self._set(ex.output) or ():
                total[lab] += 1
                hit[lab] += lab in pred
        out["per_label_recall"] = {lab: round(hit[lab] / total[lab], 4) for lab in self.cfg.labels if total[lab]}
        out["slices"] = dict(out["per_label_recall"])
        return out
