"""Gates and the promote/reject decision. Every decision carries its reasons and its data.

A gate never raises: a gate that cannot run (no eval items, empty traffic, a crash in scoring,
a champion that could not be evaluated) fails closed with the reason, so nothing is promoted.

Inputs are the metric dicts `evaluate_candidate` produces (per role: "eval" and "replay"), each
with `item_scores` ({"metric", "ids", "values"}) for the paired comparison, `data` (item counts,
hashes) and `error` when it could not be measured.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from core.skills import GateConfig
from core.text import label_form
from eval_gates.stats import paired_interval

log = logging.getLogger("distill")


@dataclass
class Check:
    name: str  # e.g. "floor:accuracy", "paired:accuracy", "slice_drop:billing", "agreement"
    value: float | None
    bound: float | None
    op: str  # ">=" or "<=": value op bound must hold
    passed: bool
    reason: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class GateResult:
    name: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    candidate: dict = field(default_factory=dict)
    champion: dict | None = None
    checks: list[Check] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # what it ran on: item counts, hashes of eval set / replay sample

    def check(self, name: str, value: float | None, bound: float | None, op: str, reason_ok: str, reason_bad: str,
              **detail) -> bool:
        ok = value is not None and bound is not None and (value >= bound if op == ">=" else value <= bound)
        reason = reason_ok if ok else reason_bad
        self.checks.append(Check(name, None if value is None else round(float(value), 5), bound, op, ok, reason, detail))
        self.reasons.append(reason)
        self.passed = self.passed and ok
        return ok

    def fail(self, name: str, reason: str) -> None:
        self.checks.append(Check(name, None, None, "", False, reason))
        self.reasons.append(reason)
        self.passed = False


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    gates: list[GateResult]

    def to_dict(self) -> dict:
        d = asdict(self)
        for g in d["gates"]:  # per-item series are in the run folder; the record keeps the numbers
            for role in ("candidate", "champion"):
                if isinstance(g.get(role), dict):
                    g[role] = {k: v for k, v in g[role].items() if k != "item_scores"}
        return d


def _cannot_run(gate: GateResult, check: str, label: str, cand: dict, empty: str) -> bool:
    """Fail closed: scoring crashed, or there was nothing to score."""
    if cand.get("error"):
        gate.fail(check, f"{label} cannot run: {cand['error']}")
        return True
    if not cand.get("n"):
        gate.fail(check, f"{label} cannot run: {empty}")
        return True
    return False


def _slices_for(keys: dict[str, float], available: list[str]) -> dict[str, float]:
    """Expand '*' to every slice; explicit entries win. A key names the slice it equals by
    `core.text.label_form` (a label written in NFD in gates.slice_floor, NFC in skill.yaml)."""
    out = {s: keys["*"] for s in available} if "*" in keys else {}
    by_form = {label_form(s): s for s in available}
    out.update({(k if k in available else by_form.get(label_form(k), k)): v for k, v in keys.items() if k != "*"})
    return out


# Fewer paired items than this and no interval means anything (one item gives a zero-width one):
# the comparison with production fails closed. GateConfig.min_paired_items overrides it.
MIN_PAIRED_ITEMS = 20


def min_paired_items(cfg: GateConfig) -> int:
    """gates.min_paired_items (default MIN_PAIRED_ITEMS); at least 1."""
    value = getattr(cfg, "min_paired_items", None)
    return max(1, int(value)) if isinstance(value, int) and not isinstance(value, bool) else MIN_PAIRED_ITEMS


def _too_few(gate: GateResult, cfg: GateConfig, metric: str, n: int) -> bool:
    """Fail closed when the comparison with production rests on fewer than min_paired_items items."""
    need = min_paired_items(cfg)
    if n >= need:
        return False
    gate.checks.append(Check(f"paired:{metric}", float(n), float(need), ">=", False,
                             f"{metric}: only {n} paired item(s) with production, fewer than gates.min_paired_items="
                             f"{need}: an interval on so few items says nothing, so the candidate is not promoted "
                             "(score more eval items, or lower gates.min_paired_items)", {"n": n}))
    gate.reasons.append(gate.checks[-1].reason)
    gate.passed = False
    return True


def _paired(gate: GateResult, cfg: GateConfig, metric: str, cand: dict, champ: dict, margin: float) -> None:
    """Lower bound of the paired interval on (candidate - champion) must lie above -margin, over at least
    min_paired_items items."""
    ci_c, ci_p = cand.get("item_scores"), champ.get("item_scores")
    if not ci_c or not ci_p:
        c, p = cand.get(metric), champ.get(metric)
        if c is None or p is None:
            gate.fail(f"paired:{metric}", f"{metric}: not measured for both models: cannot compare with production")
            return
        if _too_few(gate, cfg, metric, min(int(cand.get("n") or 0), int(champ.get("n") or 0))):
            return
        gate.check(f"point:{metric}", c - p, -margin, ">=",
                   f"{metric} {c:.3f} vs production {p:.3f}: no drop beyond the margin {margin:.3f} (no per-item scores)",
                   f"{metric} {c:.3f} regresses against production {p:.3f} by more than {margin:.3f}")
        return
    if ci_c.get("metric") != ci_p.get("metric"):
        gate.fail(f"paired:{metric}", f"candidate and production were scored on different metrics "
                                      f"({ci_c.get('metric')} vs {ci_p.get('metric')})")
        return
    metric = ci_c["metric"]
    if list(ci_c["ids"]) != list(ci_p["ids"]):
        gate.fail(f"paired:{metric}", "candidate and production did not answer the same items: no paired comparison")
        return
    if _too_few(gate, cfg, metric, len(ci_c["values"])):
        return
    iv = paired_interval(ci_c["values"], ci_p["values"], method=cfg.ci_method, confidence=cfg.confidence,
                         resamples=cfg.resamples, seed=cfg.seed)
    pct = int(round(cfg.confidence * 100))
    what = (f"{metric} {iv.candidate_mean:.3f} vs production {iv.champion_mean:.3f}: difference {iv.diff:+.3f}, "
            f"{pct}% {iv.method} interval [{iv.lower:+.3f}, {iv.upper:+.3f}] over {iv.n} paired items")
    gate.check(f"paired:{metric}", iv.lower, -margin, ">=",
               f"{what}; lower bound clears -{margin:.3f}",
               f"{what}; regresses: lower bound is below -{margin:.3f}", **iv.to_dict())


def regression_gate(cfg: GateConfig, candidate: dict | None, champion: dict | None) -> GateResult:
    """Absolute floors, per-slice floors, and (with a production version) a paired interval on the
    difference whose lower bound must lie above -margin, plus per-slice drop bounds."""
    gate = GateResult("regression", True, [], candidate or {}, champion)
    try:
        _regression(gate, cfg, candidate, champion)
    except Exception as e:  # fail closed, with the reason
        log.exception("regression gate crashed")
        gate.fail("error", f"regression gate could not run: {type(e).__name__}: {e}")
    return gate


def _regression(gate: GateResult, cfg: GateConfig, cand: dict | None, champ: dict | None) -> None:
    if not cand:
        gate.fail("eval", "candidate was not evaluated: regression gate cannot run")
        return
    gate.data = {"candidate": cand.get("data", {"n": cand.get("n")}),
                 "champion": champ.get("data", {"n": champ.get("n")}) if champ else None}
    if _cannot_run(gate, "eval", "regression gate", cand, "no eval items"):
        return
    for key, floor in cfg.floor.items():
        metric = cand.get("primary", key) if key == "primary" else key  # "primary": whatever the task's is
        if not cfg.enforce_floor:  # smoke runs: measured and recorded, but a floor of 0 so the publish path runs
            floor = 0.0
        value = cand.get(metric)
        if not isinstance(value, (int, float)):
            known = sorted(k for k, v in cand.items() if isinstance(v, (int, float)) and k != "n")
            gate.fail(f"floor:{metric}", f"{metric}: not measured (floor {floor}); metrics of this task: "
                                         f"{', '.join(known)} (fix gates.floor)")
            continue
        gate.check(f"floor:{metric}", value, floor, ">=", f"{metric} {value:.3f} clears the floor {floor:.3f}",
                   f"{metric} {value:.3f} is below the floor {floor:.3f}")
    slices = cand.get("slices") or {}
    for s, floor in _slices_for(cfg.slice_floor, list(slices)).items():
        floor = floor if cfg.enforce_floor else 0.0
        v = slices.get(s)
        if v is None:
            gate.fail(f"slice_floor:{s}", f"slice {s!r}: not in the eval set (gates.slice_floor)")
            continue
        gate.check(f"slice_floor:{s}", v, floor, ">=", f"slice {s} {v:.3f} clears its floor {floor:.3f}",
                   f"slice {s} {v:.3f} is below its floor {floor:.3f}")
    if champ is None:
        gate.reasons.append("no production version yet: the floor alone decides")
        return
    if champ.get("error"):
        gate.fail("champion", f"production version could not be evaluated: {champ['error']}")
        return
    metric = cfg.metric or cand.get("primary") or "accuracy"
    _paired(gate, cfg, metric, cand, champ, cfg.margin)
    cs, ps = cand.get("slices") or {}, champ.get("slices") or {}
    for s, bound in _slices_for(cfg.slice_max_drop, list(ps)).items():
        if s not in cs or s not in ps:
            gate.fail(f"slice_drop:{s}", f"slice {s!r}: not measured for both models (gates.slice_max_drop)")
            continue
        gate.check(f"slice_drop:{s}", cs[s] - ps[s], -bound, ">=",
                   f"slice {s} {cs[s]:.3f} vs production {ps[s]:.3f}: drop within {bound:.3f}",
                   f"slice {s} {cs[s]:.3f} falls below production {ps[s]:.3f} by more than {bound:.3f}")


def replay_gate(cfg: GateConfig, candidate: dict | None, champion: dict | None) -> GateResult:
    """Agreement with accepted references on replayed live traffic, invalid-output rate, p95 latency,
    and no drop in agreement beyond the margin against production."""
    gate = GateResult("replay", True, [], candidate or {}, champion)
    try:
        _replay(gate, cfg, candidate, champion)
    except Exception as e:
        log.exception("replay gate crashed")
        gate.fail("error", f"replay gate could not run: {type(e).__name__}: {e}")
    return gate


def _replay(gate: GateResult, cfg: GateConfig, cand: dict | None, champ: dict | None) -> None:
    r = cfg.replay
    if not cand:
        gate.fail("replay", "candidate was not replayed: replay gate cannot run")
        return
    gate.data = cand.get("data", {"n": cand.get("n")})
    if _cannot_run(gate, "replay", "replay gate", cand, "the replay sample is empty (no accepted traffic)"):
        return
    agree, invalid = cand["agreement"], cand["invalid_rate"]
    gate.check("agreement", agree, r.min_agreement, ">=",
               f"agreement {agree:.3f} with accepted references clears {r.min_agreement:.3f}",
               f"agreement {agree:.3f} with accepted references is below {r.min_agreement:.3f}")
    gate.check("invalid_rate", invalid, r.max_invalid_rate, "<=",
               f"invalid-output rate {invalid:.3f} is within {r.max_invalid_rate:.3f}",
               f"invalid-output rate {invalid:.3f} is above {r.max_invalid_rate:.3f}")
    if r.max_p95_latency_s is not None:
        p95 = cand.get("p95_s")
        gate.check("latency_p95_s", p95, r.max_p95_latency_s, "<=",
                   f"p95 latency {p95} s is within {r.max_p95_latency_s} s",
                   f"p95 latency {p95} s is above {r.max_p95_latency_s} s")
    if champ is not None:
        if champ.get("error") or not champ.get("n"):
            gate.fail("champion", f"production version could not be replayed: {champ.get('error') or 'no items'}")
            return
        # Point comparison: replay samples are small and references noisy; the frozen set carries the paired test.
        c, p = agree, champ["agreement"]
        gate.check("agreement_vs_production", c - p, -cfg.margin, ">=",
                   f"agreement {c:.3f} vs production {p:.3f}: no drop beyond the margin {cfg.margin:.3f}",
                   f"agreement {c:.3f} regresses against production {p:.3f} by more than {cfg.margin:.3f}")


def decide(gates: list[GateResult]) -> Decision:
    if not gates:
        return Decision(False, ["no gate ran: nothing is promoted"], gates)
    failed = [g for g in gates if not g.passed]
    if failed:
        reasons = []
        for g in failed:
            why = [c.reason for c in g.checks if not c.passed]
            reasons.append(f"gate failed: {g.name}" + (f" ({'; '.join(why)})" if why else ""))
        return Decision(False, reasons, gates)
    return Decision(True, ["every gate passed"], gates)


def gate(cfg: GateConfig, evaluation: dict) -> Decision:
    """Both gates on an `evaluate_candidate` result, and the decision."""
    cand = evaluation.get("candidate") or {}
    champ = evaluation.get("champion")
    gates = [regression_gate(cfg, cand.get("eval"), champ.get("eval") if champ else None),
             replay_gate(cfg, cand.get("replay"), champ.get("replay") if champ else None)]
    return decide(gates)
