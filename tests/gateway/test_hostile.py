"""The gateway against inputs from public bug reports of OpenAI-compatible servers (issue 32): each
test is one kind of fault, tried on every route, lane and store it can reach. Most run on
StubEngine (no decode needed to show the fault); the stores are real SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures as cf
import gzip
import json
import math
import sqlite3
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import REPO
from tests.gateway.conftest import SKILL, StubEngine, publish, routing_with_threshold
from tests.gateway.test_gateway import PG, pg_up

TICKETS = [json.loads(x)["input"] for x in (REPO / "seeds" / SKILL / "eval.jsonl").read_text().splitlines()[:4]]
TABLE = "traffic_" + SKILL.replace("-", "_")


def _cfg(tmp_path, **kw):
    from gateway import GatewayConfig

    base = {"skills": [SKILL], "max_wait_ms": 20, "poll_s": 0.3, "traffic_url": f"sqlite:///{tmp_path}/traffic.db",
            "teacher_timeout_s": 20, "traffic_flush_ms": 20, "teachers": False}
    base.update(kw)
    return GatewayConfig.model_validate(base)


def _stub(run_gateway, cfg, engine=None, registry=None, require_ready=True):
    from gateway.service import Gateway

    engine = engine or StubEngine()
    g = run_gateway(cfg, Gateway(cfg, engine=engine, registry=registry), require_ready)
    return g, engine


def _envelope(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err) and isinstance(err["message"], str) and err["code"], err
    assert err["type"] == ("server_error" if status == 500 else err["type"])
    if param is not None:
        assert err["param"] == param, err
    return err


def _chat(text):
    return {"model": SKILL, "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def v1(skill_root, trained_adapter):
    from registry import Registry

    return publish(Registry(), trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")


# --- 8. auth -------------------------------------------------------------------------------------------------------


def test_tokens_are_compared_as_bytes_and_guard_every_path_but_the_probes(v1, tmp_path, run_gateway, monkeypatch):
    monkeypatch.setenv("GW_TOKENS", "tok-a,tök-b")
    g, _ = _stub(run_gateway, _cfg(tmp_path, auth_tokens_env="GW_TOKENS"))
    for bad in ("Bearer tok-é".encode(), "Bearer tök-b".encode("latin-1"), b"Bearer", b"Basic tok-a", b"tok-a"):
        r = httpx.post(g.url + "/v1/chat/completions", json=_chat(TICKETS[0]), headers={"Authorization": bad})
        assert _envelope(r, 401)["type"] == "authentication_error"
    assert httpx.get(g.url + "/v1/models", headers={"Authorization": "Bearer tök-b".encode()}).status_code == 200
    ok = {"Authorization": "Bearer tok-a"}
    for path in ("/metrics", "/docs", "/openapi.json", "/v1/models", "/nope"):
        _envelope(httpx.get(g.url + path), 401)
        assert httpx.get(g.url + path, headers=ok).status_code == (404 if path == "/nope" else 200)
    for path in ("/healthz", "/readyz"):
        assert httpx.get(g.url + path).status_code == 200


# --- 9 and 18. the body and the error envelope ----------------------------------------------------------------------


def test_body_bound_counts_bytes_and_every_error_is_the_envelope(v1, tmp_path, run_gateway):
    g, engine = _stub(run_gateway, _cfg(tmp_path, max_body_bytes=100_000), StubEngine(poison="POISON"))
    url = g.url + "/v1/completions"
    big = json.dumps({"model": SKILL, "prompt": "x" * 200_000}).encode()

    def chunked(data: bytes, n: int = 16384):
        for i in range(0, len(data), n):
            yield data[i: i + n]

    _envelope(httpx.post(url, content=chunked(big), headers={"content-type": "application/json"}), 413, "body")
    _envelope(httpx.post(url, content=big, headers={"content-type": "application/json"}), 413, "body")
    small = json.dumps({"model": SKILL, "prompt": TICKETS[0]}).encode()
    assert httpx.post(url, content=chunked(small, 7), headers={"content-type": "application/json"}).status_code == 200
    # Not UTF-8; compressed; not JSON; no such route; wrong method; a missing field; an unknown model; a crash.
    _envelope(httpx.post(url, content='{"model": "ticket-triage", "prompt": "café"}'.encode("latin-1"),
                         headers={"content-type": "application/json"}), 400, "body")
    _envelope(httpx.post(url, content=gzip.compress(small), headers={"content-type": "application/json",
                                                                     "content-encoding": "gzip"}), 415, "content-encoding")
    _envelope(httpx.post(url, content=b'{"model": ', headers={"content-type": "application/json"}), 400, "body")
    _envelope(httpx.get(g.url + "/v1/nope"), 404)
    _envelope(httpx.get(g.url + "/v1/chat/completions"), 405)
    _envelope(httpx.post(g.url + "/v1/chat/completions", json={"model": SKILL}), 422, "messages")
    _envelope(httpx.post(g.url + "/v1/chat/completions", json={"model": SKILL, "messages": [{"content": "x"}]}), 422,
              "messages[0].role")
    _envelope(httpx.post(url, json={"model": "nope", "prompt": "x"}), 404, "model")
    _envelope(httpx.post(g.url + "/v1/feedback", json={"id": "x", "verdict": "maybe"}), 422, "verdict")
    err = _envelope(httpx.post(url, json={"model": SKILL, "prompt": "POISON"}), 500)
    assert err["type"] == "server_error" and "Traceback" not in err["message"]


# --- 10. text that cannot be encoded; one bad input in a batch -----------------------------------------------------


def test_unencodable_text_is_refused_and_its_batch_mates_are_answered(v1, tmp_path, run_gateway):
    g, engine = _stub(run_gateway, _cfg(tmp_path, max_wait_ms=300))
    bad = r'{"model": "ticket-triage", "messages": [{"role": "user", "content": "charged twice \ud800 refund"}]}'

    def post(body):
        if isinstance(body, str):
            return httpx.post(g.url + "/v1/chat/completions", content=body.encode(),
                              headers={"content-type": "application/json"}, timeout=30)
        return httpx.post(g.url + "/v1/chat/completions", json=body, timeout=30)

    with cf.ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(post, [_chat(TICKETS[0]), bad, _chat(TICKETS[1]), _chat(TICKETS[2])]))
    assert [r.status_code for r in rs] == [200, 422, 200, 200]
    err = _envelope(rs[1], 422, "messages[0].content")
    assert "surrogate" in err["message"]
    for path, body, param in (
            ("/v1/completions", r'{"model": "ticket-triage", "prompt": "a \udfff b"}', "prompt"),
            (f"/v1/skills/{SKILL}:predict", r'{"inputs": ["fine", "a \ud800"]}', "inputs[1]"),
            ("/v1/feedback", r'{"id": "req-\ud800", "verdict": "accepted"}', "id")):
        _envelope(httpx.post(g.url + path, content=body.encode(), headers={"content-type": "application/json"}), 422,
                  param)
    # A model name that cannot be encoded is an unknown model, not a crash.
    _envelope(httpx.post(g.url + "/v1/completions", content=rb'{"model": "t\ud800", "prompt": "x"}',
                         headers={"content-type": "application/json"}), 404, "model")
    g.gateway.traffic.flush()
    with sqlite3.connect(tmp_path / "traffic.db") as c:
        assert c.execute(f"select count(*) from {TABLE}").fetchone()[0] == 3


def test_an_input_that_fails_its_batch_fails_alone(v1, tmp_path, run_gateway):
    g, engine = _stub(run_gateway, _cfg(tmp_path, max_wait_ms=300), StubEngine(poison="POISON"))
    inputs = [TICKETS[0], "POISON " + TICKETS[1], TICKETS[2], TICKETS[3]]
    with cf.ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(lambda x: httpx.post(g.url + "/v1/completions", json={"model": SKILL, "prompt": x}, timeout=30),
                         inputs))
    assert [r.status_code for r in rs] == [200, 500, 200, 200]
    assert max(engine.batches) > 1  # they did share a batch, which failed; each was then decoded alone
    # :predict with the poison among its inputs: the call fails, the other calls are untouched.
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": inputs}, timeout=30)
    _envelope(r, 500)


def test_batcher_skips_cancelled_items_and_isolates_a_poison_item():
    from gateway.batcher import DynamicBatcher

    seen = []

    def fn(items):
        seen.append(list(items))
        time.sleep(0.3)
        if "poison" in items:
            raise ValueError("poison")
        return [x.upper() for x in items]

    b = DynamicBatcher(fn, max_batch=8, max_wait_ms=50)
    try:
        a = b.submit("a")
        time.sleep(0.1)  # a's batch is running
        x, y = b.submit("x"), b.submit("y")
        assert x.cancel() and not a.cancel()  # x still queued: cancelled; a running: cannot be
        assert a.result(5) == "A" and y.result(5) == "Y" and b.skipped == 1
        assert ["x"] not in seen and all("x" not in s for s in seen)
        futs = [b.submit(v) for v in ("p", "poison", "q")]
        assert futs[0].result(5) == "P" and futs[2].result(5) == "Q"
        with pytest.raises(ValueError):
            futs[1].result(5)
        assert b.inflight == 0
    finally:
        b.close()


# --- 11. poison rows in the traffic stores --------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_poison_row_is_cleaned_or_dropped_and_every_later_row_is_written(store, tmp_path):
    import sqlalchemy as sa

    from gateway.traffic import TrafficWriter

    if store == "postgresql" and not pg_up():
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    url = PG if store == "postgresql" else f"sqlite:///{tmp_path}/t.db"
    table = "traffic_" + uuid.uuid4().hex[:8]
    w = TrafficWriter(url, lambda s: table, batch=16, flush_ms=300)
    try:
        def row(i, request="fine"):
            return {"id": i, "skill": SKILL, "version": 1, "request": request, "answer": "billing", "lane": "keep",
                    "reference_source": "student", "slm_raw": request}

        # One batch: a surrogate, a NUL, a duplicate id (refused by the database itself) and good rows around them.
        for r in (row("r1"), row("r2", "charged twice \ud800 refund"), row("r3", "a\x00b"), row("r1", "dup"), row("r5")):
            assert w.write(SKILL, r)
        assert w.flush(30)
        assert w.write(SKILL, row("r6")) and w.update(SKILL, "r3", {"feedback": "accepted\x00"}) and w.flush(30)
        engine = sa.create_engine(url)
        with engine.connect() as c:
            got = {r.id: r for r in c.execute(sa.text(f"select id, request, slm_raw, feedback from {table}"))}
        assert sorted(got) == ["r1", "r2", "r3", "r5", "r6"]
        assert got["r1"].request == "fine" and got["r2"].request == "charged twice \ufffd refund"
        assert got["r3"].request == "a\ufffdb" and got["r3"].feedback == "accepted\ufffd"
        assert all("\x00" not in (r.request + r.slm_raw) for r in got.values())
        assert w.cleaned == 3 and w.dropped == 1 and w.written == 5
        with engine.begin() as c:
            c.execute(sa.text(f"drop table {table}"))
        engine.dispose()
    finally:
        w.close()


@pytest.mark.skipif(not pg_up(), reason="PostgreSQL does not answer on 127.0.0.1:5432")
def test_a_nul_in_a_request_does_not_stop_capture_on_postgres(v1, tmp_path, run_gateway):
    import sqlalchemy as sa

    table = "traffic_" + uuid.uuid4().hex[:8]
    g, _ = _stub(run_gateway, _cfg(tmp_path, traffic_url=PG, traffic_table=table))
    ids = []
    for x in ("charged\x00 twice", TICKETS[0], TICKETS[1]):
        r = httpx.post(g.url + "/v1/completions", json={"model": SKILL, "prompt": x}, timeout=30)
        assert r.status_code == 200
        ids.append(r.headers["x-distill-request-id"])
    assert g.gateway.traffic.flush(30)
    engine = sa.create_engine(PG)
    with engine.connect() as c:
        got = dict(c.execute(sa.text(f"select id, request from {table}")).fetchall())
    assert got == {ids[0]: "charged\ufffd twice", ids[1]: TICKETS[0], ids[2]: TICKETS[1]}
    m = httpx.get(g.url + "/metrics").text
    assert 'distill_gateway_store_cleaned{store="traffic"} 1.0' in m
    with engine.begin() as c:
        c.execute(sa.text(f"drop table {table}"))
    engine.dispose()


# --- 12, 13, 14. loading: readiness, one load per version, bounded residency ----------------------------------------


def test_readiness_names_the_production_version_that_did_not_load(v1, trained_adapter, tmp_path, run_gateway):
    from registry import Registry

    reg = Registry()
    weights = reg.resolve(SKILL, version=v1) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0")  # the checksum fails
    g, _ = _stub(run_gateway, _cfg(tmp_path, poll_s=0.2), require_ready=False)
    r = httpx.get(g.url + "/readyz")
    err = _envelope(r, 503)
    assert f"{SKILL}@{v1}" in err["message"] and "sha256" in err["message"]
    assert err["not_loaded"][SKILL]["version"] == v1
    # A good version promoted: ready again, serving it.
    v2 = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r2")
    deadline = time.time() + 30
    while time.time() < deadline and httpx.get(g.url + "/readyz").status_code != 200:
        time.sleep(0.2)
    assert httpx.get(g.url + "/readyz").json()["skills"] == {SKILL: v2}
    # Addressing the broken version: 503 naming it, not a 500.
    err = _envelope(httpx.post(g.url + "/v1/completions", json={"model": f"{SKILL}@{v1}", "prompt": "x"}), 503, "model")
    assert f"{SKILL}@{v1}" in err["message"]


def test_simultaneous_first_requests_load_a_version_once(v1, trained_adapter, tmp_path, run_gateway):
    from registry import Registry

    v2 = publish(Registry(), trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r2", alias=None)
    g, engine = _stub(run_gateway, _cfg(tmp_path), StubEngine(load_s=0.5))
    barrier = threading.Barrier(4)

    def ask(i):
        barrier.wait()
        return httpx.post(g.url + "/v1/chat/completions", json={**_chat(TICKETS[i]), "model": f"{SKILL}@{v2}"}, timeout=30)

    with cf.ThreadPoolExecutor(4) as ex:
        rs = list(ex.map(ask, range(4)))
    assert [r.status_code for r in rs] == [200] * 4, [r.text for r in rs]
    assert engine.loads[f"{SKILL}@{v2}"] == 1


def test_versions_loaded_on_demand_are_bounded_least_recently_used_first(v1, trained_adapter, tmp_path, run_gateway):
    from registry import Registry

    reg = Registry()
    vs = [publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), f"r{i}", alias=None)
          for i in range(2, 6)]
    g, engine = _stub(run_gateway, _cfg(tmp_path, max_versions=2, poll_s=0.2))

    def ask(v):
        r = httpx.post(g.url + "/v1/completions", json={"model": f"{SKILL}@{v}", "prompt": TICKETS[0]}, timeout=30)
        assert r.status_code == 200 and r.json()["distill"]["version"] == v

    def threads():
        return sorted(t.name for t in threading.enumerate() if t.name.startswith(f"batch-{SKILL}@") and t.is_alive())

    def settled(want):
        deadline = time.time() + 20
        while time.time() < deadline and (set(engine.loaded) != want or len(threads()) != len(want)):
            time.sleep(0.2)
        return set(engine.loaded), threads()

    for v in vs:
        ask(v)
    want = {f"{SKILL}@{v}" for v in (v1, vs[-2], vs[-1])}  # production and the two most recently used
    loaded, names = settled(want)
    assert loaded == want and names == sorted(f"batch-{k}" for k in want)
    assert engine.unloads[f"{SKILL}@{vs[0]}"] == 1 and engine.unloads[f"{SKILL}@{vs[1]}"] == 1
    ask(vs[0])  # unloaded is not gone: loaded again, and the least recently used one makes room
    loaded, _ = settled({f"{SKILL}@{v}" for v in (v1, vs[-1], vs[0])})
    assert loaded == {f"{SKILL}@{v}" for v in (v1, vs[-1], vs[0])} and engine.loads[f"{SKILL}@{vs[0]}"] == 2


# --- 15. non-finite confidence --------------------------------------------------------------------------------------


@pytest.mark.parametrize("conf", [float("-inf"), float("nan")])
def test_a_non_finite_confidence_is_null_and_escalates(conf, trained_adapter, tmp_path, run_gateway, teacher_skill,
                                                       fake_teacher):
    from registry import Registry
    from tests.gateway.conftest import teacher_answer

    publish(Registry(), trained_adapter, routing_with_threshold(-1.0), "r1")  # keeps confidences >= -1
    g, _ = _stub(run_gateway, _cfg(tmp_path, teachers=True), StubEngine(confidence=conf))
    r = httpx.post(g.url + "/v1/chat/completions", json=_chat(TICKETS[0]), timeout=30)
    assert r.status_code == 200, r.text
    d = r.json()["distill"]
    assert d["confidence"] is None and d["lane"] == "escalate" and r.headers["x-distill-confidence"] == ""
    assert r.json()["choices"][0]["message"]["content"] == teacher_answer("Ticket: " + TICKETS[0], {})
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": TICKETS[:2]}, timeout=30)
    assert r.status_code == 200 and [p["confidence"] for p in r.json()["predictions"]] == [None, None]
    with httpx.stream("POST", g.url + "/v1/completions", json={"model": SKILL, "prompt": TICKETS[1], "stream": True},
                      timeout=30) as s:
        events = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: {")]
    assert events[-1]["distill"]["confidence"] is None


def test_the_remote_engine_reads_a_minus_infinity_logprob_as_no_confidence(tmp_path):
    from core.config import SkillConfig
    from gateway.engine_openai import OpenAIEngine, answer_confidence
    from teachers.fakeserver import FakeOpenAIServer
    from tests.core import skillkit

    assert answer_confidence(" billing", {"tokens": [" billing"], "token_logprobs": [float("-inf")],
                                          "text_offset": [0]}) == (" billing", None)
    assert answer_confidence(" billing", {"tokens": [" billing"], "token_logprobs": ["x"], "text_offset": [0]})[1] is None

    class MinusInfinity(FakeOpenAIServer):
        @staticmethod
        def _choice(prompt, text, body, chat, index):
            c = FakeOpenAIServer._choice(prompt, text, body, chat, index)
            c["logprobs"] = {"tokens": [text], "token_logprobs": [-math.inf], "text_offset": [0]}
            return c  # aiohttp writes it as the bare -Infinity a real server sent

    cfg = SkillConfig.model_validate(skillkit.config("classification"))
    with MinusInfinity(answer=lambda p, b: cfg.labels[0]) as vllm:
        engine = OpenAIEngine(vllm.base_url, retries=0)
        (a,) = engine.decode("s@1", cfg, ["Input: x\nOutput:"], 8)
        engine.close()
    assert a.parsed == cfg.labels[0] and a.confidence is None
    assert a.prompt_tokens > 0 and a.completion_tokens > 0  # the server's per-choice token ids


# --- 17. a request that times out in a teacher batch ---------------------------------------------------------------


def test_a_timed_out_request_does_not_fail_its_teacher_batch_mates(v1, tmp_path, run_gateway, teacher_skill, fake_teacher):
    g, _ = _stub(run_gateway, _cfg(tmp_path, teachers=True, teacher_timeout_s=4.5,
                                   overrides={SKILL: {"escalation": "always"}}))
    httpx.post(g.url + "/v1/completions", json={"model": SKILL, "prompt": TICKETS[3]}, timeout=30)  # opens the teacher
    fake_teacher.delay_s = 3.0
    out = {}

    def ask(name, x, after):
        time.sleep(after)
        out[name] = httpx.post(g.url + "/v1/completions", json={"model": SKILL, "prompt": x}, timeout=30)

    threads = [threading.Thread(target=ask, args=a) for a in (("A", TICKETS[0], 0.0), ("B", TICKETS[1], 0.5),
                                                                ("C", TICKETS[2], 2.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fake_teacher.delay_s = 0.0
    # A: answered by the teacher in 3 s. B: queued behind A's batch, then batched with C; it times out
    # (degraded: the small model's valid answer). C: answered in time, with B's batch.
    assert out["A"].status_code == 200 and out["A"].headers["x-distill-lane"] == "escalate"
    assert out["B"].status_code == 200 and out["B"].headers["x-distill-lane"] == "degraded", out["B"].text
    assert out["C"].status_code == 200 and out["C"].headers["x-distill-lane"] == "escalate", out["C"].text


# --- 19. feedback ids ----------------------------------------------------------------------------------------------


def test_feedback_ids_are_the_ones_returned_and_unknown_ids_are_404(v1, tmp_path, run_gateway):
    g, _ = _stub(run_gateway, _cfg(tmp_path))
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": TICKETS[:2]}, timeout=30)
    ids = r.headers["x-distill-request-id"].split(",")
    assert ids == [p["request_id"] for p in r.json()["predictions"]] == r.json()["request_ids"] and len(set(ids)) == 2
    fb = g.url + "/v1/feedback"
    for i in ids:
        assert httpx.post(fb, json={"id": i, "verdict": "accepted"}).status_code == 202
    err = _envelope(httpx.post(fb, json={"id": r.json()["request_id"], "verdict": "accepted"}), 422, "id")
    assert err["ids"] == ids
    _envelope(httpx.post(fb, json={"id": "req-nope", "verdict": "accepted"}), 404, "id")
    _envelope(httpx.post(fb, json={"id": "req-nope", "verdict": "accepted", "skill": SKILL}), 404, "id")
    # An answer older than this process (not in its memory): found in the table with its skill.
    g.gateway.traffic.flush()
    g.gateway.recent.clear()
    _envelope(httpx.post(fb, json={"id": ids[0], "verdict": "rejected"}), 404, "id")
    assert httpx.post(fb, json={"id": ids[0], "verdict": "rejected", "skill": SKILL}).status_code == 202
    g.gateway.traffic.flush()
    with sqlite3.connect(tmp_path / "traffic.db") as c:
        got = dict(c.execute(f"select id, feedback from {TABLE}").fetchall())
    assert got == {ids[0]: "rejected", ids[1]: "accepted"}


# --- 20. registry reads off the event loop --------------------------------------------------------------------------


def test_registry_reads_never_block_the_event_loop(v1, trained_adapter, tmp_path, run_gateway):
    from registry import Registry

    class SlowStore(Registry):
        """An object store: each listing takes a second."""

        slow = False
        down = False
        calls = 0

        def versions(self, skill):
            if self.down:
                raise ConnectionError("the object store does not answer")
            if self.slow:
                SlowStore.calls += 1
                time.sleep(1.0)
            return super().versions(skill)

        def aliases(self, skill):
            if self.slow:
                SlowStore.calls += 1
                time.sleep(1.0)
            return super().aliases(skill)

    reg = SlowStore()
    v2 = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r2", alias="candidate")
    v3 = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r3", alias=None)
    v4 = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r4", alias=None)
    g, _ = _stub(run_gateway, _cfg(tmp_path, poll_s=3600), registry=reg)
    # candidate was read by the poller: answered without a registry read.
    SlowStore.slow = True
    t = time.perf_counter()
    r = httpx.post(g.url + "/v1/completions", json={"model": f"{SKILL}@candidate", "prompt": "x y"}, timeout=30)
    assert r.status_code == 200 and r.json()["distill"]["version"] == v2 and SlowStore.calls == 0
    assert time.perf_counter() - t < 0.9
    # A version number not loaded yet reads the registry (1 s), off the loop: a probe answers meanwhile.
    with cf.ThreadPoolExecutor(1) as ex:
        fut = ex.submit(httpx.post, g.url + "/v1/completions", json={"model": f"{SKILL}@{v3}", "prompt": "x y"},
                        timeout=30)
        time.sleep(0.3)
        t = time.perf_counter()
        assert httpx.get(g.url + "/healthz", timeout=5).status_code == 200
        probe = time.perf_counter() - t
        assert fut.result().status_code == 200
    assert probe < 0.5 and SlowStore.calls == 1, (probe, SlowStore.calls)
    SlowStore.slow = False
    # A store that does not answer: 503 naming the model (retry later), not a 500; loaded versions still answer.
    SlowStore.down = True
    err = _envelope(httpx.post(g.url + "/v1/completions", json={"model": f"{SKILL}@{v4}", "prompt": "x y"}), 503, "model")
    assert err["code"] == "registry_unavailable"
    assert httpx.post(g.url + "/v1/completions", json={"model": f"{SKILL}@{v3}", "prompt": "x y"}).status_code == 200
    SlowStore.down = False
