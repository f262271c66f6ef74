"""classification: the input is text; the answer is exactly one of the skill's `labels`."""

from __future__ import annotations

from collections import Counter

from core.records import Example
from core.tasks.base import INVALID, TaskType, label_key, label_of, labels_problems, no_output_schema, register


def classification_metrics(golds: list[str], preds: list[str | None], labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-label recall and precision, invalid rate and confusion matrix
    (gold -> pred -> count) over whole lists; None predictions count as invalid."""
    n = len(golds)
    correct = sum(g == p for g, p in zip(golds, preds))
    confusion: dict[str, Counter] = {lab: Counter() for lab in labels}
    for g, p in zip(golds, preds):
        confusion.setdefault(g, Counter())[p if p is not None else INVALID] += 1
    recall, precision, f1 = {}, {}, {}
    for lab in labels:
        tp = confusion[lab][lab]
        gold_n = sum(confusion[lab].values())
        pred_n = sum(c[lab] for c in confusion.values())
        r = tp / gold_n if gold_n else 0.0
        p = tp / pred_n if pred_n else 0.0
        recall[lab] = round(r, 4)
        precision[lab] = round(p, 4)
        f1[lab] = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "n": n,
        "accuracy": round(correct / n, 4) if n else 0.0,
        "macro_f1": round(sum(f1.values()) / len(labels), 4) if labels else 0.0,
        "invalid_rate": round(sum(p is None for p in preds) / n, 4) if n else 0.0,
        "per_label_recall": recall,
        "per_label_precision": precision,
        "predicted_distribution": dict(Counter(p if p is not None else INVALID for p in preds)),
        "confusion": {g: dict(c) for g, c in confusion.items()},
    }


@register
class Classification(TaskType):
    name, primary = "classification", "accuracy"
    one_label = True
    # A closed label set is scored, not sampled: every answer is a label, with a probability.
    default_answerer = "score"
    answer_tokens = 8  # a label is a few tokens
    teacher_answer_tokens = 8
    answer_format = "label"
    slice_name = "per-label recall"
    scaffold = {
        "instruction": "Classify the input into exactly one of the labels.",
        "input_name": "Input", "output_name": "Label", "labels": ["label_a", "label_b"],
        "floor": {"accuracy": 0.4},
        "example": {"id": "seed-001", "input": "the text to classify", "output": "label_a"},
    }

    @classmethod
    def config_problems(cls, cfg):
        return labels_problems(cfg, required=True) + no_output_schema(cfg)

    # --- prompts and answers -------------------------------------------------------------------------------------

    def format_completion(self, output):
        return f" {output}"

    def parse_output(self, text):
        """The declared label the first line names (case, punctuation and '_' vs ' ' ignored):
        "Billing." and "billing - because ..." give billing; a label buried mid-sentence gives None."""
        text = (text or "").strip().strip("`").strip()
        first = label_key(text.splitlines()[0]) if text else ""
        if not first:
            return None
        for key, label in self._keys():
            if first == key or first.startswith(key + " "):
                return label
        return None

    def _keys(self) -> list[tuple[str, str]]:
        # Longest first: "bug report" before "bug".
        return sorted(((label_key(lab), lab) for lab in self.cfg.labels), key=lambda kv: -len(kv[0]))

    def whole_despite_cut(self, raw):
        # "billing - because the card was ..." cut mid-explanation still names a whole label: the
        # label is followed by more words. A label cut mid-word ("feature_re") is not.
        words = (raw or "").strip().split()
        return len(words) > 1 and self.parse_output(raw) is not None

    def label_of(self, text):
        """The declared label `text` is (Unicode form and case aside: core.text.label_form), or None."""
        return label_of(self.cfg.labels, text)

    def canonical_output(self, output):
        return self.label_of(output) or output

    def output_problem(self, output, input=None):
        labels = self.cfg.labels
        return None if self.label_of(output) is not None else ("not_a_label", f"{output!r} is not one of {labels}")

    def example_problem(self, input, output, kind):
        bad = self.input_problem(input)
        if bad:
            return f"input: {bad[0]}: {bad[1]}"
        return None if self.label_of(output) is not None else \
            f"output {output!r} is not one of the labels {self.cfg.labels}"

    def answer_schema(self, input=None):
        # A JSON string among the labels (a quoted label, which parse_output accepts).
        return {"type": "string", "enum": list(self.cfg.labels)}, True

    def answer_grammar(self, input=None):
        return {"prefix": " ", "choices": list(self.cfg.labels)}

    def cap_answers(self, inputs=()):
        return [self.format_completion(lab) for lab in self.cfg.labels]  # every label, as generated

    # --- teacher -------------------------------------------------------------------------------------------------

    def group_key(self, example):
        return example.output or ""  # new inputs are written in the style of one label's seeds

    def rewrite_hint(self, output):
        return f" The right {self.cfg.output_name.lower()} stays: {output}." if output else ""

    # --- metric --------------------------------------------------------------------------------------------------

    # Gold and prediction are both read as declared labels (label_of): a gold written in NFD and a
    # prediction in NFC, or in another case, are the same label.

    def score(self, example: Example, prediction):
        pred = self.label_of(prediction)
        valid = pred is not None
        return {"accuracy": float(valid and pred == self.label_of(example.output)), "valid": float(valid)}

    def error(self, example, prediction):
        pred = self.label_of(prediction)
        if pred is None:
            return "invalid_output"
        gold = self.canonical_output(example.output or "")
        return None if pred == gold else f"{gold} -> {pred}"

    def slice_of(self, example):
        return self.canonical_output(example.output or "")  # per-label recall: the gold label is the slice

    def aggregate(self, per_item, examples, predictions):
        preds = [self.label_of(p) for p in predictions]
        m = classification_metrics([self.canonical_output(e.output or "") for e in examples], preds, self.cfg.labels)
        m["primary"] = self.primary
        m["slices"] = dict(m["per_label_recall"])
        m["errors"] = self.error_counts(examples, predictions)
        return m
