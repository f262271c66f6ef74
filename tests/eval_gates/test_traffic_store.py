"""One traffic store by default (issue 34 items 1 and 4): rows the gateway's writer stores are what the replay
gate and the refresh read with no configuration, beside the shipped traffic.jsonl; personal data reaches
neither the table nor a training example; `distill traffic import|export|stats` on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.records import DataError
from core.skills import load_skill
from eval_gates.replay import load_skill_traffic, replay_items
from tests.eval_gates.conftest import PG_URL

SKILL = "ticket-triage"
NOW = datetime.now(timezone.utc).replace(microsecond=0)

# Served requests, each with personal data of one kind (the values must never be stored or trained on).
SERVED = [
    ("g-mail", "Please send the refund for the double charge to my other address jane.roe@example.org, the "
               "card statement shows both charges", "billing", "llm", True),
    ("g-card", "You charged my card 4111 1111 1111 1111 twice for the annual plan renewal this morning, "
               "one of them needs to go back", "billing", "llm", True),
    ("g-phone", "Our admin cannot sign in since yesterday, the reset code never arrives on +44 20 7946 0958 "
                "even after several tries", "account", "human", True),
    ("g-iban", "Move the monthly direct debit for our team subscription to IBAN DE89 3704 0044 0532 0130 00 "
               "starting next month", "billing", "llm", True),
    ("g-ip", "The dashboard throws a server error for everyone behind our office gateway 203.0.113.7 and "
             "also from 2001:db8::ff00:42:8329", "bug", "llm", True),
]
VALUES = ["jane.roe@example.org", "4111 1111 1111 1111", "+44 20 7946 0958", "DE89 3704 0044 0532 0130 00",
          "203.0.113.7", "2001:db8::ff00:42:8329"]


def _row(ident, request, reference, source, accepted, minutes_ago, lane="escalate"):
    return {"id": ident, "created_at": NOW - timedelta(minutes=minutes_ago), "skill": SKILL, "version": 1,
            "request": request, "answer": reference, "slm_answer": reference, "slm_raw": f" {reference}",
            "confidence": -0.5, "lane": lane, "latency_ms": 3.0, "reference": reference,
            "reference_source": source, "accepted": accepted}


def _serve(skill, rows) -> None:
    """Rows through the gateway's writer, scrubbed as the gateway scrubs them (per skill, its privacy block)."""
    from core.privacy import scrubber_for
    from core.workdir import traffic_table_name, traffic_url
    from gateway.traffic import TrafficWriter

    w = TrafficWriter(traffic_url(), traffic_table_name, flush_ms=20,
                      scrub_for=lambda name: scrubber_for(skill.config.privacy))
    try:
        for r in rows:
            assert w.write(SKILL, dict(r))
        assert w.flush(30), w.last_error
        assert w.scrubbed == len(rows) and w.dropped == 0
    finally:
        w.close()


def _stored(url: str, table: str) -> list[dict]:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            t = sa.Table(table, sa.MetaData(), autoload_with=c)
            return [dict(r) for r in c.execute(sa.select(t)).mappings()]
    finally:
        engine.dispose()


def _assert_no_pii(text: str) -> None:
    for v in VALUES:
        assert v not in text, (v, text)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, skill_root, monkeypatch):
    """The default store: SQLite under DISTILL_HOME, or PostgreSQL through DISTILL_TRAFFIC_URL (a schema of its own)."""
    if request.param == "sqlite":
        from core.workdir import traffic_url

        yield traffic_url()
        return
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        engine.connect().close()
    except Exception as e:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 does not answer: {e}")
    schema = f"t34_{uuid.uuid4().hex[:10]}"
    with engine.begin() as c:
        c.execute(sa.text(f"create schema {schema}"))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    monkeypatch.setenv("DISTILL_TRAFFIC_URL", url)
    try:
        yield url
    finally:
        with engine.begin() as c:
            c.execute(sa.text(f"drop schema {schema} cascade"))
        engine.dispose()


