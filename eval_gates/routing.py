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


# --- both lanes: the served-quality curve and the routing policies ------------------------------------------------
#
# Each item is answered by both lanes (the student, and the teacher with the option its audit chose). Cutting
# the student's valid answers at a confidence threshold keeps the top k and escalates the rest (invalid answers
# and answers without a finite confidence always escalate). The served answer of an escalated item is the
# teacher's; where the teacher gave none, the gateway serves the student's valid answer (lane "degraded"), so
# the curve does too. A policy picks one point of that curve.

SIGNALS = ("mean_logprob", "min_logprob", "mean_grammar_logprob", "min_grammar_logprob", "min_margin")
SIGNAL_HELP = {
    "mean_logprob": "mean natural-log probability of the answer's tokens (the model's own, before any grammar mask)",
    "min_logprob": "least natural-log probability among the answer's tokens (the model's own)",
    "mean_grammar_logprob": "mean log-probability of the answer's tokens renormalised over the tokens the grammar "
                            "allowed at each step",
    "min_grammar_logprob": "least log-probability among the answer's tokens renormalised over the tokens the grammar "
                           "allowed: the least certain choice the grammar left open (for a label set, about the "
                           "chosen label's probability among the labels)",
    "min_margin": "least margin, over the answer's open choices, of the chosen token's log-probability over the "
                  "runner-up's among the tokens the grammar allowed (top-1 minus top-2: Scheffer et al. 2001)",
}
DEFAULT_SIGNAL = "mean_logprob"


@dataclass
class LaneItem:
    """One item as both lanes answered it. `student`/`teacher`: the skill's primary metric of each lane's
    answer in [0, 1] (teacher None: the teacher gave no answer); `valid`: the student's answer parses and
    passes the task's checks; `signal`: the student's confidence under the chosen signal."""

    signal: float | None
    valid: bool
    student: float
    teacher: float | None
    student_correct: bool = False
    set: str = "eval"


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """One-sided exact (Clopper-Pearson) upper bound at `level` of a proportion with k successes of n."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(level, k + 1, n - k))


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) of per-item scores in [0, 1]: exact Clopper-Pearson for pass/fail scores, else a
    normal interval on the mean (clipped to [0, 1]). (None, None, None) for no items."""
    return _interval(sum(values), sum(v * v for v in values), len(values),
                     all(v in (0.0, 1.0) for v in values), level)


def _interval(total: float, sq: float, n: int, pass_fail: bool, level: float):
    if not n:
        return None, None, None
    m = total / n
    if pass_fail:
        from eval_gates.stats import clopper_pearson

        lo, hi = clopper_pearson(int(round(total)), n, level)
    else:
        from scipy.stats import norm

        sd = max(sq / n - m * m, 0.0) ** 0.5 * (n / max(n - 1, 1)) ** 0.5
        z = float(norm.ppf(0.5 + level / 2))
        lo, hi = max(0.0, m - z * sd / n ** 0.5), min(1.0, m + z * sd / n ** 0.5)
    return round(m, 4), round(lo, 4), round(hi, 4)


def _served_teacher(it: LaneItem) -> float:
    """What is served when this item escalates: the teacher's answer, else (no teacher answer) the student's
    valid answer as the gateway's degraded lane does, else nothing (0)."""
    if it.teacher is not None:
        return it.teacher
    return it.student if it.valid else 0.0


