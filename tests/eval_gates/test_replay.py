"""Traffic replay: JSONL and SQL sources, malformed records, reproducible samples."""

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.records import DataError
from core.skills import load_skill
from eval_gates.replay import load_traffic, replay_items, replay_sample

REPO = Path(__file__).resolve().parents[2]
SKILL = load_skill("ticket-triage", root=REPO / "seeds")
# The JSONL reader alone (the shipped skills read the gateway's table beside it: tests/eval_gates/test_traffic_store.py).
CFG = SKILL.config.model_copy(update={"gates": SKILL.config.gates.model_copy(
    update={"replay": SKILL.config.gates.replay.model_copy(update={"source": "traffic.jsonl"})})})
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def test_traffic_log_loads_and_samples_only_accepted_reproducibly():
    recs = load_traffic(REPO / "seeds" / "ticket-triage" / "traffic.jsonl", CFG)
    assert len(recs) >= 20 and not recs.skipped
    assert any(not r.accepted for r in recs) and any(r.reference_source == "human" for r in recs)
    a, b = replay_sample(recs, 10, seed=1), replay_sample(recs, 10, seed=1)
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 10
    assert [r.id for r in replay_sample(recs, 10, seed=2)] != [r.id for r in a]
    assert all(r.accepted for r in a) and [r.timestamp for r in a] == sorted(r.timestamp for r in a)
    recent = replay_sample(recs, 5, seed=0, recent=5)
    newest = sorted((r for r in recs if r.accepted), key=lambda r: r.timestamp)[-5:]
    assert [r.id for r in recent] == [r.id for r in newest]


def test_malformed_lines_are_skipped_with_file_line_and_reason(tmp_path):
    p = tmp_path / "traffic.jsonl"
    good = {"id": "t1", "timestamp": "2026-11-01T00:00:00Z", "request": "x y z", "reference": "bug",
            "reference_source": "llm", "accepted": True}
    lines = [json.dumps(good), json.dumps({**good, "id": "t2", "accepted": "yes"}), "{not json",
             json.dumps({**good, "id": "t4", "reference": "sales"}), json.dumps([1, 2]), "",
             json.dumps({**good, "id": "t1"}), json.dumps({**good, "id": "t7", "request": " "}),
             json.dumps({**good, "id": "t8"})]
    p.write_text("\n".join(lines) + "\n")
    log = load_traffic(p, CFG)
    assert [r.id for r in log] == ["t1", "t8"]
    assert [(s.where, s.reason) for s in log.skipped] == [
        (f"{p}:2", "'accepted' must be true or false"),
        (f"{p}:3", "invalid JSON (Expecting property name enclosed in double quotes at column 2)"),
        (f"{p}:4", "reference 'sales' is not one of the labels ['billing', 'bug', 'feature_request', 'account', 'other']"),
        (f"{p}:5", "expected a JSON object, got list"),
        (f"{p}:1", f"duplicate id 't1': superseded by the newer copy at {p}:7"),  # same time: the later line
        (f"{p}:8", "'request' must be a non-empty string"),
    ]
    s = log.summary()
    assert s["records"] == 2 and s["skipped"] == 6 and s["source"] == str(p)
    with pytest.raises(DataError, match=r"missing traffic log .*gates\.replay\.source"):
        load_traffic(tmp_path / "nope.jsonl", CFG)


def test_json_skill_requests_become_canonical_json_text(tmp_path):
    cfg = load_skill("tool-calling", root=REPO / "seeds").config if (REPO / "seeds" / "tool-calling").is_dir() else None
    if cfg is None:
        pytest.skip("seeds/tool-calling is not there yet")
    p = tmp_path / "t.jsonl"
    req = {"request": "Weather in  Paris?", "tools": []}
    ref = {"name": "get_weather", "arguments": {"city": "Paris"}}
    p.write_text(json.dumps({"id": "a", "timestamp": "2026-01-01", "request": req, "reference": json.dumps(ref),
                             "accepted": True}) + "\n"
                 + json.dumps({"id": "b", "timestamp": "2026-01-01", "request": "not json", "reference": ref,
                               "accepted": True}) + "\n")
    log = load_traffic(p, cfg)
    assert log[0].request == json.dumps(req, separators=(",", ":")) and log[0].reference_source == "unknown"
    assert json.loads(log[0].reference) == ref
    assert log.skipped[0].reason == "'request' is not valid JSON"


