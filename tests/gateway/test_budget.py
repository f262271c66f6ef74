"""The budget policy's teacher share held on live traffic (gateway/budget.py): the window starts from the eval
set's confidences rebuilt from routing.json's curve, a shift that makes the published threshold send most
requests to the teacher still sends about max_teacher_share, the weakest ones, and the gateway keeps the rest
on the student with the reason said, while drift still sees what the version's rule would have escalated."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from eval_gates.routing import LaneItem, choose_point, served_curve
from gateway.budget import NO_SCORE, LiveBudget, curve_scores, live_budget
from gateway.config import SkillOverride


def _eval_items(n=200, seed=0, invalid=10):
    rng = random.Random(seed)
    confs = [round(rng.gauss(0, 1), 3) for _ in range(n)]
    # the student is right above -0.3, the teacher everywhere: every cut the budget allows is worth taking
    items = [LaneItem(c, True, float(c > -0.3), 1.0, c > -0.3) for c in confs]
    items += [LaneItem(None, False, 0.0, 1.0, False) for _ in range(invalid)]
    return items


def _routing(items, policy="budget", share=0.2) -> dict:
    curve = served_curve(items)
    pick = choose_point(curve, policy, max_teacher_share=share)
    return {"version": 2, "policy": policy, "mode": pick["mode"], "threshold": pick["point"]["threshold"],
            "curve": curve["points"], "n": curve["n"], "max_teacher_share": share}


def test_the_eval_confidences_come_back_from_the_curve():
    items = _eval_items()
    got = curve_scores(_routing(items))
    want = sorted(it.signal for it in items if it.valid) + [NO_SCORE] * 10
    assert sorted(got) == sorted(want) and len(got) == 210
    assert curve_scores({}) == [] and curve_scores({"curve": [{"kept": 5}, {"kept": 2}]}) == []


def _run(budget: LiveBudget, confs, threshold):
    sent = []
    for c in confs:
        sent.append(budget.admit(c, below_threshold=c == NO_SCORE or c < threshold))
    return sent


def test_a_shift_is_held_to_the_budget_and_the_weakest_go():
    items = _eval_items()
    r = _routing(items)
    thr = r["threshold"]
    rng = random.Random(1)
    # In distribution: about the budget, as the threshold alone would.
    b = LiveBudget(0.2, 100, curve_scores(r))
    live = [rng.gauss(0, 1) for _ in range(1000)]
    sent = _run(b, live, thr)
    assert 0.15 <= sum(sent) / len(sent) <= 0.23
    # Shifted: the threshold alone would send most; the budget holds, and sends the least confident.
    shifted = [rng.gauss(-1.5, 1) for _ in range(2000)]
    alone = sum(c < thr for c in shifted) / len(shifted)
    sent = _run(b, shifted, thr)
    share = sum(sent[500:]) / 1500
    assert alone > 0.6 and 0.15 <= share <= 0.23, (alone, share)
    went = [c for c, s in zip(shifted, sent) if s]
    stayed = [c for c, s in zip(shifted, sent) if not s]
    assert sum(went) / len(went) < sum(stayed) / len(stayed) - 1.0
    assert all(c < thr for c in went) and b.held > 0
    # Never above the threshold, whatever the window holds.
    assert not LiveBudget(1.0, 10, [NO_SCORE] * 10).admit(thr + 1, below_threshold=False)


def test_answers_that_escalate_anyway_spend_the_budget_first():
    b = LiveBudget(0.2, 50, [0.0] * 50)
    sent = _run(b, [NO_SCORE if i % 3 == 0 else -1.0 - i / 1000 for i in range(300)], threshold=0.0)
    assert all(sent[i] for i in range(0, 300, 3))  # an invalid answer always goes to the teacher
    assert not any(sent[i] for i in range(150, 300) if i % 3)  # a third invalid > 0.2: no valid answer escalates
    assert not LiveBudget(0.2, 5).admit(-1.0, below_threshold=True)  # one request, floor(0.2): none yet
    assert LiveBudget(0.2, 5, [1, 2, 3, 4]).admit(-1.0, below_threshold=True)
    assert LiveBudget(0.2, 5).admit(float("nan"), below_threshold=True)  # no finite confidence: NO_SCORE
    with pytest.raises(ValueError, match="max_teacher_share"):
        LiveBudget(1.5, 10)
    with pytest.raises(ValueError, match="window"):
        LiveBudget(0.2, 0)


def test_which_versions_get_a_live_budget():
    r = _routing(_eval_items())
    assert live_budget(r, SkillOverride()) == 0.2
    assert live_budget({**r, "policy": "quality"}, SkillOverride()) is None
    assert live_budget({**r, "policy": "quality"}, SkillOverride(max_teacher_share=0.1)) == 0.1
    assert live_budget(r, SkillOverride(policy="quality")) is None
    assert live_budget(r, SkillOverride(escalation="always")) is None
    assert live_budget({**r, "version": 1}, SkillOverride()) is None


def test_the_gateway_holds_the_budget_and_says_why(drift_skill, tmp_path):
    """Shifted traffic that the published threshold would send whole to the teacher: about max_teacher_share
    escalates (lane degraded here: no teacher), the rest is kept with reason over_budget, the traffic rows say
    keep, and the drift monitor counts them as the rule's escalations."""
    from gateway import GatewayConfig
    from gateway.engine import Answer
    from gateway.service import Gateway
    from registry import Registry
    from tests.gateway.conftest import StubEngine
    from tests.gateway.test_drift import SKILL, _publish_stub

    r = _routing(_eval_items())
    _publish_stub(Registry(), tmp_path, {**r, "teacher_share": 0.2, "kept_error_rate_upper": 0.1}, None, "r1")

    class Engine(StubEngine):
        def decode(self, key, cfg, prompts, max_new_tokens, inputs=None, **kw):
            out = super().decode(key, cfg, prompts, max_new_tokens, inputs=inputs, **kw)
            return [Answer(a.raw, a.parsed, float(x.rsplit("#", 1)[1]), a.finish_reason, a.prompt_tokens,
                           a.completion_tokens) for a, x in zip(out, inputs)]

    gcfg = GatewayConfig.model_validate({"skills": [SKILL], "traffic_url": f"sqlite:///{tmp_path}/traffic.db",
                                         "teachers": False, "poll_s": 3600, "max_wait_ms": 1, "traffic_flush_ms": 10,
                                         "budget_window": 50})
    g = Gateway(gcfg, engine=Engine())
    g.start()
    rng = random.Random(3)
    confs = [round(r["threshold"] - 0.1 - abs(rng.gauss(0, 1)), 4) for _ in range(120)]  # all below it
    try:
        async def ask():
            return [(await g.answer(SKILL, [f"My invoice is wrong, case #{c}"]))[0] for c in confs]

        res = asyncio.run(ask())
        lanes = [x.lane for x in res]
        escalated = lanes.count("degraded")
        assert 0.1 * 120 <= escalated <= 0.2 * 120 + 1, escalated  # any 50 in a row: at most 10
        held = [x for x in res if x.lane == "keep"]
        assert len(held) == 120 - escalated and all(x.reason.startswith("over_budget") for x in held)
        assert max(x.confidence for x in res if x.lane == "degraded") < max(x.confidence for x in held)
        assert g.drift.flush(20) and g.traffic.flush(20)
        st = g.describe()[0]["drift"]["signals"]["teacher_share"]
        assert st["value"] == 1.0  # the version's rule sent every one of them: that is the drift signal
        import sqlalchemy as sa

        eng = sa.create_engine(gcfg.traffic_url)
        with eng.connect() as c:
            got = dict(c.execute(sa.text("select lane, count(*) from traffic_ticket_triage group by lane")).all())
        eng.dispose()
        assert got == {"keep": len(held), "degraded": escalated}
        assert math.isclose(sum(got.values()), 120)
    finally:
        g.close()
