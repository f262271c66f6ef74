"""The gateway's capture is the pipeline's traffic (issue 34 items 1 and 4): requests sent to a gateway on the
default store, with no configuration on either side, are scrubbed of personal data before they are written
and are what the next run's replay and refresh read; the entity list is the skill's own."""

from __future__ import annotations

import json

import httpx
import yaml

from tests.gateway.conftest import SKILL, StubEngine, publish, random_adapter, routing_with_threshold

TICKETS = {
    "mail": "I was charged twice this month, please refund one charge and send the receipt to ana.lima@example.com",
    "card": "Refund the duplicate charge on card 4111 1111 1111 1111, I only bought one seat for the team plan",
    "phone": "My login code never arrives, the number on the account is +1 (415) 555-2671, please fix my password",
}
VALUES = ["ana.lima@example.com", "4111 1111 1111 1111", "+1 (415) 555-2671"]


def _gateway(run_gateway, tiny_model_path, tmp_path):
    from gateway import GatewayConfig
    from gateway.service import Gateway
    from registry import Registry

    publish(Registry(), random_adapter(tiny_model_path, tmp_path / "adapter"), routing_with_threshold(None, "keep_all_valid"), "r1")
    # No traffic_url: the default store, the one `distill run` reads. Every request goes to the (fake) teacher,
    # whose answers are written as accepted references.
    cfg = GatewayConfig.model_validate({"skills": [SKILL], "max_wait_ms": 20, "poll_s": 0.3, "teacher_timeout_s": 20,
                                        "traffic_flush_ms": 20, "overrides": {SKILL: {"escalation": "always"}}})
    return run_gateway(cfg, Gateway(cfg, engine=StubEngine()))


def _send(g) -> dict[str, str]:
    ids = {}
    for key, text in TICKETS.items():
        r = httpx.post(g.url + "/v1/chat/completions", json={"model": SKILL, "messages": [{"role": "user", "content": text}]},
                       timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["distill"]["lane"] == "escalate"
        ids[key] = r.json()["distill"]["request_id"]
    assert g.gateway.traffic.flush(30)
    return ids


def _rows() -> dict[str, dict]:
    import sqlalchemy as sa

    from core.workdir import traffic_table_name, traffic_url

    engine = sa.create_engine(traffic_url())
    try:
        with engine.connect() as c:
            t = sa.Table(traffic_table_name(SKILL), sa.MetaData(), autoload_with=c)
            return {r["id"]: dict(r) for r in c.execute(sa.select(t)).mappings()}
    finally:
        engine.dispose()


def test_served_requests_are_scrubbed_and_read_by_the_next_run(teacher_skill, tiny_model_path, tmp_path, run_gateway):
    from core.skills import load_skill
    from eval_gates.replay import replay_items
    from flows.refresh import refresh_stage

    g = _gateway(run_gateway, tiny_model_path, tmp_path)
    ids = _send(g)
    rows = _rows()
    assert set(ids.values()) <= set(rows)
    for row in rows.values():
        for v in VALUES:
            assert v not in json.dumps(row, default=str)
    assert rows[ids["mail"]]["request"].endswith("send the receipt to <EMAIL_ADDRESS>")
    assert "card <CREDIT_CARD>, I only" in rows[ids["card"]]["request"]
    assert "account is <PHONE_NUMBER>, please" in rows[ids["phone"]]["request"]
    assert all(rows[i]["reference_source"] == "llm" and rows[i]["accepted"] for i in ids.values())

    # The next run, with the shipped skill.yaml's replay block (no source, no url): the served requests are in it.
    skill = load_skill(SKILL, profile="tiny", root=teacher_skill)
    replay, traffic = replay_items(skill)
    assert set(ids.values()) <= {t.id for t in traffic} and len(traffic) == 40 + len(ids)
    out = refresh_stage(skill, tmp_path / "run", [], pool=[])
    assert out.stats["new_records"] == 40 + len(ids)
    kept = {e.meta["traffic_id"]: e for e in out.kept}
    assert set(ids.values()) <= set(kept)
    assert "<CREDIT_CARD>" in kept[ids["card"]].input and kept[ids["card"]].output == "billing"
    for e in out.kept:
        assert not any(v in e.input or v in (e.output or "") for v in VALUES)


def test_the_skills_entity_list_reaches_the_gateway(teacher_skill, tiny_model_path, tmp_path, run_gateway):
    path = teacher_skill / SKILL / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["privacy"] = {"entities": ["EMAIL_ADDRESS"]}  # this skill scrubs addresses only
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    g = _gateway(run_gateway, tiny_model_path, tmp_path)
    ids = _send(g)
    rows = _rows()
    assert "<EMAIL_ADDRESS>" in rows[ids["mail"]]["request"]
    assert "4111 1111 1111 1111" in rows[ids["card"]]["request"]  # not in this skill's list: kept
    assert g.gateway.traffic.scrubbed >= len(ids) and g.gateway.traffic.scrub_failures == 0


def test_without_its_skill_yaml_the_gateway_scrubs_as_the_versions_skill_json_says(teacher_skill, tiny_model_path,
                                                                                    tmp_path, run_gateway, monkeypatch):
    from gateway import GatewayConfig
    from gateway.service import Gateway

    path = teacher_skill / SKILL / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["privacy"] = {"entities": ["EMAIL_ADDRESS"]}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    from registry import Registry

    publish(Registry(), random_adapter(tiny_model_path, tmp_path / "adapter"), routing_with_threshold(None, "keep_all_valid"), "r1")
    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(tmp_path / "elsewhere"))  # the serving host has no skill folders
    gcfg = GatewayConfig.model_validate({"skills": [SKILL], "max_wait_ms": 20, "poll_s": 0.3, "traffic_flush_ms": 20,
                                         "teachers": False, "overrides": {SKILL: {"escalation": "never"}}})
    g = run_gateway(gcfg, Gateway(gcfg, engine=StubEngine()))
    assert g.gateway.scrubbers[SKILL].entities == ["EMAIL_ADDRESS"]  # skill.json's privacy block
    for text in (TICKETS["mail"], TICKETS["card"]):
        r = httpx.post(g.url + "/v1/chat/completions", json={"model": SKILL, "messages": [{"role": "user", "content": text}]},
                       timeout=60)
        assert r.status_code == 200 and r.json()["distill"]["lane"] == "keep"
    assert g.gateway.traffic.flush(30)
    requests = {row["request"] for row in _rows().values()}
    assert TICKETS["mail"].replace("ana.lima@example.com", "<EMAIL_ADDRESS>") in requests
    assert TICKETS["card"] in requests  # CREDIT_CARD is not in this skill's list
