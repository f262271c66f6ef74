"""Issue 34 items 1 and 4 on the whole run: requests the gateway captured into its default store are counted by
a default `distill run` (refresh and replay), with no configuration, and what trains on them carries
placeholders, never the personal data."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from core.records import read_examples
from core.workdir import pool_dir

SKILL = "ticket-triage"
SERVED = [
    ("s-1", "The invoice for our renewal shows the wrong VAT number, please reissue it and mail it to "
            "finance.team@example.net today", "billing", "llm", True),
    ("s-2", "Since the update the mobile app crashes whenever I open a shared board, reach me on +44 20 7946 0958",
     "bug", "llm", True),
    ("s-3", "Please add dark mode to the web editor, my team at 198.51.100.23 keeps asking for it", "feature_request",
     "human", True),
    ("s-4", "I cannot log in after changing my password, my card ends 4242 and the account mail is "
            "old.owner@example.net", "account", "student", None),
]
VALUES = ["finance.team@example.net", "+44 20 7946 0958", "198.51.100.23", "old.owner@example.net"]


def test_a_default_run_counts_and_trains_on_the_gateways_rows_scrubbed(skill_root, prefect_harness):
    from core.privacy import scrubber_for
    from core.skills import load_skill
    from core.workdir import traffic_table_name, traffic_url
    from flows.pipeline import RunParams, distill_skill
    from gateway.traffic import TrafficWriter

    skill = load_skill(SKILL, profile="tiny")
    now = datetime.now(timezone.utc)
    w = TrafficWriter(traffic_url(), traffic_table_name, flush_ms=20,
                      scrub_for=lambda name: scrubber_for(skill.config.privacy))
    for n, (ident, request, label, source, accepted) in enumerate(SERVED):
        w.write(SKILL, {"id": ident, "created_at": now - timedelta(minutes=10 - n), "skill": SKILL, "version": 1,
                        "request": request, "answer": label, "slm_answer": label, "slm_raw": f" {label}",
                        "lane": "keep" if source == "student" else "escalate", "reference": label,
                        "reference_source": source, "accepted": accepted})
    assert w.flush(30)
    w.close()

    s = distill_skill(RunParams(skill=SKILL, profile="tiny", run_id="served-1"))
    run_dir = Path(s["run_dir"])
    # The refresh read the shipped log (40) and the table (4 served rows); the student's row is refused by name.
    r = s["refresh"]
    assert s["counts"]["traffic_new"] == r["new_records"] == 40 + len(SERVED)
    assert r["log_records"] == 40 + 3 and r["student_refused"] == 1 and "traffic_ticket_triage" in r["log"]
    rejected = [json.loads(x) for x in (run_dir / "refresh_rejected.jsonl").read_text().splitlines()]
    assert [x["reason"] for x in rejected if x["detail"]["traffic_id"] == "s-4"] == ["student_output"]
    # The replay gate read the same log: the shipped records and the 3 accepted served ones.
    traffic = s["evaluation"]["data"]["traffic"]
    assert traffic["records"] == 40 + 3 and "traffic_ticket_triage" in traffic["source"]
    # The served rows trained (the pool) or were held out for replay; either way with placeholders only.
    pool = {e.meta["traffic_id"]: e for e in read_examples(pool_dir(SKILL) / "accepted.jsonl") if e.source == "traffic"}
    held = set(s["evaluation"]["data"]["replay_ids"])
    assert {"s-1", "s-2", "s-3"} <= set(pool) | held
    assert all("<" in pool[i].input for i in ("s-1", "s-2", "s-3") if i in pool)
    for f in [*run_dir.rglob("*"), pool_dir(SKILL) / "accepted.jsonl"]:
        if f.is_file() and f.suffix in (".jsonl", ".json", ".md"):
            text = f.read_text(errors="replace")
            assert not any(v in text for v in VALUES), f

    # Issue 34 item 2, traffic as the teacher's context: the student's own row (s-4, lane keep) was read with every
    # other recent input, labelled by the teacher (never with the student's answer), with placeholders only; the
    # counts are in the summary, and the relabelled rows are in the ledger so no later run sends them again.
    from flows.traffic_context import relabelled_ledger

    tc = s["traffic_context"]
    c = s["counts"]
    assert c["traffic_sampled"] == tc["read"] == 40 + len(SERVED)
    sampled = json.loads((run_dir / "traffic_context.json").read_text())
    assert "s-4" in sampled["relabel_ids"] and not set(sampled["relabel_ids"]) & held
    relabelled = {e.meta["traffic_id"]: e for e in read_examples(run_dir / "generated.jsonl")
                  if e.source == "traffic_relabel"}
    assert c["traffic_relabelled"] == len(relabelled) == tc["relabelled"] > 0
    assert relabelled["s-4"].teacher and "<EMAIL_ADDRESS>" in relabelled["s-4"].input
    assert relabelled["s-4"].id == "traffic_relabel:s-4" and relabelled["s-4"].meta["traffic_lane"] == "keep"
    kept = [e for e in read_examples(run_dir / "accepted.jsonl") if e.source == "traffic_relabel"]
    assert c["traffic_relabel_kept"] == len(kept) <= c["accepted"]
    assert c["traffic_style_shots"] == tc["traffic_style_shots"] > 0
    assert "## Traffic as teacher context" in (run_dir / "summary.md").read_text()
    assert relabelled_ledger(SKILL) == set(sampled["relabel_ids"])