def test_served_rows_are_what_the_default_replay_and_refresh_read(skill_root, store, tmp_path, caplog):
    from core.workdir import traffic_table_name
    from flows.refresh import refresh_stage

    skill = load_skill(SKILL, profile="tiny", root=skill_root)
    r = skill.config.gates.replay
    assert r.source == "gateway" and r.initial == "traffic.jsonl" and r.url is None  # no configuration
    shipped = [json.loads(x) for x in (skill_root / SKILL / "traffic.jsonl").read_text().splitlines()]
    first = shipped[0]
    rows = [_row(i, q, a, s, acc, 30 - n) for n, (i, q, a, s, acc) in enumerate(SERVED)]
    rows[0].update(answer="billing (cc jane.roe@example.org)", slm_raw=" billing, cc jane.roe@example.org")
    rows.append(_row("g-kept", "The export button on the reports page does nothing when I click it, write me at "
                               "kept.user@example.com", "bug", "student", None, 1, lane="keep"))
    # A newer copy of a shipped record (a reviewer's correction): the table's copy wins, the id is read once.
    rows.append({**_row(first["id"], first["request"], "other", "human", True, 2), "lane": "imported"})
    _serve(skill, rows)

    # What the table holds: placeholders, never the values (request, answer, slm_raw, reference).
    stored = {x["id"]: x for x in _stored(store, traffic_table_name(SKILL))}
    for x in stored.values():
        _assert_no_pii(json.dumps(x, default=str))
        assert "kept.user@example.com" not in x["request"]
    assert "<EMAIL_ADDRESS>" in stored["g-mail"]["request"] and "<CREDIT_CARD>" in stored["g-card"]["request"]
    assert "<PHONE_NUMBER>" in stored["g-phone"]["request"] and "<IBAN_CODE>" in stored["g-iban"]["request"]
    assert stored["g-ip"]["request"].count("<IP_ADDRESS>") == 2
    assert stored["g-mail"]["answer"] == "billing (cc <EMAIL_ADDRESS>)" and stored["g-mail"]["slm_raw"].endswith("cc <EMAIL_ADDRESS>")

    import logging

    caplog.set_level(logging.WARNING, logger="distill")
    log = load_skill_traffic(skill)
    # The gateway's kept answers are no reference, and not "malformed": no warning names them.
    assert not [r for r in caplog.records if "g-kept" in r.getMessage() or "malformed" in r.getMessage()]
    ids = {t.id for t in log}
    assert {i for i, *_ in SERVED} <= ids and "g-kept" not in ids  # the student's answer is never a reference
    assert len(log) == len(shipped) + len(SERVED)  # the shipped log and the table, one id once
    assert next(t for t in log if t.id == first["id"]).reference == "other"
    assert str(skill.folder / "traffic.jsonl") in log.source and "traffic_ticket_triage" in log.source
    assert any("g-kept" in s.where and "never a reference" in s.reason for s in log.skipped)
    assert any(first["id"] in s.reason and "superseded" in s.reason for s in log.skipped)
    replay, traffic = replay_items(skill)
    assert traffic.summary()["records"] == len(shipped) + len(SERVED)
    # The whole accepted log as the hold-out: the served requests are in it, scrubbed (the shipped log's address too).
    every = skill.config.gates.replay.model_copy(update={"sample": 1000})
    skill.config = skill.config.model_copy(update={"gates": skill.config.gates.model_copy(update={"replay": every})})
    replay, _ = replay_items(skill)
    assert {i for i, *_ in SERVED} <= {e.id for e in replay}
    for e in replay:
        _assert_no_pii(e.input)
        assert "tomasz@verdant.pl" not in e.input
    assert "<EMAIL_ADDRESS>" in next(e.input for e in replay if e.id == "traffic-028")

    out = refresh_stage(skill, tmp_path / "run", [], pool=[])
    s = out.summary()
    # Every row is new on the first run: the shipped ones, the served ones and the student's (refused by name).
    assert s["new_records"] == len(shipped) + len(SERVED) + 1 and s["student_refused"] == 1
    refused = {r.detail.get("traffic_id"): r for r in out.rejected if r.reason == "student_output"}
    assert refused["g-kept"].detail["where"].endswith("traffic_ticket_triage:g-kept")
    kept = {e.meta["traffic_id"]: e for e in out.kept}
    assert {i for i, *_ in SERVED} <= set(kept)
    for e in out.kept:
        _assert_no_pii(e.input + e.output)
    assert "<CREDIT_CARD>" in kept["g-card"].input and kept["g-card"].meta["traffic_log"].endswith("traffic_ticket_triage")
    assert kept[shipped[1]["id"]].meta["traffic_log"].endswith("traffic.jsonl")


