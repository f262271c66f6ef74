"""Regression/replay gates and the decision, on fixed per-item scores."""

import numpy as np
import pytest
from scipy.stats import binomtest

from core.skills import GateConfig, ReplayConfig
from core.tasks.classification import classification_metrics
from eval_gates.gates import MIN_PAIRED_ITEMS, decide, gate, min_paired_items, regression_gate, replay_gate
from eval_gates.stats import paired_interval


def ev(values, metric="accuracy", **extra):
    ids = [f"e{i}" for i in range(len(values))]
    return {"n": len(values), "primary": metric, metric: float(np.mean(values)),
            "item_scores": {"metric": metric, "ids": ids, "values": [float(v) for v in values]},
            "data": {"n": len(values), "eval_set_hash": "h"}, **extra}


def rp(agreement=0.8, invalid=0.0, n=20, **extra):
    return {"n": n, "agreement": agreement, "invalid_rate": invalid, "p50_s": 0.1, "p95_s": 0.2, **extra}


def test_classification_metrics():
    m = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", None], ["a", "b"])
    assert m["accuracy"] == 0.5
    assert m["per_label_recall"] == {"a": 0.5, "b": 0.5}
    assert m["invalid_rate"] == 0.25
    assert m["confusion"]["b"] == {"b": 1, "<invalid>": 1}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-4)  # a: P=1 R=.5; b: P=.5 R=.5


def test_exact_mcnemar_interval():
    champ = [1] * 10 + [0] * 2 + [1] * 50 + [0] * 38
    cand = [0] * 10 + [1] * 2 + [1] * 50 + [0] * 38  # 10 items lost, 2 won, n = 100
    iv = paired_interval(cand, champ, confidence=0.95)
    ci = binomtest(2, 12).proportion_ci(0.95, method="exact")
    assert iv.method == "mcnemar" and iv.diff == pytest.approx(-0.08)
    assert (iv.candidate_only, iv.champion_only) == (2, 10)
    assert iv.lower == pytest.approx((2 * ci.low - 1) * 12 / 100) and iv.upper == pytest.approx((2 * ci.high - 1) * 12 / 100)
    assert iv.p_value == pytest.approx(binomtest(2, 12).pvalue)
    same = paired_interval([1, 0, 1], [1, 0, 1])
    assert (same.lower, same.upper, same.p_value) == (0.0, 0.0, 1.0)


def test_paired_bootstrap_is_reproducible_and_covers_the_difference():
    rng = np.random.default_rng(1)
    champ = rng.random(80)
    cand = champ + rng.normal(-0.05, 0.05, 80)
    a = paired_interval(cand, champ, resamples=1000, seed=3)
    b = paired_interval(cand, champ, resamples=1000, seed=3)
    assert a.method == "bootstrap" and a == b
    assert a.lower < a.diff < a.upper and a.upper < 0  # a clear 0.05 drop is resolved
    with pytest.raises(ValueError, match="same length"):
        paired_interval([1, 0], [1])


def test_worse_than_champion_beyond_margin_is_rejected():
    champ = [1] * 160 + [0] * 40  # 0.80
    cand = [0] * 20 + [1] * 140 + [0] * 40  # 0.70: 20 items lost, none won
    g = GateConfig(floor={"accuracy": 0.5}, margin=0.05)
    r = regression_gate(g, ev(cand), ev(champ))
    assert not r.passed
    paired = next(c for c in r.checks if c.name == "paired:accuracy")
    assert not paired.passed and paired.bound == -0.05 and paired.value < -0.05
    assert paired.detail["method"] == "mcnemar" and paired.detail["n"] == 200
    assert any("regresses" in x for x in r.reasons)
    d = decide([r, replay_gate(g, rp(), rp())])
    assert not d.promote and d.reasons[0].startswith("gate failed: regression (accuracy 0.700 vs production 0.800")


