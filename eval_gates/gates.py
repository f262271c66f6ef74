"""Gates and the promote/reject decision. Every decision carries its reasons."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from core.skills import GateConfig


@dataclass
class GateResult:
    name: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    candidate: dict = field(default_factory=dict)
    champion: dict | None = None


@dataclass
class Decision:
    promote: bool
    reasons: list[str]
    gates: list[GateResult]

    def to_dict(self) -> dict:
        return asdict(self)


def regression_gate(cfg: GateConfig, candidate: dict, champion: dict | None) -> GateResult:
    """Absolute floors, and no drop of more than `margin` against production when there is one."""
    reasons, passed = [], True
    for metric, floor in cfg.floor.items():
        value = candidate.get(metric)
        if value is None:
            passed = False
            reasons.append(f"{metric}: not measured (floor {floor})")
        elif value < floor:
            passed = False
            reasons.append(f"{metric} {value:.3f} is below the floor {floor:.3f}")
        else:
            reasons.append(f"{metric} {value:.3f} clears the floor {floor:.3f}")
    if champion is None:
        reasons.append("no production version yet: the floor alone decides")
    else:
        for metric in cfg.floor or {"accuracy": 0}:
            c, p = candidate.get(metric, 0.0), champion.get(metric, 0.0)
            if c < p - cfg.margin:
                passed = False
                reasons.append(f"{metric} {c:.3f} regresses against production {p:.3f} by more than {cfg.margin:.3f}")
            else:
                reasons.append(f"{metric} {c:.3f} vs production {p:.3f}: no drop beyond the margin {cfg.margin:.3f}")
    return GateResult("regression", passed, reasons, candidate, champion)


def replay_gate(cfg: GateConfig, candidate: dict, champion: dict | None) -> GateResult:
    """Agreement with accepted references on replayed live traffic, and the invalid-output rate."""
    r = cfg.replay
    reasons, passed = [], True
    agree, invalid = candidate["agreement"], candidate["invalid_rate"]
    if agree < r.min_agreement:
        passed = False
        reasons.append(f"agreement {agree:.3f} with accepted references is below {r.min_agreement:.3f}")
    else:
        reasons.append(f"agreement {agree:.3f} with accepted references clears {r.min_agreement:.3f}")
    if invalid > r.max_invalid_rate:
        passed = False
        reasons.append(f"invalid-output rate {invalid:.3f} is above {r.max_invalid_rate:.3f}")
    if champion is not None:
        if agree < champion["agreement"] - cfg.margin:
            passed = False
            reasons.append(f"agreement {agree:.3f} regresses against production {champion['agreement']:.3f}")
        else:
            reasons.append(f"agreement {agree:.3f} vs production {champion['agreement']:.3f}: no drop beyond the margin")
    return GateResult("replay", passed, reasons, candidate, champion)


def decide(gates: list[GateResult]) -> Decision:
    failed = [g.name for g in gates if not g.passed]
    if failed:
        return Decision(False, [f"gate failed: {name}" for name in failed], gates)
    return Decision(True, ["every gate passed"], gates)