def test_no_store_yet_is_the_shipped_log_alone_and_nothing_is_created(skill_root):
    from core.workdir import work_dir

    skill = load_skill(SKILL, profile="tiny", root=skill_root)
    log = load_skill_traffic(skill)
    assert len(log) == 40 and not (work_dir() / "traffic.db").exists()  # reading never creates the database
    cfg = skill.config.model_copy(update={"gates": skill.config.gates.model_copy(update={"replay": skill.config.gates.replay.model_copy(update={"initial": None})})})
    skill.config = cfg
    assert len(load_skill_traffic(skill)) == 0  # initial: null reads the table alone


def test_an_unreachable_store_fails_naming_the_key(skill_root, monkeypatch):
    monkeypatch.setenv("DISTILL_TRAFFIC_URL", "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2")
    skill = load_skill(SKILL, profile="tiny", root=skill_root)
    with pytest.raises(DataError, match=r"(?s)127\.0\.0\.1:1/none.*cannot read traffic .*\(DISTILL_TRAFFIC_URL, or set gates\.replay\.url\)"):
        load_skill_traffic(skill)


def _pii_log(path: Path) -> Path:
    lines = [{"id": f"imp-{i}", "timestamp": f"2026-12-0{1 + n % 5}T10:00:00Z", "request": q, "reference": a,
              "reference_source": s, "accepted": acc} for n, (i, q, a, s, acc) in enumerate(SERVED)]
    lines.append({"id": "imp-student", "timestamp": "2026-12-05T11:00:00Z", "request": "It froze again at login",
                  "reference": None, "reference_source": "student", "accepted": False})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_import_export_stats_round_trip(skill_root, store, tmp_path):
    from gateway import store as st

    skill = load_skill(SKILL, profile="tiny", root=skill_root)
    table = "traffic_ticket_triage"
    shipped = skill_root / SKILL / "traffic.jsonl"
    assert st.import_jsonl(skill, shipped, store, table) == {"read": 40, "inserted": 40, "already": 0}
    assert st.import_jsonl(skill, shipped, store, table) == {"read": 40, "inserted": 0, "already": 40}  # idempotent
    got = st.import_jsonl(skill, _pii_log(tmp_path / "pii.jsonl"), store, table)
    assert got == {"read": 6, "inserted": 6, "already": 0}
    for x in _stored(store, table):
        _assert_no_pii(json.dumps(x, default=str))  # imported text is scrubbed too

    s = st.stats(store, table)
    assert s["rows"] == 46 and s["lane"] == {"imported": 46}
    assert s["reference_source"] == {"human": 5, "llm": 40, "student": 1}
    assert s["accepted"] == {"false": 5, "true": 41} and s["verified"] == {"null": 46}
    assert s["first"] == "2026-11-01T08:14:07Z" and s["last"] == "2026-12-05T11:00:00Z"

    buf = io.StringIO()
    assert st.export_jsonl(store, table, buf, skill.config) == 46
    exported = tmp_path / "out.jsonl"
    exported.write_text(buf.getvalue())
    back = {json.loads(x)["id"]: json.loads(x) for x in buf.getvalue().splitlines()}
    original = {json.loads(x)["id"]: json.loads(x) for x in shipped.read_text().splitlines()}
    from core.privacy import scrubber_for

    scrub = scrubber_for(skill.config.privacy)
    assert back["traffic-028"]["request"].startswith("Please give <EMAIL_ADDRESS> the Admin role")  # shipped: an address
    for i, rec in original.items():  # the shipped records come back as they went in, scrubbed
        assert {k: back[i][k] for k in rec} == {**rec, "request": scrub.value(rec["request"])}
    # ... and an export imports into another table as the same rows.
    assert st.import_jsonl(skill, exported, store, "traffic_copy")["inserted"] == 46
    key = lambda rows: sorted((r["id"], r["request"], r["reference"], r["reference_source"], r["accepted"]) for r in rows)
    assert key(_stored(store, "traffic_copy")) == key(_stored(store, table))
    # The default read sees the imported rows (the shipped ones once).
    assert len(load_skill_traffic(skill)) == 40 + 5