def test_within_noise_of_champion_is_promoted():
    champ = [1] * 300 + [0] * 100
    cand = list(champ)
    cand[0] = cand[1] = 0  # two items lost ...
    cand[300] = cand[301] = 1  # ... and two won: same accuracy, a little disagreement
    g = GateConfig(floor={"accuracy": 0.5}, margin=0.02)
    r = regression_gate(g, ev(cand), ev(champ))
    assert r.passed, r.reasons
    paired = next(c for c in r.checks if c.name == "paired:accuracy")
    assert -0.02 < paired.value < 0 and paired.detail["diff"] == 0.0
    # Continuous scores (bootstrap): a small symmetric jitter passes, a shift does not.
    rng = np.random.default_rng(0)
    base = rng.random(300)
    noisy = np.clip(base + rng.normal(0, 0.01, 300), 0, 1)
    gc = GateConfig(floor={"chrf": 0.1}, margin=0.02)
    assert regression_gate(gc, ev(noisy, "chrf"), ev(base, "chrf")).passed
    assert not regression_gate(gc, ev(np.clip(base - 0.1, 0, 1), "chrf"), ev(base, "chrf")).passed
    assert decide([r, replay_gate(g, rp(0.8), rp(0.81))]).promote


def test_floor_alone_decides_without_a_champion():
    g = GateConfig(floor={"accuracy": 0.5}, margin=0.02)
    ok = regression_gate(g, ev([1, 1, 0]), None)
    assert ok.passed and "no production version yet: the floor alone decides" in ok.reasons
    low = regression_gate(g, ev([1, 0, 0]), None)
    assert not low.passed and any("below the floor 0.500" in x for x in low.reasons)
    floor = next(c for c in low.checks if c.name == "floor:accuracy")
    assert (floor.value, floor.bound, floor.op, floor.passed) == (pytest.approx(1 / 3, abs=1e-4), 0.5, ">=", False)
    primary = regression_gate(GateConfig(floor={"primary": 0.9}), ev([1, 0.5], "chrf"), None)
    assert not primary.passed and primary.checks[0].name == "floor:chrf" and primary.checks[0].value == 0.75
    missing = regression_gate(GateConfig(floor={"field_f1": 0.2}), ev([1, 1]), None)
    assert not missing.passed and "field_f1: not measured" in missing.reasons[0] and "accuracy" in missing.reasons[0]


def test_per_label_floors_and_drops():
    g = GateConfig(floor={"accuracy": 0.0}, margin=1.0, slice_max_drop={"*": 0.1, "billing": 0.3},
                   slice_floor={"bug": 0.5})
    cand = ev([1, 1, 0, 0], slices={"billing": 0.6, "bug": 0.55, "other": 0.5})
    champ = ev([1, 1, 0, 0], slices={"billing": 0.8, "bug": 0.6, "other": 0.7})
    r = regression_gate(g, cand, champ)
    verdict = {c.name: c.passed for c in r.checks}
    assert verdict["slice_floor:bug"] and verdict["slice_drop:billing"] and verdict["slice_drop:bug"]
    assert verdict["slice_drop:other"] is False and not r.passed
    assert any("slice other 0.500 falls below production 0.700 by more than 0.100" in x for x in r.reasons)


@pytest.mark.parametrize("cand,champ,why", [
    ({"n": 10, "error": "scoring failed: KeyError: 'x'"}, None, "regression gate cannot run: scoring failed"),
    ({"n": 0, "error": "no eval items (eval.jsonl is empty)"}, None, "no eval items"),
    (ev([1, 1]), {"n": 2, "error": "boom"}, "production version could not be evaluated: boom"),
    (ev([1, 1]), ev([1, 1, 1]), "did not answer the same items"),
    (None, None, "candidate was not evaluated"),
])
def test_a_gate_that_cannot_run_blocks_promotion(cand, champ, why):
    r = regression_gate(GateConfig(floor={"accuracy": 0.0}), cand, champ)
    assert not r.passed and any(why in x for x in r.reasons), r.reasons
    d = decide([r, replay_gate(GateConfig(), rp(), None)])
    assert not d.promote and why in d.reasons[0]


def test_a_gate_that_crashes_fails_closed_instead_of_raising():
    broken = ev([1, 0, 1] * 7)
    broken["item_scores"]["values"] = ["not", "a", "number"] * 7
    r = regression_gate(GateConfig(floor={"accuracy": 0.0}), broken, ev([1, 0, 1] * 7))
    assert not r.passed and r.reasons[-1].startswith("regression gate could not run: ValueError")
    assert not decide([r]).promote and not decide([]).promote


