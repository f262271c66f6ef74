"""Which answers a served version keeps: the published point of a both-lanes routing.json (version 2), the
point an override's policy re-picks on its curve, an engine that cannot read the version's signal."""

from __future__ import annotations

from eval_gates.routing import LaneItem, choose_point, served_curve
from gateway.config import SkillOverride
from gateway.service import keep_rule


def _routing(items, policy="quality", signal="min_grammar_logprob") -> dict:
    curve = served_curve(items)
    pick = choose_point(curve, policy)
    return {"version": 2, "policy": policy, "mode": pick["mode"], "threshold": pick["point"]["threshold"],
            "curve": curve["points"], "n": curve["n"], "signal": signal, "max_teacher_share": 0.2,
            "target_error_rate": 0.05, "significance": 0.05, "confidence_level": 0.95}


STRONG = [LaneItem(-0.01 * i, True, 1.0, 1.0, True) for i in range(100)] + \
         [LaneItem(-2 - 0.01 * i, True, float(i % 2), 1.0, bool(i % 2)) for i in range(60)]
WEAK = [LaneItem(it.signal, it.valid, it.student, 0.0, it.student_correct) for it in STRONG]


def test_the_published_point_and_the_overrides():
    r = _routing(STRONG)
    assert keep_rule(r, SkillOverride()) == ("threshold", r["threshold"]) and r["threshold"] <= -0.99
    assert keep_rule(_routing(WEAK), SkillOverride()) == ("never", None)  # a worse teacher takes nothing
    mode, thr = keep_rule(r, SkillOverride(policy="budget", max_teacher_share=0.1))
    assert mode == "threshold" and sum(it.signal >= thr for it in STRONG) >= 0.9 * len(STRONG)
    assert keep_rule(r, SkillOverride(escalation="always")) == ("always", None)
    assert keep_rule(r, SkillOverride(escalation="never")) == ("never", None)
    # target_error: the most answers kept whose exact one-sided bound on the kept error is within 5%.
    from eval_gates.routing import upper_bound

    mode, thr = keep_rule(r, SkillOverride(target_error_rate=0.05))
    kept = [it for it in STRONG if it.signal >= thr]
    wrong = sum(not it.student_correct for it in kept)
    assert mode == "threshold" and len(kept) >= 100 and upper_bound(wrong, len(kept)) <= 0.05
    assert upper_bound(wrong + 1, len(kept) + 2) > 0.05  # one cut further would not be certified


def test_an_engine_that_cannot_read_the_signal_keeps_valid_answers():
    r = _routing(STRONG)
    assert keep_rule(r, SkillOverride(), engine_signals=("mean_logprob", "min_logprob")) == ("never", None)
    assert keep_rule({**r, "signal": "min_logprob"}, SkillOverride(),
                     engine_signals=("mean_logprob", "min_logprob"))[0] == "threshold"


def test_an_older_profile_keeps_its_threshold():
    old = {"mode": "threshold", "threshold": -0.3, "curve": [{"threshold": -0.1, "kept": 1, "error_rate": 0.0}]}
    assert keep_rule(old, SkillOverride()) == ("threshold", -0.3)
    assert keep_rule({"mode": "escalate_all"}, SkillOverride()) == ("always", None)
