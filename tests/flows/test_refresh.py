"""Continuous refresh: new traffic -> filtered seed candidates, a watermark that advances only
when a run completes, never the student's own outputs, and the human floor still holds."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from core.records import Example, read_examples, write_examples
from core.skills import load_skill
from core.workdir import pool_dir
from eval_gates.replay import replay_items as sample_replay
from flows.refresh import (WATERMARK_FILE, Watermark, commit_refresh, committed_watermark, parse_timestamp,
                           pool_growth, refresh_stage)

FRESH = "The dark mode toggle resets itself whenever I reopen the desktop client on my laptop, very annoying"


def _append(skill_root: Path, *records: dict) -> None:
    path = skill_root / "ticket-triage" / "traffic.jsonl"
    path.write_text(path.read_text() + "".join(json.dumps(r) + "\n" for r in records))


def _rec(id_, ts, request, reference="bug", source="llm", accepted=True) -> dict:
    return {"id": id_, "timestamp": ts, "request": request, "reference": reference, "reference_source": source,
            "accepted": accepted}


def _teacher(skill, text="Where can I change the currency that my invoices are printed in for the EU branch?"):
    return Example(id="t-1", skill=skill.name, input=text, output="billing", source="teacher", teacher="tiny")


def test_refresh_keeps_new_accepted_traffic_and_refuses_what_must_not_train(skill_root, tmp_path):
    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    _append(skill_root,
            _rec("new-fresh", "2026-11-21T10:00:00Z", FRESH),
            _rec("new-human", "2026-11-21T10:05:00Z", "I was charged twice for the same seat this month, "
                 "please refund one of the two charges on card ending 4242", "billing", source="human"),
            _rec("new-student", "2026-11-21T10:06:00Z", "Export to CSV drops every column after the twentieth "
                 "one in the quarterly report", source="student"),
            _rec("new-rejected", "2026-11-21T10:07:00Z", "Please add a keyboard shortcut for archiving a "
                 "whole board at once", "bug", accepted=False),
            _rec("new-evalcopy", "2026-11-21T10:08:00Z", skill.eval_set[0].input, skill.eval_set[0].output),
            _rec("new-seedcopy", "2026-11-21T10:09:00Z", skill.seeds[0].input, skill.seeds[0].output))
    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)  # traffic is read from disk each time
    replay, traffic = sample_replay(skill)
    holdout = {e.id for e in replay}
    assert len(holdout) == 6
    run_dir = tmp_path / "run1"
    teacher = _teacher(skill)
    write_examples(run_dir / "accepted.jsonl", [teacher])

    out = refresh_stage(skill, run_dir, replay, pool=[])
    s = out.summary()
    by_id = {r.example.meta.get("traffic_id") or r.detail.get("traffic_id"): r for r in out.rejected}
    kept = {e.meta["traffic_id"]: e for e in out.kept}
    # Everything in the log is new on the first run; each record is kept or refused with a reason.
    assert s["since"] is None and s["new_records"] == len(traffic) + 1  # + the student's (the reader skips it)
    assert len(kept) + len(out.rejected) == s["new_records"]
    assert {"new-fresh", "new-human"} <= set(kept)
    assert by_id["new-student"].reason == "student_output"
    assert by_id["new-student"].detail["where"].endswith("traffic.jsonl:43")
    assert by_id["new-rejected"].reason == "not_accepted"
    assert by_id["new-evalcopy"].reason.startswith("eval_") and by_id["new-evalcopy"].stage == "contamination"
    assert by_id["new-seedcopy"].reason == "exact_duplicate"
    assert all(by_id[i].reason == "in_replay_holdout" for i in holdout)
    assert s["student_refused"] == 1 and s["malformed_in_log"] == 0
    assert s["not_accepted"] == sum(not t.accepted for t in traffic) >= 1
    # Lineage: traffic id and where the reference came from; never a student source.
    e = kept["new-human"]
    assert e.source == "traffic" and e.id == "traffic:new-human" and e.meta["reference_source"] == "human"
    assert e.meta["traffic_timestamp"] == "2026-11-21T10:05:00Z" and e.meta["traffic_log"].endswith("traffic.jsonl")
    # The run's accepted.jsonl now holds the teacher example and the kept traffic; the dedup
    # signatures of both are pending for commit_index.
    assert [x.id for x in read_examples(run_dir / "accepted.jsonl")] == [teacher.id] + [x.id for x in out.kept]
    import numpy as np

    with np.load(run_dir / "dedup_pending.npz") as z:
        assert set(map(str, z["ids"])) == {teacher.id} | {x.id for x in out.kept}
    # The watermark is pending in the run folder; the committed one has not moved.
    assert json.loads((run_dir / WATERMARK_FILE).read_text())["ids_at_timestamp"] == ["new-seedcopy"]
    assert committed_watermark(skill.name).timestamp is None
    # Re-running the stage on the same run folder gives the same result (no double traffic).
    again = refresh_stage(skill, run_dir, replay, pool=[])
    assert [x.id for x in again.kept] == [x.id for x in out.kept]
    assert len(read_examples(run_dir / "accepted.jsonl")) == 1 + len(out.kept)

    # After the run completes, only what arrived later is read.
    assert commit_refresh(skill.name, run_dir) == {"committed": True, "watermark": "2026-11-21T10:09:00+00:00"}
    pool = read_examples(run_dir / "accepted.jsonl")
    _append(skill_root,
            _rec("same-second", "2026-11-21T10:09:00Z", "My calendar sync with the mobile app duplicates every "
                 "recurring meeting twice since Monday"),
            _rec("later", "2026-11-22T08:00:00+00:00", "Could you please add two-factor login with hardware "
                 "security keys for the admin accounts", "feature_request"),
            _rec("late-fresh-copy", "2026-11-22T09:00:00Z", FRESH))
    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    run2 = tmp_path / "run2"
    out2 = refresh_stage(skill, run2, replay, pool=pool)
    s2 = out2.summary()
    assert s2["since"] == "2026-11-21T10:09:00+00:00" and s2["new_records"] == 3
    assert {e.meta["traffic_id"] for e in out2.kept} == {"same-second", "later"}
    assert [(r.reason, r.detail.get("matched_in")) for r in out2.rejected] == [("exact_duplicate", None)]
    assert s2["pool_before"] == {"teacher": 1, "traffic": len(out.kept)}


def test_the_watermark_never_moves_backwards_and_ties_keep_their_ids():
    w = Watermark().advanced([(parse_timestamp("2026-01-01T00:00:00Z"), "a"),
                              (parse_timestamp("2026-01-01T00:00:00+00:00"), "b")])
    assert w.ids_at_timestamp == ["a", "b"]
    assert not w.is_new(parse_timestamp("2026-01-01T00:00:00Z"), "a")
    assert w.is_new(parse_timestamp("2026-01-01T00:00:00Z"), "c")
    assert not w.is_new(parse_timestamp("2026-01-01T01:00:00+01:00"), "b")  # same instant in another zone
    assert not w.is_new(parse_timestamp("2025-12-31T23:59:59Z"), "e")
    assert w.advanced([(parse_timestamp("2025-12-31T00:00:00Z"), "old")]) == w
    assert parse_timestamp("2026-01-01T00:00:00") == parse_timestamp("2026-01-01T00:00:00Z")  # naive is UTC
    assert parse_timestamp("yesterday") is None


def test_pool_growth_counts_by_source():
    ex = [Example(id=str(i), skill="s", input="x", output="y", source=src)
          for i, src in enumerate(["teacher", "teacher", "traffic"])]
    g = pool_growth({"teacher": 1}, ex)
    assert g["before"] == {"teacher": 1} and g["after"] == {"teacher": 2, "traffic": 1}
    assert g["added"] == {"teacher": 1, "traffic": 1} and (g["total_before"], g["total_after"]) == (1, 3)


def test_sql_traffic_refuses_student_rows_by_name(tmp_path):
    """A SQL traffic table with a reference_source column: student rows are refused, the rest read
    in full (not capped by gates.replay.recent)."""
    import shutil

    import sqlalchemy as sa
    import yaml

    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "seeds"
    shutil.copytree(repo / "seeds" / "ticket-triage", root / "ticket-triage")
    path = root / "ticket-triage" / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["gates"]["replay"] = {"source": "sql", "sample": 2, "recent": 1, "columns": {"reference_source": "origin"}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    skill = load_skill("ticket-triage", root=root)
    engine = sa.create_engine(f"sqlite:///{skill.folder / 'traffic.db'}")
    t = sa.Table("traffic", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("request", sa.Text), sa.Column("reference", sa.Text), sa.Column("accepted", sa.Boolean),
                 sa.Column("created_at", sa.DateTime), sa.Column("origin", sa.Text))
    t.create(engine)
    now = datetime(2026, 11, 21, 12, 0)
    topics = ["invoice total is wrong", "app crashes on launch", "please add dark mode", "cannot reset password",
              "question about your office hours", "refund for the annual plan", "sync fails with error 500",
              "export to pdf feature"]
    rows = [{"id": i, "request": f"Hello, ticket {i}: {topics[i % 8]} since the update {i * 7} days ago, thanks",
             "reference": "bug", "accepted": True, "created_at": now + timedelta(minutes=i),
             "origin": "student" if i in (3, 5) else "llm"} for i in range(1, 9)]
    with engine.begin() as c:
        c.execute(t.insert(), rows)
    engine.dispose()
    replay, _ = sample_replay(skill)
    out = refresh_stage(skill, tmp_path / "run", replay, pool=[])
    s = out.summary()
    student = sorted(r.detail["traffic_id"] for r in out.rejected if r.reason == "student_output")
    assert student == ["3", "5"] and s["student_refused"] == 2
    assert all(r.detail["where"].startswith("sqlite:///") for r in out.rejected if r.reason == "student_output")
    assert s["new_records"] == 8 and len(out.kept) + len(out.rejected) == 8
    assert s["until"] == (now + timedelta(minutes=8)).replace(tzinfo=timezone.utc).isoformat()


def test_flow_trains_on_refreshed_traffic_and_commits_only_when_the_run_completes(skill_root, prefect_harness,
                                                                                 monkeypatch):
    import trainers.stage
    from flows.pipeline import RunParams, distill_skill

    s = distill_skill(RunParams(skill="ticket-triage", profile="tiny", run_id="refresh-1"))
    r = s["refresh"]
    run_dir = Path(s["run_dir"])
    assert r["kept"] > 0 and s["counts"]["traffic_accepted"] == r["kept"]
    assert r["pool"]["before"] == {} and r["pool"]["after"]["traffic"] == r["kept"]
    assert r["pool"]["total_after"] == s["counts"]["pool_after_run"]
    # The replay hold-out never enters the pool; the student's outputs never train.
    pool = read_examples(pool_dir("ticket-triage") / "accepted.jsonl")
    holdout = {json.loads(x)["example"]["meta"]["traffic_id"] for x in (run_dir / "refresh_rejected.jsonl")
               .read_text().splitlines() if json.loads(x)["reason"] == "in_replay_holdout"}
    assert len(holdout) == 6 and not holdout & {e.meta.get("traffic_id") for e in pool}
    train_rows = [json.loads(x) for x in (run_dir / "train.jsonl").read_text().splitlines()]
    assert train_rows and all(x["source"] != "student" for x in train_rows)
    # Traffic counts as non-human: the human floor of the skill still holds in the training epoch.
    floor = load_skill("ticket-triage", profile="tiny").config.student.train.human_share
    assert s["counts"]["train_by_source"]["traffic"] > 0 and s["counts"]["human_share"] >= floor
    assert "## Continuous refresh" in (run_dir / "summary.md").read_text()
    committed = committed_watermark("ticket-triage")
    assert committed.timestamp == r["until"] and r["commit"]["committed"] is True

    # A run that fails after the refresh stage leaves the watermark and the pool as they were.
    _append(skill_root, _rec("after-1", "2026-11-25T00:00:00Z", FRESH))
    pool_bytes = (pool_dir("ticket-triage") / "accepted.jsonl").read_bytes()

    def broken(*a, **k):
        raise RuntimeError("injected training failure")

    monkeypatch.setattr(trainers.stage, "train_skill", broken)
    with pytest.raises(RuntimeError, match="injected training failure"):
        distill_skill(RunParams(skill="ticket-triage", profile="tiny", run_id="refresh-2"))
    assert committed_watermark("ticket-triage") == committed
    assert (pool_dir("ticket-triage") / "accepted.jsonl").read_bytes() == pool_bytes
    pending = json.loads((pool_dir("ticket-triage").parent.parent / "runs" / "ticket-triage" / "refresh-2"
                          / WATERMARK_FILE).read_text())
    assert pending["timestamp"] == "2026-11-25T00:00:00+00:00"
