"""Classification metrics over whole lists (used by the classification plug-in in eval_gates/tasks.py)."""

from __future__ import annotations

from collections import Counter


def classification_metrics(golds: list[str], preds: list[str | None], labels: list[str]) -> dict:
    """Accuracy, macro-F1, per-label recall and precision, invalid rate and confusion matrix (gold -> pred -> count)."""
    n = len(golds)
    correct = sum(g == p for g, p in zip(golds, preds))
    confusion: dict[str, Counter] = {lab: Counter() for lab in labels}
    for g, p in zip(golds, preds):
        confusion.setdefault(g, Counter())[p if p is not None else "<invalid>"] += 1
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
        "predicted_distribution": dict(Counter(p if p is not None else "<invalid>" for p in preds)),
        "confusion": {g: dict(c) for g, c in confusion.items()},
    }