def test_replay_gate_bounds_and_empty_sample():
    g = GateConfig(margin=0.05, replay=ReplayConfig(min_agreement=0.5, max_invalid_rate=0.1, max_p95_latency_s=1.0))
    ok = replay_gate(g, rp(0.8), rp(0.82))
    assert ok.passed and {c.name for c in ok.checks} == {"agreement", "invalid_rate", "latency_p95_s",
                                                         "agreement_vs_production"}
    assert not replay_gate(g, rp(0.8, invalid=0.5), None).passed
    assert not replay_gate(g, rp(0.4), None).passed
    assert not replay_gate(g, rp(0.8, p95_s=3.0), None).passed
    assert not replay_gate(g, rp(0.7), rp(0.9)).passed
    empty = replay_gate(g, {"n": 0, "error": "the replay sample is empty: no accepted traffic"}, None)
    assert not empty.passed and "replay sample is empty" in empty.reasons[0]
    assert not replay_gate(g, {"n": 0}, None).passed


def test_gate_runs_both_and_records_the_data():
    g = GateConfig(floor={"accuracy": 0.5})
    evaluation = {"candidate": {"eval": ev([1, 1, 0]), "replay": rp(data={"n": 20, "replay_sample_hash": "abc"})},
                  "champion": None}
    d = gate(g, evaluation)
    assert d.promote and [x.name for x in d.gates] == ["regression", "replay"]
    rec = d.to_dict()
    assert rec["gates"][0]["data"]["candidate"] == {"n": 3, "eval_set_hash": "h"}
    assert rec["gates"][1]["data"] == {"n": 20, "replay_sample_hash": "abc"}
    assert "item_scores" not in rec["gates"][0]["candidate"]  # the record keeps numbers, not series
    assert all({"name", "value", "bound", "op", "passed", "reason"} <= set(c) for x in rec["gates"] for c in x["checks"])


# --- issue 16, item 7: no confidence from one item --------------------------------------------------


def test_one_paired_item_fails_closed_however_small_the_difference():
    """Bootstrap on one item gave a zero-width interval [-0.05, -0.05] above -margin: promoted."""
    g = GateConfig(floor={"chrf": 0.0}, margin=0.1)
    r = regression_gate(g, ev([0.50], "chrf"), ev([0.55], "chrf"))
    assert not r.passed
    check = next(c for c in r.checks if c.name == "paired:chrf")
    assert (check.value, check.bound, check.passed) == (1.0, 20.0, False)
    assert "only 1 paired item(s) with production, fewer than gates.min_paired_items=20" in check.reason
    assert not decide([r, replay_gate(g, rp(), rp())]).promote


@pytest.mark.parametrize("cand,champ,metric", [
    ([0.5] * 5, [0.55] * 5, "chrf"),  # a few items with identical differences: zero-width again
    ([1] * 19, [1] * 19, "accuracy"),  # McNemar with no discordant pair: [0, 0]
    ([0] + [1] * 18, [1] * 19, "accuracy"),
])
def test_fewer_paired_items_than_the_minimum_fail_closed(cand, champ, metric):
    r = regression_gate(GateConfig(floor={metric: 0.0}, margin=0.5), ev(cand, metric), ev(champ, metric))
    assert not r.passed and any(f"only {len(cand)} paired item(s)" in x for x in r.reasons), r.reasons


def test_the_minimum_applies_without_per_item_scores_and_is_configurable():
    point = {"n": 3, "accuracy": 0.9}
    r = regression_gate(GateConfig(floor={"accuracy": 0.0}, margin=0.5), point, {"n": 3, "accuracy": 0.9})
    assert not r.passed and any("only 3 paired item(s)" in x for x in r.reasons)
    enough = regression_gate(GateConfig(floor={"accuracy": 0.0}, margin=0.5), ev([1] * 20), ev([1] * 20))
    assert enough.passed, enough.reasons

    class Cfg(GateConfig):  # the field core/skills.py's GateConfig gets (gates.min_paired_items)
        min_paired_items: int = 3

    assert min_paired_items(Cfg()) == 3 and min_paired_items(GateConfig()) == MIN_PAIRED_ITEMS == 20
    assert regression_gate(Cfg(floor={"accuracy": 0.0}, margin=0.5), ev([1, 1, 1]), ev([1, 1, 1])).passed
    assert not regression_gate(Cfg(floor={"accuracy": 0.0}, margin=0.5), ev([1, 1]), ev([1, 1])).passed
