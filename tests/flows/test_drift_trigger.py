"""Drift triggers a run: prefect.yaml's trigger matches what the gateway's monitor emits, the event reaches a
Prefect API and runs the skill's deployment there (once per `within`), and `distill status` shows it all."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml

from core.skills import list_skills, load_config
from gateway.drift import EVENT, DriftEvent, DriftMonitor, DriftWorker, TriggerStore, resource_id
from tests.conftest import REPO
from tests.gateway.test_drift import ROUTING, SKILL, _inputs, _publish_stub

DEPLOYED = REPO / "prefect.yaml"


def _skill_deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load(DEPLOYED.read_text())["deployments"]
            if d["entrypoint"] == "flows/pipeline.py:distill_skill"}


def test_prefect_yaml_runs_each_skill_on_its_drift_event():
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from flows.deployments import build_deployments

    declared = _skill_deployments()
    served = {d.name: d for d in build_deployments(REPO / "seeds")}
    for name in list_skills(REPO / "seeds"):
        d = declared[name]
        assert d["schedules"], "the trigger is beside the cron, not instead of it"
        [t] = d["triggers"]
        emitted = DriftEvent(name, 1, "novelty", time.time(), {}).prefect_kwargs()
        assert t["type"] == "event" and t["enabled"] is True
        assert t["expect"] == [emitted["event"]] == [EVENT]
        assert t["match"] == {"prefect.resource.id": emitted["resource"]["prefect.resource.id"]} == \
            {"prefect.resource.id": resource_id(name)}
        assert t["parameters"] == d["parameters"] == {"params": {"skill": name}}
        # Prefect's own cool-down: reactive, the first event fires and the next `within` seconds are ignored.
        cooldown = load_config(REPO / "seeds" / name).drift.cooldown_minutes
        assert t["posture"] == "Reactive" and t["threshold"] == 1 and t["within"] == cooldown * 60
        parsed = DeploymentEventTrigger.model_validate({k: v for k, v in t.items() if k != "type"})
        assert parsed.within == timedelta(minutes=cooldown)
        # `distill serve` builds the same trigger from the skill file.
        [s] = served[name].triggers
        assert (s.expect, s.match.root, s.within, s.threshold, s.posture, s.parameters) == \
            (parsed.expect, parsed.match.root, parsed.within, parsed.threshold, parsed.posture, parsed.parameters)
    assert not served["refresh-all"].triggers and "triggers" not in \
        next(d for d in yaml.safe_load(DEPLOYED.read_text())["deployments"] if d["name"] == "refresh-all")


def _wait(what, fn, timeout=90.0):
    end = time.time() + timeout
    while time.time() < end:
        got = fn()
        if got:
            return got
        time.sleep(1.0)
    pytest.fail(f"{what}: not within {timeout} s")


def test_the_drift_event_reaches_prefect_and_runs_the_deployment(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events.filters import EventFilter, EventNameFilter

    from core.config import DriftConfig
    from flows.deployments import build_deployments
    from gateway.drift import emit_to_prefect

    dep = {d.name: d for d in build_deployments(REPO / "seeds")}[SKILL]
    dep_id = dep.apply()  # the deployment and its trigger's automation, as `prefect deploy` makes them
    url = f"sqlite:///{tmp_path}/traffic.db"
    m = DriftMonitor()
    m.set_version(SKILL, 4, DriftConfig(window_requests=20, min_requests=10, sustain_requests=2, sustain_minutes=0),
                  ROUTING, "threshold", -0.5)
    w = DriftWorker(m, TriggerStore(url))  # the gateway's emitter: prefect.events.emit_event
    for _ in range(30):  # every request escalated: the teacher share leaves [0.1, 0.3]
        w.request(SKILL, 4, "escalate", "I was charged twice")
    assert w.flush(30)
    w.close()
    [sent] = w.events
    assert TriggerStore(url).last()[SKILL]["emitted"] is True

    def events(client):
        page = client.read_events(EventFilter(event=EventNameFilter(name=[EVENT])), limit=10)
        return [e for e in page.events if e.resource.id == resource_id(SKILL)]

    def runs(client):
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))

    with get_client(sync_client=True) as client:
        [ev] = _wait("the drift event in Prefect's event store", lambda: events(client))
        assert ev.event == "distill.drift.detected" and ev.resource.id == "distill.skill.ticket-triage"
        assert ev.resource["distill.version"] == "4" and ev.resource["distill.signal"] == "teacher_share"
        assert ev.payload["signal"] == "teacher_share" and ev.payload["value"] == 1.0 and ev.payload["n"] >= 10
        assert ev.payload["band"]["high"] == 0.3 and ev.payload["version"] == 4
        [run] = _wait("a run of distill-skill/ticket-triage started by the trigger", lambda: runs(client))
        assert run.parameters == {"params": {"skill": SKILL}}
        # A second event inside `within` (another gateway replica, or one whose cool-down state was lost):
        # Prefect ignores it, no second run.
        assert emit_to_prefect(DriftEvent(SKILL, 4, "novelty", time.time(), {"signal": "novelty"}))
        _wait("the second event in the store", lambda: len(events(client)) == 2)
        time.sleep(5)
        assert len(runs(client)) == 1


def test_distill_status_prints_version_signals_and_last_trigger(tmp_path, monkeypatch, capsys):
    import sqlalchemy as sa

    from filters.novelty import build_novelty
    from flows.cli import main
    from gateway.traffic import traffic_table
    from registry import Registry

    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "work"))
    monkeypatch.delenv("DISTILL_REGISTRY", raising=False)
    monkeypatch.delenv("DISTILL_TRAFFIC_URL", raising=False)
    ev = _inputs("eval.jsonl")
    v = _publish_stub(Registry(), tmp_path, ROUTING, build_novelty(_inputs("seeds.jsonl") + ev[:50], ev[50:]), "r1")
    url = f"sqlite:///{tmp_path}/work/traffic.db"
    engine = sa.create_engine(url)
    t = traffic_table(sa.MetaData(), "traffic_ticket_triage")
    now = datetime.now(timezone.utc)
    rows = [{"id": f"r{i}", "created_at": now - timedelta(minutes=60 - i), "skill": SKILL, "version": v,
             "request": x, "lane": "escalate" if i % 2 else "keep", "reference_source": "student",
             "verified": (i % 3 != 0) if i < 30 else None}
            for i, x in enumerate((_inputs("traffic.jsonl", "request") * 2)[:60])]
    with engine.begin() as conn:
        t.create(conn)
        conn.execute(sa.insert(t), rows)
    TriggerStore(url).record(DriftEvent(SKILL, v, "teacher_share", now.timestamp() - 60,
                                        {"value": 0.5, "signal": "teacher_share"}), emitted=True)

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + out)
    lines = out.splitlines()
    assert lines[0].startswith(f"{SKILL}  version {v}  last trigger ") and "(teacher_share 0.500, version 1, emitted)" \
        in lines[0] and "cool-down until" in lines[0]
    share = next(x for x in lines if x.strip().startswith("teacher_share"))
    assert "0.500" in share and "[0.100, 0.300]" in share and " 60 " in share and "out since" in share
    verify = next(x for x in lines if x.strip().startswith("verify_error"))
    assert "0.333  [0.173, 0.528]" in verify and "<= 0.150" in verify and " 30 " in verify and "out since" in verify
    novelty = next(x for x in lines if x.strip().startswith("novelty"))
    assert "<= 0.300" in novelty and " 60 " in novelty and novelty.rstrip().endswith("in")

    assert main(["status", SKILL, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert row["skill"] == SKILL and row["version"] == v and row["last_trigger"]["signal"] == "teacher_share"
    assert row["signals"]["teacher_share"]["value"] == 0.5 and row["signals"]["teacher_share"]["state"] == "out"
    assert row["signals"]["verify_error"]["n"] == 30 and row["signals"]["novelty"]["state"] == "in"