def _fill(engine, table, now):
    import sqlalchemy as sa

    t = sa.Table(table, sa.MetaData(), sa.Column("req_id", sa.Integer, primary_key=True), sa.Column("request", sa.Text),
                 sa.Column("reference", sa.Text), sa.Column("accepted", sa.Boolean), sa.Column("created_at", sa.DateTime))
    t.create(engine)
    rows = [{"req_id": i, "request": f"ticket number {i} about an invoice", "reference": "billing",
             "accepted": i % 5 != 0, "created_at": now - timedelta(minutes=i)} for i in range(1, 31)]
    rows += [{"req_id": 31, "request": None, "reference": "bug", "accepted": True, "created_at": now},
             {"req_id": 32, "request": "ok text", "reference": "sales", "accepted": True, "created_at": now}]
    with engine.begin() as c:
        c.execute(t.insert(), rows)
    return t


def _check_sql(skill, expected_where_prefix):
    items, log = replay_items(skill)
    assert len(log) == 30 and len(log.skipped) == 2
    reasons = {s.where.rsplit(":", 1)[1]: s.reason for s in log.skipped}
    assert reasons["31"] == "'request' must be a non-empty string"
    assert reasons["32"].startswith("reference 'sales' is not one of the labels")
    assert all(s.where.startswith(expected_where_prefix) for s in log.skipped)
    assert len(items) == 6 and all(e.source == "traffic" and e.meta["accepted"] for e in items)
    again, _ = replay_items(skill)
    assert [e.id for e in again] == [e.id for e in items]  # reproducible
    return items


def _sql_skill(tmp_path, url, table):
    import shutil

    import yaml

    root = tmp_path / "seeds"
    shutil.copytree(REPO / "seeds" / "ticket-triage", root / "ticket-triage")
    path = root / "ticket-triage" / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["gates"]["replay"] = {"source": "sql", "table": table, "sample": 6, "recent": 20,
                              "columns": {"id": "req_id"}, **({"url": url} if url else {})}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_skill("ticket-triage", root=root)


def test_sqlite_source_is_the_default_url(tmp_path):
    import sqlalchemy as sa

    skill = _sql_skill(tmp_path, None, "traffic")
    engine = sa.create_engine(f"sqlite:///{skill.folder / 'traffic.db'}")
    _fill(engine, "traffic", datetime(2026, 11, 1, 12, 0))
    engine.dispose()
    items = _check_sql(skill, "sqlite:///")
    assert all(int(e.id) <= 25 for e in items)  # the 20 most recent accepted rows (ids 1..25 minus multiples of 5)


def test_sql_config_errors_name_the_key(tmp_path):
    import sqlalchemy as sa

    skill = _sql_skill(tmp_path, None, "missing_table")
    sa.create_engine(f"sqlite:///{skill.folder / 'traffic.db'}").connect().close()
    with pytest.raises(DataError, match=r"no table 'missing_table' \(gates\.replay\.table\)"):
        replay_items(skill)
    skill = _sql_skill(tmp_path / "b", None, "traffic")
    engine = sa.create_engine(f"sqlite:///{skill.folder / 'traffic.db'}")
    sa.Table("traffic", sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("request", sa.Text)).create(engine)
    engine.dispose()
    with pytest.raises(DataError, match=r"gates\.replay\.columns\.id='req_id'.*gates\.replay\.columns\.reference="):
        replay_items(skill)


def test_postgresql_source(tmp_path, pg_engine):
    import sqlalchemy as sa

    table = f"traffic_{uuid.uuid4().hex[:12]}"
    t = _fill(pg_engine, table, datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc).replace(tzinfo=None))
    try:
        skill = _sql_skill(tmp_path, PG_URL, table)
        items = _check_sql(skill, "postgresql+psycopg://postgres@127.0.0.1:5432/test#" + table)
        assert all(e.input.startswith("ticket number") for e in items)
    finally:
        t.drop(pg_engine)
    assert not sa.inspect(pg_engine).has_table(table)


def test_traffic_already_trained_on_is_never_replayed(tmp_path):
    """Continuous refresh adds accepted traffic to the pool; the replay gate must not score on it."""
    from types import SimpleNamespace

    from core.skills import load_config
    from eval_gates.replay import replay_items

    repo = Path(__file__).resolve().parents[2]
    folder = repo / "seeds" / "ticket-triage"
    skill = SimpleNamespace(config=load_config(folder), folder=folder, name="ticket-triage",
                            traffic_path=lambda: folder / "traffic.jsonl")
    first, traffic = replay_items(skill)
    trained = {e.id for e in first[:10]}
    again, _ = replay_items(skill, trained)
    assert again and not trained & {e.id for e in again}
    assert len(traffic) >= len(again)