def served_curve(items: Sequence[LaneItem], level: float = 0.95) -> dict:
    """The served-quality curve over every threshold on the student's confidence.

    Returns {"n", "points": [...], "student_alone", "teacher_alone"}. Point k keeps the k most confident
    valid answers (k = 0: every request escalates; cuts only between distinct confidences) with keys
    threshold (keep when confidence >= it; None at k = 0), kept, teacher_share, served (mean primary metric
    of the served answers) with served_low/served_high, kept_errors (kept answers the task counts wrong),
    kept_error_upper (one-sided exact bound at `level`), teacher_wins/student_wins (escalated valid items
    where the teacher scored higher / lower than the student), p_teacher_better (one-sided exact sign test
    on those pairs) and p_teacher_better_fw (the same question with the search over cuts accounted for:
    `family_wise_p`). Each lane alone is measured on every item."""
    from scipy.stats import binomtest

    n = len(items)
    # Invalid answers always escalate; a valid answer without a finite confidence escalates at every threshold,
    # and is kept only at the last point, "keep every valid answer" (what the gateway does in that mode).
    ranked = sorted((it for it in items if it.valid and usable(it.signal)), key=lambda it: -float(it.signal))
    unscored = [it for it in items if it.valid and not usable(it.signal)]
    pass_fail = all(v in (0.0, 1.0) for it in items for v in (it.student, _served_teacher(it)))
    # Running sums: served = kept students + escalated teachers, updated as each answer moves to the kept side.
    total = sum(_served_teacher(it) for it in items)
    sq = sum(_served_teacher(it) ** 2 for it in items)
    wins = sum(_served_teacher(it) > it.student for it in ranked + unscored)
    losses = sum(_served_teacher(it) < it.student for it in ranked + unscored)
    kept_errors = 0

    def keep(it: LaneItem) -> None:
        """Move one answer from the escalated side to the kept side of the running sums."""
        nonlocal total, sq, kept_errors, wins, losses
        t = _served_teacher(it)
        total += it.student - t
        sq += it.student ** 2 - t ** 2
        kept_errors += not it.student_correct
        wins -= t > it.student
        losses -= t < it.student

    points = []
    for k in range(0, len(ranked) + 1):
        if k:
            keep(ranked[k - 1])
            if k < len(ranked) and float(ranked[k].signal) == float(ranked[k - 1].signal):
                continue  # ties: a threshold keeps all of them or none
        kept = k
        if k == len(ranked) and unscored:  # keep every valid answer
            for it in unscored:
                keep(it)
            kept += len(unscored)
        m, lo, hi = _interval(total, sq, n, pass_fail, level)
        p = float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue) if wins + losses else 1.0
        points.append({
            "threshold": float(ranked[k - 1].signal) if k else None, "kept": kept,
            "teacher_share": round((n - kept) / n, 4) if n else 1.0,
            "served": m, "served_low": lo, "served_high": hi,
            "kept_errors": kept_errors, "kept_error_rate": round(kept_errors / kept, 4) if kept else None,
            "kept_error_upper": round(upper_bound(kept_errors, kept, level), 4) if kept else None,
            "teacher_wins": wins, "student_wins": losses, "p_teacher_better": round(p, 5),
        })
    order = ranked + unscored  # point k escalates the valid answers order[kept:]
    fw = family_wise_p([_served_teacher(it) - it.student for it in order], [p["kept"] for p in points])
    for p, q in zip(points, fw):
        p["p_teacher_better_fw"] = q
    alone = {}
    for name, vals in (("student_alone", [it.student if it.valid else 0.0 for it in items]),
                       ("teacher_alone", [it.teacher if it.teacher is not None else 0.0 for it in items])):
        m, lo, hi = mean_interval(vals, level)
        alone[name] = {"served": m, "served_low": lo, "served_high": hi, "n": len(vals)}
    alone["teacher_alone"]["answered"] = sum(it.teacher is not None for it in items)
    return {"n": n, "valid": len(ranked) + len(unscored), "points": points, **alone}


FW_RESAMPLES = 2000  # sign-flip resamples: the adjusted p's Monte Carlo error is about 0.005 at p = 0.05


