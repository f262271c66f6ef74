"""Time behaves as real traffic demands (issue 15, items 12-15): timestamps compared as instants,
a watermark that no future row can poison and that still takes late decisions, NULL times and
duplicate ids resolved the same way on SQLite, PostgreSQL and JSONL."""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from core.skills import load_skill
from eval_gates.replay import load_skill_traffic, replay_items, replay_sample

REPO = Path(__file__).resolve().parents[2]
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TEXT = "I was charged twice for the seat this month, please refund one of the charges"


@pytest.fixture(autouse=True)
def _own_work_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "work"))  # each test its own pool and watermark


def _skill(tmp_path: Path, rows: list[dict] | None = None, replay: dict | None = None):
    root = tmp_path / "seeds"
    shutil.copytree(REPO / "seeds" / "ticket-triage", root / "ticket-triage")
    folder = root / "ticket-triage"
    if rows is not None:
        (folder / "traffic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if replay:
        cfg = yaml.safe_load((folder / "skill.yaml").read_text())
        cfg["gates"]["replay"].update(replay)
        (folder / "skill.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_skill("ticket-triage", root=root)


def _rec(id_, ts, reference="billing", accepted=True, request=None, source="llm"):
    return {"id": id_, "timestamp": ts, "request": request or f"{TEXT} ({id_})", "reference": reference,
            "reference_source": source, "accepted": accepted}


def test_most_recent_is_chosen_by_instant_not_by_string(tmp_path):
    skill = _skill(tmp_path, [_rec("plus5", "2026-11-20T10:00:00+05:00"), _rec("utc", "2026-11-20T06:00:00Z"),
                              _rec("naive", "2026-11-20T05:30:00"), _rec("bad", "yesterday at noon")])
    log = load_skill_traffic(skill)
    assert [s.reason.split(" (")[0] for s in log.skipped] == ["'timestamp' 'yesterday at noon' is not an ISO-8601 time"]
    assert [r.id for r in replay_sample(log, n=1, recent=1)] == ["utc"]  # 06:00Z is after 05:00Z (10:00+05:00)
    assert [r.id for r in replay_sample(log, n=3)] == ["plus5", "naive", "utc"]  # in time order


def test_duplicate_ids_keep_the_newest_copy_in_jsonl(tmp_path):
    skill = _skill(tmp_path, [_rec("a", "2026-11-20T10:00:00Z", "bug"), _rec("a", "2026-11-20T11:00:00Z", "billing"),
                              _rec("b", "2026-11-20T12:00:00Z", "account"), _rec("b", "2026-11-20T09:00:00Z", "bug"),
                              _rec("c", "2026-11-20T12:00:00Z", "bug"), _rec("c", "2026-11-20T12:00:00Z", "other")])
    log = load_skill_traffic(skill)
    assert {r.id: r.reference for r in log} == {"a": "billing", "b": "account", "c": "other"}
    assert len(log.skipped) == 3 and all("duplicate id" in s.reason for s in log.skipped)
    where = {s.where.rsplit(":", 1)[1] for s in log.skipped}
    assert where == {"1", "4", "5"}  # the superseded copies are the ones recorded


def _sql_rows(engine, table, rows, text_time=False):
    import sqlalchemy as sa

    t = sa.Table(table, sa.MetaData(), sa.Column("id", sa.Text), sa.Column("request", sa.Text),
                 sa.Column("reference", sa.Text), sa.Column("accepted", sa.Boolean),
                 sa.Column("created_at", sa.Text if text_time else sa.DateTime))
    t.create(engine)
    with engine.begin() as c:
        c.execute(t.insert(), rows)
    return t


def _sql_case(base: datetime, text_time=False):
    """10 rows without a time, 8 valid ones, a duplicate id whose newer copy corrects it."""
    def at(minutes):
        ts = base + timedelta(minutes=minutes)
        return ts.isoformat() if text_time else ts
    rows = [{"id": f"null-{i}", "request": f"{TEXT} {i}", "reference": "billing", "accepted": True, "created_at": None}
            for i in range(10)]
    rows += [{"id": f"ok-{i}", "request": f"{TEXT} ok {i}", "reference": "billing", "accepted": True,
              "created_at": at(i)} for i in range(8)]
    rows += [{"id": "dup", "request": f"{TEXT} dup", "reference": "bug", "accepted": True, "created_at": at(-50)},
             {"id": "dup", "request": f"{TEXT} dup", "reference": "account", "accepted": True, "created_at": at(-40)}]
    return rows


@pytest.mark.parametrize("text_time", [False, True])
def test_sqlite_null_times_and_duplicates(tmp_path, text_time):
    import sqlalchemy as sa

    skill = _skill(tmp_path, replay={"source": "sql", "table": "traffic", "sample": 2, "recent": 2})
    engine = sa.create_engine(f"sqlite:///{skill.folder / 'traffic.db'}")
    _sql_rows(engine, "traffic", _sql_case(datetime(2026, 11, 20, 12, 0), text_time), text_time)
    engine.dispose()
    items, _ = replay_items(skill)
    assert [e.id for e in items] == ["ok-6", "ok-7"]
    whole = _skill(tmp_path / "whole", replay={"source": "sql", "table": "traffic", "recent": None,
                                               "url": f"sqlite:///{skill.folder / 'traffic.db'}"})
    log = load_skill_traffic(whole)
    assert {r.id: r.reference for r in log}["dup"] == "account"  # the newer copy
    assert sum("'timestamp' must be a non-empty string" in s.reason for s in log.skipped) == 10


@pytest.mark.parametrize("text_time", [False, True])
def test_postgresql_gives_the_same_rows_as_sqlite(tmp_path, pg_engine, text_time):
    table = f"traffic_{uuid.uuid4().hex[:12]}"
    t = _sql_rows(pg_engine, table, _sql_case(datetime(2026, 11, 20, 12, 0), text_time), text_time)
    try:
        skill = _skill(tmp_path, replay={"source": "sql", "table": table, "sample": 2, "recent": 2, "url": PG_URL})
        items, _ = replay_items(skill)
        assert [e.id for e in items] == ["ok-6", "ok-7"]  # SQLite gave the same (test above)
        whole = _skill(tmp_path / "whole", replay={"source": "sql", "table": table, "recent": None, "url": PG_URL})
        log = load_skill_traffic(whole)
        assert {r.id: r.reference for r in log}["dup"] == "account"
    finally:
        t.drop(pg_engine)


# ---- the refresh watermark ------------------------------------------------------------------------------------------


def test_a_future_row_is_reported_and_cannot_poison_the_watermark(tmp_path):
    from flows.refresh import commit_refresh, committed_watermark, refresh_stage

    now = datetime.now(timezone.utc)
    past = (now - timedelta(hours=2)).isoformat()
    skill = _skill(tmp_path, [_rec("poison", "2099-01-01T00:00:00Z"), _rec("real-1", past)])
    out = refresh_stage(skill, tmp_path / "run1", [], pool=[])
    s = out.summary()
    assert s["future_timestamp"] == 1 and [e.meta["traffic_id"] for e in out.kept] == ["real-1"]
    assert any(r.reason == "future_timestamp" and r.detail["traffic_id"] == "poison" for r in out.rejected)
    commit_refresh(skill.name, tmp_path / "run1")
    mark = committed_watermark(skill.name)
    assert datetime.fromisoformat(mark.timestamp) <= now  # never past the read time
    # a real row logged after the run is read by the next one; the poison row is reported again
    later = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
    with (skill.folder / "traffic.jsonl").open("a") as f:
        f.write(json.dumps(_rec("real-2", later, request="The mobile app logs me out every time I rotate it")) + "\n")
    out2 = refresh_stage(skill, tmp_path / "run2", [], pool=[])
    assert [e.meta["traffic_id"] for e in out2.kept] == ["real-2"] and out2.summary()["future_timestamp"] == 1


def test_a_row_accepted_after_a_run_saw_it_is_taken_by_the_next_run_once(tmp_path):
    from flows.refresh import commit_refresh, committed_watermark, refresh_stage

    ts = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    old = (datetime.now(timezone.utc) - timedelta(days=30)).isoformat()
    rows = [_rec("review", ts, accepted=False), _rec("stale", old, accepted=False,
                                                     request="Where do I download last year's invoices as PDF files")]
    skill = _skill(tmp_path, rows)
    out = refresh_stage(skill, tmp_path / "run1", [], pool=[])
    assert out.kept == [] and {r.reason for r in out.rejected} == {"not_accepted"}
    commit_refresh(skill.name, tmp_path / "run1")
    assert list(committed_watermark(skill.name).pending) == ["review"]  # "stale" is past the settle window
    # a reviewer accepts both an hour later
    rows = [{**r, "accepted": True} for r in rows]
    (skill.folder / "traffic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out2 = refresh_stage(skill, tmp_path / "run2", [], pool=[])
    assert [e.meta["traffic_id"] for e in out2.kept] == ["review"] and out2.summary()["settled_late"] == 1
    commit_refresh(skill.name, tmp_path / "run2")
    assert committed_watermark(skill.name).pending == {}
    out3 = refresh_stage(skill, tmp_path / "run3", [], pool=[])
    assert out3.kept == [] and out3.summary()["new_records"] == 0  # taken once


def test_a_student_answer_corrected_after_a_run_saw_it_is_taken_by_the_next_run(tmp_path):
    """The gateway logs student rows; a reviewer's correction (feedback) turns one into a human answer."""
    from flows.refresh import commit_refresh, refresh_stage

    ts = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    row = _rec("slm-1", ts, reference="bug", source="student")
    skill = _skill(tmp_path, [row])
    out = refresh_stage(skill, tmp_path / "run1", [], pool=[])
    assert out.kept == [] and [r.reason for r in out.rejected] == ["student_output"]
    commit_refresh(skill.name, tmp_path / "run1")
    corrected = {**row, "reference": "billing", "reference_source": "human"}
    (skill.folder / "traffic.jsonl").write_text(json.dumps(corrected) + "\n")
    out2 = refresh_stage(skill, tmp_path / "run2", [], pool=[])
    assert [(e.meta["traffic_id"], e.output, e.meta["reference_source"]) for e in out2.kept] == \
        [("slm-1", "billing", "human")]