def test_a_bad_import_names_every_bad_line_and_writes_nothing(skill_root, store, tmp_path):
    from gateway import store as st

    skill = load_skill(SKILL, profile="tiny", root=skill_root)
    good = {"id": "b1", "timestamp": "2026-12-01T10:00:00Z", "request": "The app crashes on start", "reference": "bug",
            "reference_source": "llm", "accepted": True}
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join([json.dumps(good), "{oops", json.dumps({**good, "id": "b3", "reference": "sales"}),
                            json.dumps({**good, "id": "b4", "timestamp": "yesterday"}), json.dumps(good)]) + "\n")
    with pytest.raises(DataError) as e:
        st.import_jsonl(skill, p, store, "traffic_ticket_triage")
    msg = str(e.value)
    assert "4 bad line(s), nothing imported" in msg
    for line in (f"{p}:2: invalid JSON", f"{p}:3: reference 'sales' is not one of the labels",
                 f"{p}:4: 'timestamp' 'yesterday' is not an ISO-8601 time", f"{p}:5: duplicate id 'b1' (first on line 1)"):
        assert line in msg
    assert st.stats(store, "traffic_ticket_triage")["rows"] == 0


def test_the_cli_imports_exports_and_counts(skill_root, tmp_path, capsys):
    from flows.cli import main

    assert main(["traffic", "import", SKILL, str(_pii_log(tmp_path / "pii.jsonl"))]) == 0
    assert "6 imported, 0 already in traffic_ticket_triage" in capsys.readouterr().out
    assert main(["traffic", "stats", SKILL]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 6
    assert main(["traffic", "export", SKILL]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and all("<" in json.loads(x)["request"] or "froze" in x for x in lines)
    assert main(["traffic", "import", SKILL, str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: no such file" in capsys.readouterr().err


def test_a_json_skills_log_round_trips_as_json(skill_root, tmp_path):
    from core.privacy import scrubber_for
    from core.workdir import traffic_url
    from gateway import store as st

    skill = load_skill("tool-calling", root=skill_root)
    shipped = skill_root / "tool-calling" / "traffic.jsonl"
    assert st.import_jsonl(skill, shipped, traffic_url(), "traffic_tool_calling")["inserted"] == 40
    buf = io.StringIO()
    assert st.export_jsonl(traffic_url(), "traffic_tool_calling", buf, skill.config) == 40
    back = {json.loads(x)["id"]: json.loads(x) for x in buf.getvalue().splitlines()}
    scrub = scrubber_for(skill.config.privacy)
    for line in shipped.read_text().splitlines():
        rec = json.loads(line)
        got = back[rec["id"]]
        assert isinstance(got["request"], dict) and got["request"] == scrub.value(rec["request"])
        assert got["reference"] == scrub.value(rec["reference"]) and got["accepted"] == rec["accepted"]
    # The default read sees each call once: the shipped log and its imported copy in the table.
    log = load_skill_traffic(skill)
    from eval_gates.replay import read_traffic_jsonl

    assert len(log) == len(read_traffic_jsonl(shipped, skill.config)) == len({t.id for t in log})
    assert all(t.log.endswith("traffic_tool_calling") for t in log)  # equal times: the table's copy
