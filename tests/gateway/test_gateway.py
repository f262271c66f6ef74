"""The gateway on loopback (uvicorn, a free port) over a real registry and the fake OpenAI teacher:
lanes, headers, 4xx errors, auth, health, metrics, traffic in PostgreSQL, feedback, the refresh
reading it, a hot swap under load, and a traffic database that stops answering."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import socket
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import REPO
from tests.gateway.conftest import SKILL, publish, random_adapter, routing_with_threshold

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# Frozen eval tickets: the trained tiny adapter answers most of them with a valid label.
TICKETS = [json.loads(x)["input"] for x in (REPO / "seeds" / SKILL / "eval.jsonl").read_text().splitlines()[:8]]


def pg_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def _cfg(tmp_path, **kw):
    from gateway import GatewayConfig

    base = {"skills": [SKILL], "max_wait_ms": 20, "poll_s": 0.3, "traffic_url": f"sqlite:///{tmp_path}/traffic.db",
            "teacher_timeout_s": 20}
    base.update(kw)
    return GatewayConfig.model_validate(base)


def test_lanes_headers_errors_auth_and_metrics(teacher_skill, trained_adapter, tmp_path, run_gateway, monkeypatch,
                                               fake_teacher):
    from registry import Registry

    reg = Registry()
    v1 = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    monkeypatch.setenv("GW_TOKENS", "tok-a,tok-b")
    g = run_gateway(_cfg(tmp_path, auth_tokens_env="GW_TOKENS", max_input_chars=200,
                         overrides={"ticket-triage": {"escalation": "threshold"}}))
    auth = {"Authorization": "Bearer tok-b"}
    # Health and readiness need no token.
    assert httpx.get(g.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(g.url + "/readyz").json()["skills"] == {SKILL: v1}
    # Auth: missing or wrong token -> 401.
    body = {"model": SKILL, "messages": [{"role": "user", "content": TICKETS[0]}]}
    assert httpx.post(g.url + "/v1/chat/completions", json=body).status_code == 401
    assert httpx.post(g.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    # Chat: the answer names skill, version, lane, confidence and request id (body and headers).
    r = httpx.post(g.url + "/v1/chat/completions", json=body, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["choices"][0]["message"]["role"] == "assistant"
    assert d["distill"]["skill"] == SKILL and d["distill"]["version"] == v1
    assert d["distill"]["lane"] in ("keep", "escalate")
    assert r.headers["x-distill-skill"] == SKILL and r.headers["x-distill-version"] == str(v1)
    assert r.headers["x-distill-lane"] == d["distill"]["lane"] and r.headers["x-distill-request-id"] == d["distill"]["request_id"]
    # Completions and :predict.
    r = httpx.post(g.url + "/v1/completions", json={"model": SKILL, "prompt": TICKETS[1]}, headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"]
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": TICKETS}, headers=auth, timeout=60)
    preds = r.json()["predictions"]
    assert len(preds) == len(TICKETS) and all(p["answer"] for p in preds)
    # Every escalated answer is the fake teacher's; every kept one is the small model's valid label.
    from tests.gateway.conftest import teacher_answer

    for x, p in zip(TICKETS, preds):
        if p["lane"] == "escalate":
            assert p["answer"] == teacher_answer("Ticket: " + x, {})
        else:
            assert p["lane"] == "keep" and p["answer"] == p["slm_answer"]
    # 4xx: unknown skill (404 with the known ones), malformed body (422 naming the field), too long (413 naming the limit).
    r = httpx.post(g.url + "/v1/chat/completions", json={**body, "model": "nope"}, headers=auth)
    assert r.status_code == 404 and r.json()["error"]["known"] == [SKILL]
    r = httpx.post(g.url + "/v1/chat/completions", json={"model": SKILL}, headers=auth)
    assert r.status_code == 422 and "messages" in r.json()["error"]["message"]
    r = httpx.post(g.url + "/v1/completions", json={"model": SKILL, "prompt": "x" * 500}, headers=auth)
    assert r.status_code == 413 and "max_input_chars=200" in r.json()["error"]["message"]
    r = httpx.post(g.url + "/v1/chat/completions", json={**body, "model": f"{SKILL}@9"}, headers=auth)
    assert r.status_code == 404 and "no version 9" in r.json()["error"]["message"]
    # Metrics: requests by skill, version and lane; queue gauges.
    m = httpx.get(g.url + "/metrics").text
    assert f'distill_gateway_requests_total{{lane="' in m and f'skill="{SKILL}"' in m
    assert 'distill_gateway_queue_lost{queue="traffic"} 0.0' in m and "distill_gateway_escalation_rate" in m
    # The token never appears in the traffic table.
    g.gateway.traffic.flush()
    assert b"tok-b" not in (tmp_path / "traffic.db").read_bytes()


def test_always_escalate_and_unreachable_teacher(teacher_skill, trained_adapter, tmp_path, run_gateway, fake_teacher):
    from registry import Registry

    reg = Registry()
    publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    g = run_gateway(_cfg(tmp_path, overrides={"ticket-triage": {"escalation": "always"}}, teacher_timeout_s=5))
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": TICKETS[:2]}, timeout=60)
    assert [p["lane"] for p in r.json()["predictions"]] == ["escalate", "escalate"]
    fake_teacher.stop()  # the teacher goes away: valid SLM answers come back marked degraded
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": [TICKETS[0]]}, timeout=60)
    p = r.json()["predictions"][0] if r.status_code == 200 else None
    if p is not None:
        assert p["lane"] == "degraded" and p["degraded_reason"]
    else:  # the small model's own answer was invalid: 503 with the reason
        assert r.status_code == 503 and "teacher" in r.json()["error"]["message"]


@pytest.mark.skipif(not pg_up(), reason="PostgreSQL does not answer on 127.0.0.1:5432")
def test_the_loop_end_to_end_on_postgres(teacher_skill, trained_adapter, tiny_model_path, tmp_path, run_gateway):
    """publish -> serve -> traffic in PostgreSQL -> feedback -> refresh -> promote -> answers switch version."""
    import sqlalchemy as sa
    import yaml

    from core.skills import load_skill
    from flows.refresh import refresh_stage
    from registry import Registry

    reg = Registry()
    v1 = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    table = "traffic_" + uuid.uuid4().hex[:8]
    g = run_gateway(_cfg(tmp_path, traffic_url=PG, traffic_table=table, poll_s=0.2))
    # Lanes: the trained adapter keeps its valid answers; version 2 (random adapter, invalid answers) is promoted later.
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": TICKETS}, timeout=60)
    preds = r.json()["predictions"]
    lanes = {p["lane"] for p in preds}
    kept = [p for p in preds if p["lane"] == "keep"]
    assert kept, preds
    # An always-escalating request through the candidate alias would need another version; use feedback instead.
    rid = kept[0]["request_id"]
    r = httpx.post(g.url + "/v1/feedback", json={"id": rid, "verdict": "corrected", "answer": "account"})
    assert r.status_code == 202
    r = httpx.post(g.url + "/v1/feedback", json={"id": "req-unknown", "verdict": "accepted"})
    assert r.status_code == 404
    # Promote a version whose answers are invalid: from then on requests escalate to the teacher, none fails.
    v2 = publish(reg, random_adapter(tiny_model_path, tmp_path / "rand"), routing_with_threshold(None, "keep_all_valid"),
                 "r2", alias=None)
    statuses, versions = [], []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            r = httpx.post(g.url + "/v1/completions", json={"model": SKILL, "prompt": TICKETS[0]}, timeout=60)
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions.append(r.json()["distill"]["version"])

    with cf.ThreadPoolExecutor(3) as ex:
        futs = [ex.submit(client) for _ in range(3)]
        time.sleep(1.0)
        reg.promote(SKILL, v2, reason="test")
        end = time.time() + 60
        while time.time() < end and v2 not in versions:
            time.sleep(0.2)
        time.sleep(0.5)
        stop.set()
        for f in futs:
            f.result()
    assert set(statuses) == {200}, statuses
    assert v1 in versions and v2 in versions and versions.index(v2) > versions.index(v1)
    assert versions[-1] == v2
    g.gateway.traffic.flush()
    # The rows in PostgreSQL.
    engine = sa.create_engine(PG)
    with engine.connect() as c:
        rows = {r.id: r for r in c.execute(sa.text(f"select * from {table}"))}
    assert rows[rid].reference_source == "human" and rows[rid].reference == "account" and rows[rid].accepted
    srcs = {r.reference_source for r in rows.values()}
    assert {"human", "student", "llm"} <= srcs, srcs
    assert all(r.created_at is not None and r.version in (v1, v2) for r in rows.values())
    # The pipeline's refresh reads the table as-is: human and teacher rows become candidates, student rows are refused.
    path = teacher_skill / SKILL / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["gates"] = {**cfg.get("gates", {}), "replay": {"source": "sql", "url": PG, "table": table,
                                                       "columns": {"reference_source": "reference_source"}}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    skill = load_skill(SKILL, "tiny", root=teacher_skill)
    run = tmp_path / "run"
    run.mkdir()
    out = refresh_stage(skill, run, [], [])
    rej = [json.loads(x) for x in (run / "refresh_rejected.jsonl").read_text().splitlines()]
    stats = json.loads((run / "refresh_stats.json").read_text())
    students = {i for i, r in rows.items() if r.reference_source == "student"}
    trainable = {i for i, r in rows.items() if r.reference_source in ("llm", "human") and r.accepted}
    assert rid in trainable and any(rows[i].reference_source == "llm" for i in trainable)
    assert stats["candidates"] == len(trainable)  # the settled row and every teacher-answered row
    refused = {x["detail"]["traffic_id"] for x in rej if x["reason"] == "student_output"}
    assert refused == students and stats["student_refused"] == len(students)
    # Candidates then meet the same filters as teacher data (here: eval tickets, so contamination drops them).
    dropped = {x["detail"].get("traffic_id") or x["example"]["meta"].get("traffic_id") for x in rej
               if x["reason"] != "student_output"}
    assert {i for i in trainable} <= dropped | {e.meta.get("traffic_id") for e in out.kept}
    with engine.begin() as c:
        c.execute(sa.text(f"drop table {table}"))
    engine.dispose()
