import json
from pathlib import Path

import pytest

from core.records import DataError
from core.skills import GateConfig, load_skill
from eval_gates.gates import decide, regression_gate, replay_gate
from eval_gates.metrics import classification_metrics
from eval_gates.replay import load_traffic, replay_sample

REPO = Path(__file__).resolve().parents[2]
CFG = load_skill("ticket-triage", root=REPO / "seeds").config


def test_classification_metrics():
    m = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", None], ["a", "b"])
    assert m["accuracy"] == 0.5
    assert m["per_label_recall"] == {"a": 0.5, "b": 0.5}
    assert m["invalid_rate"] == 0.25
    assert m["confusion"]["b"] == {"b": 1, "<invalid>": 1}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2, abs=1e-4)  # a: P=1 R=.5; b: P=.5 R=.5


def test_regression_gate_floor_and_champion():
    g = GateConfig(floor={"accuracy": 0.5}, margin=0.02)
    assert regression_gate(g, {"accuracy": 0.6}, None).passed
    assert not regression_gate(g, {"accuracy": 0.4}, None).passed
    assert regression_gate(g, {"accuracy": 0.69}, {"accuracy": 0.70}).passed  # within margin
    r = regression_gate(g, {"accuracy": 0.60}, {"accuracy": 0.70})
    assert not r.passed and any("regresses" in x for x in r.reasons)


def test_replay_gate_and_decision():
    g = GateConfig()
    ok = replay_gate(g, {"agreement": 0.8, "invalid_rate": 0.0}, None)
    bad = replay_gate(g, {"agreement": 0.8, "invalid_rate": 0.5}, None)
    assert ok.passed and not bad.passed
    d = decide([ok, bad])
    assert not d.promote and d.reasons == ["gate failed: replay"]
    assert decide([ok]).promote


def test_traffic_log_loads_and_samples_only_accepted_reproducibly():
    recs = load_traffic(REPO / "seeds" / "ticket-triage" / "traffic.jsonl", CFG)
    assert len(recs) >= 20 and any(not r.accepted for r in recs) and any(r.reference_source == "human" for r in recs)
    a, b = replay_sample(recs, 10, seed=1), replay_sample(recs, 10, seed=1)
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 10
    assert all(r.accepted for r in a)


def test_bad_traffic_line_names_file_and_line(tmp_path):
    p = tmp_path / "traffic.jsonl"
    good = {"id": "t1", "timestamp": "2026-11-01T00:00:00Z", "request": "x y z", "reference": "bug",
            "reference_source": "llm", "accepted": True}
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "accepted": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"traffic\.jsonl:2: 'accepted' must be true or false"):
        load_traffic(p, CFG)
