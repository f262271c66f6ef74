"""The verify lane (a share of kept answers also answered by the teacher, off the request path; agreement
per skill and version with an exact Clopper-Pearson interval; a full queue counts overflow and never
blocks) and a function_call skill through /v1/chat/completions with OpenAI `tools`, answered as a
`tool_calls` message, all on loopback against the project's fake OpenAI server."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import pytest

from tests.conftest import REPO
from tests.gateway.conftest import SKILL, publish, random_adapter, routing_with_threshold, teacher_answer

TICKETS = [json.loads(x)["input"] for x in (REPO / "seeds" / SKILL / "eval.jsonl").read_text().splitlines()[:8]]


def _cfg(tmp_path, **kw):
    from gateway import GatewayConfig

    base = {"skills": [SKILL], "max_wait_ms": 20, "poll_s": 0.3, "traffic_url": f"sqlite:///{tmp_path}/traffic.db",
            "teacher_timeout_s": 20, "traffic_flush_ms": 20}
    base.update(kw)
    return GatewayConfig.model_validate(base)


def _metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line.split("}")[0] for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait(cond, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _cp(k: int, n: int) -> tuple[float, float]:
    """Clopper-Pearson 95% from its definition (beta quantiles)."""
    from scipy.stats import beta

    return (0.0 if k == 0 else float(beta.ppf(0.025, k, n - k + 1)),
            1.0 if k == n else float(beta.ppf(0.975, k + 1, n - k)))


def test_verify_lane_agreement_per_version_and_a_full_queue(teacher_skill, trained_adapter, tmp_path, run_gateway,
                                                            fake_teacher):
    from registry import Registry

    reg = Registry()
    v1 = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    v2 = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r2", alias=None)
    g = run_gateway(_cfg(tmp_path, verify_fraction=1.0, verify_queue=2,
                         overrides={SKILL: {"escalation": "never"}}))
    gw = g.gateway

    def predict(ref_version=None, inputs=TICKETS):
        body = {"inputs": inputs} if ref_version is None else {"inputs": inputs, "version": str(ref_version)}
        t = time.perf_counter()
        r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json=body, timeout=60)
        assert r.status_code == 200, r.text
        return time.perf_counter() - t, r.json()["predictions"]

    # 1. Every kept answer is verified (fraction 1.0), one by one: feed them a few at a time (queue of 2).
    kept = {}
    for x in TICKETS:
        _, (p,) = predict(inputs=[x])
        if p["lane"] == "keep":
            kept[p["request_id"]] = (x, p["answer"])
            assert _wait(lambda: gw.verify.depth() == 0 and sum(gw.verify.counts[(SKILL, v1)]) == len(kept))
    assert kept, "the trained adapter kept no answer"
    est = httpx.get(g.url + "/v1/models").json()["data"][0]["verify"]
    agree = sum(a == teacher_answer("Ticket: " + x, {}) for x, a in kept.values())
    n = len(kept)
    assert est["verified"] == n and est["agreed"] == agree and est["failed"] == 0
    assert est["error_rate"] == pytest.approx((n - agree) / n)
    low, high = _cp(n - agree, n)
    assert est["error_rate_low"] == pytest.approx(low, abs=1e-9) and est["error_rate_high"] == pytest.approx(high, abs=1e-9)
    m = httpx.get(g.url + "/metrics").text
    assert _metric(m, "distill_gateway_verify_total", skill=SKILL, version=v1, result="agree") == agree
    assert _metric(m, "distill_gateway_verify_total", skill=SKILL, version=v1, result="disagree") == n - agree
    assert _metric(m, "distill_gateway_verify_error_rate", skill=SKILL, version=v1, bound="high") == pytest.approx(high)
    # Live figures: the teacher share and the served answers' agreement with the teacher, with its interval.
    live = httpx.get(g.url + "/v1/models").json()["data"][0]["live"]
    total = live["requests"]
    keep = live["lanes"].get("keep", 0) / total
    assert live["teacher_share"] == round(live["lanes"].get("escalate", 0) / total, 4)
    sa = live["served_agreement"]
    assert sa["estimate"] == round(keep * agree / n + (1 - keep), 4)
    assert sa["low"] == round(keep * (1 - high) + (1 - keep), 4) <= sa["estimate"] <= sa["high"]
    assert _metric(m, "distill_gateway_teacher_share", skill=SKILL, version=v1) == pytest.approx(live["teacher_share"])
    assert _metric(m, "distill_gateway_served_agreement", skill=SKILL, version=v1, bound="estimate") == \
        pytest.approx(sa["estimate"], abs=1e-4)
    # Each verified row says whether the teacher agreed.
    gw.traffic.flush()
    with sqlite3.connect(tmp_path / "traffic.db") as c:
        rows = dict(c.execute(f"select id, verified from traffic_{SKILL.replace('-', '_')}").fetchall())
    assert {i: bool(rows[i]) for i in kept} == {i: a == teacher_answer("Ticket: " + x, {}) for i, (x, a) in kept.items()}

    # 2. Per version: answers of version 2 are counted for version 2 only.
    _, preds2 = predict(v2, TICKETS[:2])
    k2 = sum(p["lane"] == "keep" for p in preds2)
    assert _wait(lambda: sum(gw.verify.counts[(SKILL, v2)]) == k2)
    assert gw.verify.estimate(SKILL, v2)["verified"] == k2 and gw.verify.estimate(SKILL, v1)["verified"] == n

    # 3. A slow teacher and a full queue: requests do not wait for it; the overflow is counted in /metrics.
    xs = [x for x, _ in kept.values()]
    assert _wait(lambda: gw.verify.depth() == 0 and gw.verify.counts[(SKILL, v2)] and not gw.verify_teachers[SKILL].batcher.inflight)
    base, _ = predict(inputs=xs)
    assert _wait(lambda: gw.verify.depth() == 0 and not gw.verify_teachers[SKILL].batcher.inflight)
    fake_teacher.delay_s = 2.0
    lost0 = gw.verify.lost
    dt, preds = predict(inputs=xs * 2)
    # While the verify lane waits on the slow teacher (one answer in flight), an escalation is not queued behind it.
    t = time.perf_counter()
    got = gw.teachers[SKILL].submit(TICKETS[0]).result(timeout=30)
    assert got.answer == teacher_answer("Ticket: " + TICKETS[0], {}) and time.perf_counter() - t < 3.0
    keep3 = sum(p["lane"] == "keep" for p in preds)
    assert keep3 == 2 * len(xs)
    assert dt < base + 1.5, (dt, base)  # waiting for one verify answer alone would take 2 s
    lost = gw.verify.lost - lost0
    assert keep3 - 3 <= lost <= keep3 - 2 and lost > 0  # the worker holds one job, the queue two
    assert _metric(httpx.get(g.url + "/metrics").text, "distill_gateway_queue_lost", queue="verify") == gw.verify.lost
    fake_teacher.delay_s = 0.0


TOOL_SKILL = "tool-calling"


def _tool_eval():
    return [json.loads(x) for x in (REPO / "seeds" / TOOL_SKILL / "eval.jsonl").read_text().splitlines()]


def _teacher_call(prompt: str, body: dict) -> str:
    """The fake tool-calling teacher: the eval item's call (each argument's first acceptable value) for the
    last request in the prompt."""
    last = prompt.rsplit("Request:", 1)[-1].split("\n", 1)[0].strip()
    for item in _tool_eval():
        if item["input"]["request"] == last:
            out = item["output"]
            args = {k: next((v for v in vals if v != ""), None) if isinstance(vals, list) else vals
                    for k, vals in out["arguments"].items()}
            return json.dumps({"name": out["name"], "arguments": {k: v for k, v in args.items() if v is not None}})
    return "{}"


@pytest.fixture
def tool_skill(skill_root, tiny_model_path):
    import yaml

    from teachers.fakeserver import FakeOpenAIServer

    server = FakeOpenAIServer(answer=_teacher_call).start()
    path = skill_root / TOOL_SKILL / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["teacher"] = {"backend": "openai", "base_url": server.base_url, "model": "fake", "endpoint": "completions",
                      "few_shot": 1, "cache": False, "max_retries": 1, "timeout_s": 5}
    cfg["student"]["base_model"] = tiny_model_path
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    yield server
    server.stop()


def test_function_call_skill_answers_with_tool_calls(tool_skill, tiny_model_path, tmp_path, run_gateway):
    from core.skills import load_skill
    from registry import Registry
    from registry.stage import skill_spec

    skill = load_skill(TOOL_SKILL)
    reg = Registry()
    adapter = random_adapter(tiny_model_path, tmp_path / "rand")
    version = reg.publish(TOOL_SKILL, adapter, metrics={"eval": {"ast_accuracy": 0.0}}, lineage={"run_id": "t1"},
                          routing=routing_with_threshold(None, "keep_all_valid"), skill_spec=skill_spec(skill.config),
                          model_card="---\nlibrary_name: peft\n---\n", alias="production")
    g = run_gateway(_cfg(tmp_path, skills=[TOOL_SKILL]))
    item = _tool_eval()[0]
    body = {"model": TOOL_SKILL, "messages": [{"role": "system", "content": "be brief"},
                                               {"role": "user", "content": item["input"]["request"]}],
            "tools": item["input"]["tools"]}
    r = httpx.post(g.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    d = r.json()
    choice = d["choices"][0]
    msg = choice["message"]
    assert choice["finish_reason"] == "tool_calls" and msg["role"] == "assistant" and msg["content"] is None
    (call,) = msg["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    args = json.loads(call["function"]["arguments"])  # a JSON string, as OpenAI sends it
    names = {t["function"]["name"] for t in item["input"]["tools"]}
    assert call["function"]["name"] in names
    lane = r.headers["x-distill-lane"]
    assert r.headers["x-distill-skill"] == TOOL_SKILL and r.headers["x-distill-version"] == str(version)
    assert r.headers["x-distill-request-id"] == d["distill"]["request_id"] and lane == d["distill"]["lane"]
    assert lane in ("keep", "escalate")
    if lane == "escalate":  # the random adapter's call was invalid: the teacher's valid call is returned
        want = json.loads(_teacher_call("Request: " + item["input"]["request"], {}))
        assert call["function"]["name"] == want["name"] and args == want["arguments"]
        assert tool_skill.total >= 1
    else:
        assert r.headers["x-distill-confidence"] and d["distill"]["slm_answer"]
    # Without tools the skill cannot answer: 422 naming the field.
    r = httpx.post(g.url + "/v1/chat/completions", json={**body, "tools": None}, timeout=30)
    assert r.status_code == 422 and "tools" in r.json()["error"]["message"]


def test_the_next_run_reads_the_verify_outcomes(tmp_path, monkeypatch):
    """The gateway's verify lane writes `verified` on kept rows; the next run's routing.json reads them back per
    version with an exact interval (eval_gates.lanes.live_verify), and a missing or unreadable store is said,
    never a failure."""
    from datetime import datetime, timezone

    import sqlalchemy as sa

    from eval_gates.lanes import live_verify
    from gateway.traffic import traffic_table

    monkeypatch.setenv("DISTILL_HOME", str(tmp_path))
    assert live_verify(SKILL) == {"source": f"sqlite:///{tmp_path / 'traffic.db'}", "versions": {}}
    eng = sa.create_engine(f"sqlite:///{tmp_path / 'traffic.db'}")
    t = traffic_table(sa.MetaData(), f"traffic_{SKILL.replace('-', '_')}")
    t.metadata.create_all(eng)
    now = datetime.now(timezone.utc)
    rows = [dict(id=f"r{i}", created_at=now, skill=SKILL, version=v, request="x", lane="keep",
                 reference_source="student", verified=ok)
            for i, (v, ok) in enumerate([(1, True)] * 7 + [(1, False)] * 3 + [(2, True)] * 2 + [(2, None)] * 4)]
    with eng.begin() as c:
        c.execute(t.insert(), rows)
    got = live_verify(SKILL)["versions"]
    lo, hi = _cp(7, 10)
    assert got["1"] == {"verified": 10, "agreed": 7, "agreement": 0.7, "low": round(lo, 4), "high": round(hi, 4)}
    assert got["2"]["verified"] == 2 and got["2"]["agreed"] == 2  # rows never verified are not evidence
    assert "error" in live_verify(SKILL, url="postgresql+psycopg://nobody@127.0.0.1:1/none")
