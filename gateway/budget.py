"""A budget policy's teacher share, held on live traffic.

The budget policy (skill.yaml `routing: {policy: budget, max_teacher_share: x}`, or the gateway's per-skill
override) picks the threshold on the eval set: there it sends at most x of the requests to the teacher. Live
traffic that has moved is less confident, so the same threshold sends more: the flywheel benchmark's refreshed
version, picked for 0.2, sent 0.27 of the shifted stream. A budget is what a user pays for, so the gateway holds
it online, as RouteLLM calibrates its threshold to a target share (Ong et al. 2024, "RouteLLM"): a valid answer
below the published threshold goes to the teacher only when its confidence is also among the weakest x of the
last `window` requests of that version (itself included), and while fewer than x of the last `window` went to
the teacher (a hard cap: right after a shift the window still holds the old traffic). Requests that escalate whatever the threshold (an
invalid answer, no finite confidence) count in the window at minus infinity and use the budget first; when they
alone exceed it, no valid answer escalates (the budget policy's rule on the curve, eval_gates.routing).

The window starts from the eval set's confidences, rebuilt exactly from routing.json's curve (each point keeps
the answers down to its threshold, one distinct confidence per point), so the first request is judged against
the distribution the threshold was picked on, and live requests replace it as they come.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Sequence

NO_SCORE = -math.inf  # an answer that escalates at any threshold (invalid, or no finite confidence)


def live_budget(routing: dict, override) -> float | None:
    """The teacher share to hold on live traffic for a version, or None (no live cap): the budget policy's
    max_teacher_share (the override's, else routing.json's) when the effective policy is budget, the escalation
    mode is threshold and routing.json is a both-lanes profile (version 2)."""
    if override.escalation != "threshold" or routing.get("version") != 2:
        return None
    if override.effective_policy(routing.get("policy")) != "budget":
        return None
    share = override.max_teacher_share if override.max_teacher_share is not None else routing.get("max_teacher_share")
    return float(share) if isinstance(share, (int, float)) and 0.0 <= share <= 1.0 else None


def curve_scores(routing: dict) -> list[float]:
    """The eval set's confidences rebuilt from routing.json's curve: point k keeps `kept` answers, the ones
    with confidence >= its threshold (one distinct confidence per point), so each point adds (kept - previous
    kept) answers at its threshold; the requests no point keeps (invalid answers) are NO_SCORE. [] without a
    curve."""
    points = [p for p in routing.get("curve") or [] if isinstance(p, dict)]
    out: list[float] = []
    prev = 0
    for p in points:
        kept, thr = p.get("kept"), p.get("threshold")
        if not isinstance(kept, int) or kept < prev:
            return []
        if kept > prev and isinstance(thr, (int, float)) and math.isfinite(thr):
            out += [float(thr)] * (kept - prev)
            prev = kept
    n = routing.get("n")
    if isinstance(n, int) and n > len(out):
        out += [NO_SCORE] * (n - len(out))
    return out


def _thin(prior: Sequence[float], window: int) -> list[float]:
    """At most `window` of `prior`, evenly spaced over its sorted values (the same distribution), in a seeded
    shuffled order: live requests push out a random part of it, not its top or its bottom first."""
    import random

    xs = sorted(prior)
    if len(xs) > window:
        xs = [xs[round(i * (len(xs) - 1) / max(window - 1, 1))] for i in range(window)]
    random.Random(0).shuffle(xs)
    return xs


class LiveBudget:
    """The last `window` requests' scores of one version and the share x to hold: `admit(score)`."""

    def __init__(self, share: float, window: int, prior: Sequence[float] = ()):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"max_teacher_share must lie in [0, 1], not {share}")
        if window < 1:
            raise ValueError(f"budget window must be at least 1 request, not {window}")
        self.share, self.window = share, window
        self.scores: deque[float] = deque(_thin(prior, window), maxlen=window)
        self.sent: deque[bool] = deque(maxlen=window)  # whether each of the last live requests went to the teacher
        self.lock = threading.Lock()
        self.held = 0  # valid answers below the threshold kept on the student because of the budget

    def admit(self, score: float, below_threshold: bool) -> bool:
        """Record one request (`score`: its confidence, NO_SCORE when it escalates at any threshold) and say
        whether it may go to the teacher: always for NO_SCORE, never when it is not `below_threshold`, else
        when at most floor(x * len(window)) requests of the window, itself included, score at or below it (so
        ties are kept on the student) and fewer than floor(x * window) of the last `window` live requests went
        to the teacher (so no run of `window` requests sends more than x of them, a sudden shift included).
        O(window) per call."""
        s = score if isinstance(score, (int, float)) and not math.isnan(score) else NO_SCORE
        with self.lock:
            self.scores.append(s)
            if s == NO_SCORE:
                ok = True
            elif not below_threshold:
                ok = False
            else:
                allowed = math.floor(self.share * len(self.scores) + 1e-9)
                # among the weakest `allowed` of the window (itself included), and the budget of the last
                # `window` live requests not spent (a sudden shift: the window still holds the old traffic)
                ok = sum(1 for v in self.scores if v <= s) <= allowed and \
                    sum(self.sent) < math.floor(self.share * self.window + 1e-9)
                self.held += not ok
            self.sent.append(ok)
            return ok


__all__ = ["NO_SCORE", "LiveBudget", "curve_scores", "live_budget"]
