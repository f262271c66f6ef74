"""The gateway on loopback (uvicorn, a free port) over a real registry and the fake OpenAI teacher:
lanes, headers, 4xx errors, auth, health, metrics, traffic in PostgreSQL, feedback, the refresh
reading it, a hot swap under load, and a traffic database that stops answering (PostgreSQL behind a TCP proxy
that resets, refuses and hangs connections)."""

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
    # Metrics: requests by skill, version and lane; queue gauges (behind the token, like every path but the probes).
    assert httpx.get(g.url + "/metrics").status_code == 401
    m = httpx.get(g.url + "/metrics", headers=auth).text
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
    # Promote a version none of whose answers is confident enough (under its grammar every answer is a valid label,
    # so a threshold above any log-probability escalates them all): from then on requests go to the teacher, none fails.
    v2 = publish(reg, random_adapter(tiny_model_path, tmp_path / "rand"), routing_with_threshold(1.0), "r2", alias=None)
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


class PausableProxy:
    """A TCP forwarder on loopback to `target` that can be taken down: pause("refuse") resets every open
    connection and resets new ones at once (a database that went away); pause("hang") resets open ones and
    accepts new ones without ever answering (a partition: only the client's timeouts end the wait)."""

    def __init__(self, target=("127.0.0.1", 5432)):
        self.target, self.mode = target, "up"
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.hung: list[socket.socket] = []
        self.accepted = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @staticmethod
    def _reset(s: socket.socket) -> None:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
            s.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                mode = self.mode
                if mode == "hang":
                    self.hung.append(c)
                    continue
            if mode == "refuse":
                self._reset(c)
                continue
            try:
                u = socket.create_connection(self.target, timeout=5)
                u.settimeout(None)
            except OSError:
                self._reset(c)
                continue
            with self.lock:
                self.pairs.append((c, u))
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def pause(self, mode: str) -> None:
        with self.lock:
            self.mode = mode
            pairs, self.pairs = self.pairs, []
        for c, u in pairs:
            self._reset(c)
            self._reset(u)

    def resume(self) -> None:
        with self.lock:
            self.mode = "up"
            hung, self.hung = self.hung, []
        for c in hung:
            self._reset(c)

    def close(self) -> None:
        self.pause("refuse")
        self.resume()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def _metric(text: str, name: str, **labels) -> float:
    want = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    for line in text.splitlines():
        if line.startswith(name + want + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{want} not in /metrics")


@pytest.mark.skipif(not pg_up(), reason="PostgreSQL does not answer on 127.0.0.1:5432")
def test_traffic_database_outage_never_fails_or_slows_a_request(teacher_skill, trained_adapter, tmp_path, run_gateway):
    """PostgreSQL behind a TCP proxy that goes away (connections reset, then new ones hang) for several
    seconds: every request meanwhile answers 200 as fast as before, /metrics shows the writer's failures,
    backlog and losses, and once the database is back the held rows (up to the queue bound) are in the
    table; every row is either written or counted lost."""
    import statistics

    import sqlalchemy as sa

    from registry import Registry

    publish(Registry(), trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    proxy = PausableProxy()
    table = "traffic_" + uuid.uuid4().hex[:8]
    queue_bound, batch = 16, 4
    g = run_gateway(_cfg(tmp_path, traffic_url=f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test",
                         traffic_table=table, traffic_queue=queue_bound, traffic_batch=batch, traffic_flush_ms=20))
    engine = sa.create_engine(PG)  # straight to PostgreSQL, not through the proxy

    def count() -> int:
        with engine.connect() as c:
            return c.execute(sa.text(f"select count(*) from {table}")).scalar_one()

    def ask(inputs) -> tuple[float, list[str]]:
        t = time.perf_counter()
        r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": inputs}, timeout=60)
        dt = time.perf_counter() - t
        assert r.status_code == 200, r.text
        return dt, [p["request_id"] for p in r.json()["predictions"]]

    try:
        inputs = TICKETS[:4]
        ask(inputs)  # warm-up
        base = [ask(inputs)[0] for _ in range(4)]
        assert g.gateway.traffic.flush(30)
        before = count()
        assert before == 5 * len(inputs) and g.gateway.traffic.failures == 0

        # The outage: open connections reset, new ones refused, then new ones hang (connect_timeout ends each try).
        proxy.pause("refuse")
        t_out = time.monotonic()
        lat, ids, mid = [], [], None
        while len(lat) < 12 or time.monotonic() - t_out < 7.0:
            if time.monotonic() - t_out > 3.0 and proxy.mode == "refuse":
                proxy.pause("hang")
            dt, got = ask(inputs)
            lat.append(dt)
            ids += got
            if mid is None and len(ids) > queue_bound + batch:
                t = time.perf_counter()
                mid = httpx.get(g.url + "/metrics", timeout=10).text
                assert time.perf_counter() - t < 1.0
        during = httpx.get(g.url + "/metrics", timeout=10).text
        assert proxy.hung, "the writer never tried a connection while the proxy hung"
        # No request failed (asserted in ask), none waited on the database (a try takes up to connect_timeout=3 s).
        assert max(lat) < 2.5, (lat, base)
        assert statistics.median(lat) <= 3 * statistics.median(base) + 0.2, (lat, base)
        # /metrics: failures counted, the backlog is the queue bound plus the held batch, the overflow is lost.
        assert _metric(during, "distill_gateway_store_failures", store="traffic") >= 1
        assert _metric(mid, "distill_gateway_queue_depth", queue="traffic") > 0
        lost = _metric(during, "distill_gateway_queue_lost", queue="traffic")
        assert lost >= len(ids) - (queue_bound + batch) > 0
        assert _metric(during, "distill_gateway_queue_depth", queue="traffic") == len(ids) - lost
        assert count() == before  # nothing reached the table during the outage

        proxy.resume()
        assert g.gateway.traffic.flush(30), "the held rows were not written after the database came back"
        with engine.connect() as c:
            written = {r[0] for r in c.execute(sa.text(f"select id from {table}"))}
        new = written & set(ids)
        assert len(written) == before + len(new)
        # Every row of the outage is in the table or counted lost; the held ones (the queue bound) all arrived.
        assert len(new) == len(ids) - g.gateway.traffic.lost and len(new) >= queue_bound
        m = httpx.get(g.url + "/metrics", timeout=10).text
        assert _metric(m, "distill_gateway_queue_depth", queue="traffic") == 0
        assert _metric(m, "distill_gateway_queue_lost", queue="traffic") == g.gateway.traffic.lost == lost
        # Writing goes on as usual afterwards.
        _, after = ask(inputs)
        assert g.gateway.traffic.flush(30)
        assert count() == len(written) + len(after)
    finally:
        proxy.close()
        with engine.begin() as c:
            c.execute(sa.text(f"drop table if exists {table}"))
        engine.dispose()


def test_a_skill_published_after_the_start_is_served_at_the_next_poll(tiny_model_path, trained_adapter, tmp_path,
                                                                      run_gateway, skill_root):
    """`distill gateway` before the first publish (make serve before make demo): 404 naming no skill,
    then the skill once it is published, without a restart."""
    from registry import Registry

    g = run_gateway(_cfg(tmp_path, skills=None, teachers=False, poll_s=0.3))
    body = {"model": SKILL, "messages": [{"role": "user", "content": TICKETS[0]}]}
    r = httpx.post(g.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 404 and "known: none" in r.text
    v1 = publish(Registry(), trained_adapter, routing_with_threshold(None, "keep_all_valid"), "late")
    deadline = time.time() + 60
    while time.time() < deadline and httpx.get(g.url + "/readyz").json().get("skills", {}).get(SKILL) != v1:
        time.sleep(0.2)
    r = httpx.post(g.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code in (200, 503), r.text  # served by v1 (503: an invalid answer with no teacher attached)
    assert r.headers.get("x-distill-version", str(v1)) == str(v1)
