"""Paired confidence intervals on (candidate - champion) over the same items."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np


@dataclass
class PairedInterval:
    method: str  # "mcnemar" (exact, conditional on the discordant pairs) or "bootstrap" (BCa, paired)
    n: int
    candidate_mean: float
    champion_mean: float
    diff: float
    lower: float
    upper: float
    confidence: float
    p_value: float | None = None  # exact McNemar test of "no difference" (pass/fail metrics only)
    candidate_only: int | None = None  # items only the candidate got right (McNemar b)
    champion_only: int | None = None  # items only the champion got right (McNemar c)

    def to_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """Exact two-sided interval for a binomial proportion k/n (Clopper and Pearson 1934); (None, None) when n == 0."""
    if n == 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(level, method="exact")
    return float(ci.low), float(ci.high)


def is_pass_fail(*series: Sequence[float]) -> bool:
    return all(float(x) in (0.0, 1.0) for s in series for x in s)


def paired_interval(candidate: Sequence[float], champion: Sequence[float], *, method: str = "auto",
                    confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> PairedInterval:
    """Two-sided interval on mean(candidate) - mean(champion), items paired by position."""
    c = np.asarray(candidate, dtype=float)
    p = np.asarray(champion, dtype=float)
    if c.shape != p.shape or c.ndim != 1:
        raise ValueError(f"paired series must have the same length ({c.shape} vs {p.shape})")
    n = len(c)
    if n == 0:
        raise ValueError("no paired items to compare")
    if method == "auto":
        method = "mcnemar" if is_pass_fail(c, p) else "bootstrap"
    if method == "mcnemar":
        if not is_pass_fail(c, p):
            raise ValueError("mcnemar needs pass/fail (0/1) item scores; use ci_method bootstrap")
        return _mcnemar(c, p, confidence)
    if method != "bootstrap":
        raise ValueError(f"unknown interval method {method!r}; use auto, bootstrap or mcnemar")
    return _bootstrap(c, p, confidence, resamples, seed)


def _mcnemar(c: np.ndarray, p: np.ndarray, confidence: float) -> PairedInterval:
    """Exact McNemar: conditional on the d discordant pairs, b (candidate-only wins) ~ Binomial(d, pi),
    and the difference in accuracy is (2 pi - 1) d / n; the Clopper-Pearson interval on pi maps to it."""
    from scipy.stats import binomtest

    n = len(c)
    b = int(((c == 1) & (p == 0)).sum())
    k = int(((c == 0) & (p == 1)).sum())
    d = b + k
    diff = (b - k) / n
    if d == 0:
        lo = hi = 0.0
        pval = 1.0
    else:
        test = binomtest(b, d, 0.5)
        ci = test.proportion_ci(confidence_level=confidence, method="exact")
        lo, hi = (2 * ci.low - 1) * d / n, (2 * ci.high - 1) * d / n
        pval = float(test.pvalue)
    return PairedInterval("mcnemar", n, float(c.mean()), float(p.mean()), diff, float(lo), float(hi), confidence,
                          pval, b, k)


def _bootstrap(c: np.ndarray, p: np.ndarray, confidence: float, resamples: int, seed: int) -> PairedInterval:
    from scipy.stats import bootstrap

    d = c - p
    diff = float(d.mean())
    if np.all(d == d[0]) or len(d) < 2:  # degenerate: every resample gives the same mean
        lo = hi = diff
    else:
        res = bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=confidence, method="BCa",
                        rng=np.random.default_rng(seed), vectorized=True)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (np.isfinite(lo) and np.isfinite(hi)):  # BCa can fail on very skewed data
            res = bootstrap((d,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
                            rng=np.random.default_rng(seed), vectorized=True)
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return PairedInterval("bootstrap", len(c), float(c.mean()), float(p.mean()), diff, lo, hi, confidence)
