"""Routing profile: when should a request go to the large model instead of the adapter?

Confidence of an answer = mean token log-probability of the answer the adapter wrote, computed
with one teacher-forced forward pass of prompt + answer through the same model. The router keeps
a request when the answer is valid and its confidence is at or above the threshold; otherwise it
escalates. The threshold is the lowest one that holds the error rate on kept requests under the
skill's target on the replayed traffic.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence


def answer_logprobs(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 16,
                    device: str | None = None) -> list[float | None]:
    """Mean log-probability per answer token given its prompt (None for an empty answer), teacher-forced.

    The definition of confidence. The decode path (`teachers.local.LocalModel.complete(...,
    confidence=True)`) reads the same value from the generation's own scores; this is the check."""
    from teachers.local import teacher_forced_logprobs

    return teacher_forced_logprobs(model, tokenizer, prompts, answers, batch_size=batch_size, device=device)


def usable(confidence: float | None) -> bool:
    """A confidence a router can compare with a threshold: a finite number (not None, NaN or +-inf)."""
    return isinstance(confidence, (int, float)) and not isinstance(confidence, bool) and math.isfinite(confidence)


@dataclass
class RoutingProfile:
    target_error_rate: float
    n: int  # replayed requests
    valid: int  # requests with a valid answer (the only ones a router can keep)
    threshold: float | None  # keep when confidence >= threshold; None: escalate everything
    mode: str  # "threshold" | "keep_all_valid" | "escalate_all"
    kept: int
    escalation_rate: float
    kept_error_rate: float | None
    kept_error_rate_upper: float | None  # high end of the exact (Clopper-Pearson) 95% interval: samples are small
    error_rate_without_routing: float | None
    curve: list[dict]  # threshold -> kept share, error rate on kept (for plots and re-tuning)

    def to_dict(self) -> dict:
        return asdict(self)


def routing_threshold(confidences: Sequence[float | None], correct: Sequence[bool], valid: Sequence[bool],
                      target_error_rate: float) -> RoutingProfile:
    """The lowest confidence threshold whose kept requests have an error rate <= target.

    Invalid answers are always escalated (a router detects them), and so are answers without a
    finite confidence (None, NaN, +-inf: a router cannot compare them). Among the rest, sorted by
    confidence, the kept set is the largest top-k (cut only between distinct confidences) whose
    error rate is within the target.

    The published threshold (and every curve threshold) is the exact confidence of the last kept
    answer, never rounded: a router keeping ``confidence >= threshold`` keeps exactly ``kept``
    of these requests (rounding -0.099998 to -0.1 would keep one more).
    """
    n = len(correct)
    items = sorted(((float(c), bool(ok)) for c, ok, v in zip(confidences, correct, valid) if v and usable(c)),
                   key=lambda x: -x[0])
    best_k, curve, wrong = 0, [], 0
    for k, (conf, ok) in enumerate(items, 1):
        wrong += not ok
        if k < len(items) and items[k][0] == conf:
            continue  # ties: a threshold keeps all of them or none
        rate = wrong / k
        curve.append({"threshold": conf, "kept": k, "kept_share": round(k / n, 4), "error_rate": round(rate, 4)})
        if rate <= target_error_rate:
            best_k = k
    if best_k == 0:
        threshold, mode, kept_wrong = None, "escalate_all", 0
    else:
        threshold = items[best_k - 1][0]
        kept_wrong = sum(not ok for _, ok in items[:best_k])
        mode = "keep_all_valid" if best_k == len(items) else "threshold"
    upper = None
    if best_k:
        from scipy.stats import binomtest

        upper = float(binomtest(kept_wrong, best_k).proportion_ci(0.95, method="exact").high)
    return RoutingProfile(
        target_error_rate=target_error_rate, n=n, valid=len(items),
        threshold=threshold, mode=mode, kept=best_k,
        escalation_rate=round(1 - best_k / n, 4) if n else 1.0,
        kept_error_rate=round(kept_wrong / best_k, 4) if best_k else None,
        kept_error_rate_upper=None if upper is None else round(upper, 4),
        error_rate_without_routing=round(1 - sum(ok for ok, v in zip(correct, valid) if v) / n, 4) if n else None,
        curve=curve,
    )


def percentile(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)