def family_wise_p(diffs: Sequence[float], starts: Sequence[int], resamples: int = FW_RESAMPLES,
                  seed: int = 0) -> list[float]:
    """Family-wise adjusted p-values for "the teacher is better on the escalated answers", one per cut.

    diffs: per valid answer in keep order (most confident first), teacher score minus student score (only its
    sign counts); starts: per cut, how many answers it keeps (it escalates diffs[start:]). The per-cut sign test
    asks one question per cut, but the routing policy looks at every cut and takes the best, so a cut whose own
    p is 0.04 may be the luck of having looked at thirty. This is the single-step maxT procedure of Westfall &
    Young (1993, "Resampling-Based Multiple Testing", ch. 2) under the sign test's own null (on each answer where
    the lanes differ, either is equally likely the better): the statistic of a cut is (wins - losses) /
    sqrt(wins + losses) over its escalated answers, the null distribution of the *largest* statistic over all
    cuts comes from `resamples` seeded random sign flips, and a cut's adjusted p is the share of flips whose
    largest statistic reaches the cut's own. It controls the chance of escalating to a teacher that is no
    better anywhere at the nominal level, and unlike Bonferroni it pays little for the cuts being nested (their
    statistics move together). Returns one p in (0, 1] per start (1.0 where nothing escalated differs);
    deterministic for a seed. Work: resamples x (answers where the lanes differ), in chunks of about 16 MB.
    Raises ValueError for a start outside 0..len(diffs)."""
    import numpy as np

    n = len(diffs)
    if any(not 0 <= k <= n for k in starts):
        raise ValueError(f"family_wise_p: starts must lie in 0..{n}")
    d = np.sign(np.asarray(diffs, dtype=float))
    nz = np.flatnonzero(d)  # only the answers where the lanes differ move a statistic
    m = len(nz)
    # a cut keeping k answers escalates the differing answers nz[first[k]:]
    first = np.searchsorted(nz, np.asarray(list(starts), dtype=int))
    cnt = (m - first).astype(float)
    net = np.concatenate([np.cumsum(d[nz][::-1])[::-1], [0.0]])[first]
    tested = cnt > 0
    if not tested.any():
        return [1.0] * len(first)
    observed = np.where(tested, net / np.sqrt(np.maximum(cnt, 1.0)), -np.inf)
    ft, scale = first[tested], np.sqrt(cnt[tested])
    rng = np.random.default_rng(seed)
    largest = np.empty(resamples)
    chunk = max(1, min(resamples, (1 << 22) // max(m, 1)))  # about 16 MB of float32 at a time, whatever m is
    for lo in range(0, resamples, chunk):
        flips = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(min(chunk, resamples - lo), m))
        suffix = np.concatenate([np.cumsum(flips[:, ::-1], axis=1)[:, ::-1],
                                 np.zeros((len(flips), 1), dtype=np.float32)], axis=1)
        largest[lo:lo + len(flips)] = (suffix[:, ft] / scale).max(axis=1)
    out = []
    for t, obs in zip(tested, observed):
        out.append(round(float((1 + np.sum(largest >= obs - 1e-6)) / (resamples + 1)), 5) if t else 1.0)
    return out


def min_items_to_certify(target_error: float, level: float = 0.95) -> int:
    """Fewest kept answers, all right, whose one-sided exact upper bound on the error is <= target_error:
    the smallest m with (1 - target_error)^m <= 1 - level (59 for 0.05 at 95%)."""
    return max(1, math.ceil(math.log(1 - level) / math.log(1 - target_error)))


def choose_point(curve: dict, policy: str, *, max_teacher_share: float = 0.2, target_error_rate: float = 0.05,
                 significance: float = 0.05, fallback: str = "quality", level: float = 0.95) -> dict:
    """The point of `served_curve`'s curve a routing policy picks.

    quality: among the points whose escalated valid answers the teacher is measured better on (sign test on
      the items where the lanes differ, p <= significance with the search over every cut accounted for:
      p_teacher_better_fw, `family_wise_p`; a curve written before it has the per-cut p only; keeping every
      valid answer always qualifies), the highest served quality, and among equal ones the fewest teacher calls.
    budget: the highest served quality with at most max_teacher_share of requests sent to the teacher (fewest
      teacher calls on ties); when invalid answers alone exceed the budget, every valid answer is kept.
    target_error: the most answers kept whose one-sided exact (Clopper-Pearson) bound on the kept error rate
      is <= target_error_rate; when no cut can be certified (too few items), `fallback`'s point, said so.
    Whatever the policy, a teacher that was not measured (no answer on any item) or that is measured worse than
    the student on the answers the point would escalate (more items where the student is right and it is not
    than the reverse) takes no valid answer: every valid answer is kept, and the reason says so.
    Bounds are compared exact (counts, not the rounded values shown in the curve).
    Returns {"policy", "point", "mode", "reason", "certified" (target_error only)}. Raises ValueError for an
    unknown policy or a curve without points."""
    points = curve.get("points") or []
    if not points:
        raise ValueError("routing curve has no points")
    n = curve.get("n") or 0
    keep_all = points[-1]

    def served(p):
        return p["served"] or 0.0

    if policy == "quality":
        def p_better(p):
            return p.get("p_teacher_better_fw", p["p_teacher_better"])

        ok = [p for p in points if p is keep_all or p_better(p) <= significance]
        best = max(served(p) for p in ok)
        pt = max((p for p in ok if served(p) >= best - 1e-12), key=lambda p: p["kept"])
        unproven = [p for p in points if served(p) > best + 1e-12]
        reason = f"highest served quality {best:.4f} with the fewest teacher calls"
        if pt is keep_all:
            reason += ": escalating no valid answer serves measurably better"
        if unproven:
            q = max(unproven, key=served)
            reason += (f" (a cut serving {served(q):.4f} escalates answers the teacher is not measured better on: "
                       f"teacher better {q['teacher_wins']}, student {q['student_wins']}, p={q['p_teacher_better']:.3g}"
                       f", {p_better(q):.3g} with every cut tried counted > significance {significance})")
        out = {"policy": "quality", "point": pt, "reason": reason}
    elif policy == "budget":
        within = [p for p in points if n - p["kept"] <= max_teacher_share * n + 1e-9]
        if not within:
            out = {"policy": "budget", "point": keep_all,
                   "reason": f"invalid answers alone are {keep_all['teacher_share']:.3f} of requests, above "
                             f"max_teacher_share {max_teacher_share}: every valid answer is kept"}
        else:
            best = max(served(p) for p in within)
            pt = max((p for p in within if served(p) >= best - 1e-12), key=lambda p: p["kept"])
            out = {"policy": "budget", "point": pt,
                   "reason": f"highest served quality {best:.4f} within teacher share {max_teacher_share}"}
    elif policy == "target_error":
        ok = [p for p in points if p["kept"] and upper_bound(p["kept_errors"], p["kept"], level) <= target_error_rate]
        if ok:
            pt = max(ok, key=lambda p: p["kept"])
            out = {"policy": "target_error", "point": pt, "certified": True,
                   "reason": f"kept error {pt['kept_error_rate']:.4f}, one-sided {level:.0%} exact bound "
                             f"{upper_bound(pt['kept_errors'], pt['kept'], level):.4f} <= target {target_error_rate}"}
        else:
            fb = choose_point(curve, fallback, max_teacher_share=max_teacher_share, significance=significance,
                              level=level) if fallback != "target_error" else {"point": keep_all, "reason": ""}
            need = min_items_to_certify(target_error_rate, level)
            out = {"policy": "target_error", "point": fb["point"], "certified": False, "fallback": fallback,
                   "reason": f"target error {target_error_rate} cannot be certified on {n} items (no "
                             f"kept set has a one-sided {level:.0%} exact bound within it; that needs at least "
                             f"{need} kept answers, all right): fell back to the {fallback} policy ({fb['reason']})"}
    else:
        raise ValueError(f"routing.policy {policy!r}: use quality, budget or target_error")
    pt = out["point"]
    if pt is not keep_all:
        if (curve.get("teacher_alone") or {}).get("answered") == 0:
            out["point"], out["reason"] = keep_all, out["reason"] + "; but the teacher lane was not measured (it " \
                "answered none of the items): no valid answer is escalated to it"
        elif pt["student_wins"] > pt["teacher_wins"]:
            out["point"], out["reason"] = keep_all, out["reason"] + (
                f"; but the teacher is measured worse than the student on the answers it would take (student better "
                f"on {pt['student_wins']}, teacher on {pt['teacher_wins']}): every valid answer is kept")
    pt = out["point"]
    out["mode"] = "escalate_all" if pt["kept"] == 0 else "keep_all_valid" if pt is keep_all else "threshold"
    return out


def share_rule_point(curve: dict, target_share: float) -> dict:
    """RouteLLM's rule (Ong et al. 2024, "RouteLLM: Learning to Route LLMs with Preference Data", sec. 5):
    calibrate the threshold so that `target_share` of requests goes to the strong model, whatever the quality.
    The point whose teacher share is closest to the target from above (the cut that escalates at least it)."""
    pts = curve["points"]
    above = [p for p in pts if p["teacher_share"] >= target_share - 1e-12]
    return max(above, key=lambda p: p["kept"]) if above else pts[0]


def legacy_point(curve: dict, target_error_rate: float) -> dict:
    """The rule before both lanes were measured: the most answers kept whose point estimate of the kept error
    is <= target_error_rate (no bound, blind to the teacher); every valid answer escalates when none is."""
    ok = [p for p in curve["points"] if p["kept"] and p["kept_error_rate"] is not None
          and p["kept_error_rate"] <= target_error_rate + 1e-12]
    return max(ok, key=lambda p: p["kept"]) if ok else curve["points"][0]


def evaluate_point(items: Sequence[LaneItem], threshold: float | None, kept_all: bool = False) -> dict:
    """Served quality and teacher share of a threshold applied to other items (held-out measurement):
    keep valid answers with a usable confidence >= threshold (`threshold` None: keep none unless `kept_all`)."""
    served, esc = [], 0
    for it in items:
        keep = it.valid and (kept_all or (usable(it.signal) and threshold is not None and float(it.signal) >= threshold))
        if keep:
            served.append(it.student)
        else:
            esc += 1
            served.append(_served_teacher(it))
    m, lo, hi = mean_interval(served)
    return {"served": m, "served_low": lo, "served_high": hi, "teacher_share": round(esc / len(items), 4) if items else None,
            "n": len(items)}


# --- which confidence separates right from wrong ------------------------------------------------------------------


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve of `scores` ranking positives above negatives (ties count half); None when
    either class is empty. The Mann-Whitney U statistic divided by n_pos * n_neg."""
    from scipy.stats import rankdata

    pos = sum(bool(p) for p in positives)
    neg = len(positives) - pos
    if not pos or not neg:
        return None
    ranks = rankdata(list(scores))
    r_pos = sum(r for r, p in zip(ranks, positives) if p)
    return round(float((r_pos - pos * (pos + 1) / 2) / (pos * neg)), 4)


def _platt(x, y):
    """Logistic fit p = sigmoid(a x + b) by maximum likelihood (Platt 1999), a tiny ridge keeping it finite
    on separable data. Returns (a, b)."""
    import numpy as np
    from scipy.optimize import minimize

    x, y = np.asarray(x, float), np.asarray(y, float)
    mu, sd = x.mean(), x.std() or 1.0
    z = (x - mu) / sd

    def nll(w):
        t = w[0] * z + w[1]
        return float(np.sum(np.logaddexp(0, t) - y * t) + 1e-3 * w[0] ** 2)

    w = minimize(nll, [1.0, 0.0], method="L-BFGS-B").x
    return w[0] / sd, w[1] - w[0] * mu / sd


def calibration_error(scores: Sequence[float], positives: Sequence[bool], bins: int = 10) -> float | None:
    """Expected calibration error (Naeini et al. 2015; Guo et al. 2017) of a two-fold cross-fitted Platt map
    from the signal to P(right): each half is mapped by the fit on the other half, so the error is measured on
    held-out items. Equal-width probability bins. None with fewer than 10 items or one class in a half."""
    import numpy as np

    x, y = np.asarray(scores, float), np.asarray([bool(p) for p in positives], float)
    n = len(x)
    if n < 10 or y.min() == y.max():
        return None
    idx = np.arange(n)
    halves = [idx[idx % 2 == 0], idx[idx % 2 == 1]]
    prob = np.zeros(n)
    for fit, held in ((halves[0], halves[1]), (halves[1], halves[0])):
        if y[fit].min() == y[fit].max():
            return None
        a, b = _platt(x[fit], y[fit])
        prob[held] = 1 / (1 + np.exp(-(a * x[held] + b)))
    which = np.minimum((prob * bins).astype(int), bins - 1)
    ece = sum(abs(prob[which == j].mean() - y[which == j].mean()) * (which == j).sum() for j in range(bins)
              if (which == j).any()) / n
    return round(float(ece), 4)


def compare_signals(signals: Sequence[dict | None], correct: Sequence[bool], valid: Sequence[bool]) -> dict:
    """How well each candidate signal separates right from wrong valid answers: {signal: {"n", "auroc",
    "calibration_error"}} over the items where that signal is finite. `signals`: one dict per item
    (SIGNALS -> value, or None)."""
    out = {}
    for name in SIGNALS:
        xs, ys = [], []
        for s, ok, v in zip(signals, correct, valid):
            x = (s or {}).get(name)
            if v and usable(x):
                xs.append(float(x))
                ys.append(bool(ok))
        out[name] = {"n": len(xs), "auroc": auroc(xs, ys) if xs else None,
                     "calibration_error": calibration_error(xs, ys) if xs else None}
    return out


def pick_signal(comparison: dict, configured: str = "auto") -> tuple[str, str]:
    """(signal, why): the configured one, or for auto the highest AUROC (ties and unmeasurable -> the default,
    mean_logprob; a signal measured on fewer items than the default is not preferred)."""
    if configured != "auto":
        if (comparison.get(configured) or {}).get("n"):
            return configured, f"routing.signal is {configured}"
        return DEFAULT_SIGNAL, f"routing.signal {configured} is not available from this model's decode: {DEFAULT_SIGNAL}"
    base = comparison.get(DEFAULT_SIGNAL) or {}
    best, why = DEFAULT_SIGNAL, "default (no signal separates better)"
    top = base.get("auroc")
    for name in SIGNALS:
        c = comparison.get(name) or {}
        if c.get("auroc") is None or (top is not None and c["auroc"] <= top) or c["n"] < base.get("n", 0):
            continue
        best, top, why = name, c["auroc"], f"highest AUROC {c['auroc']:.3f} (mean_logprob {base.get('auroc')})"
    return best, why
