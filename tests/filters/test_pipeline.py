import json
import shutil
from pathlib import Path

import pytest
import yaml

from core.records import Example, read_examples
from core.skills import FilterConfig, load_skill
from filters import FilterResult, commit_index, default_steps, filter_stage, run_filters
from filters.index import PENDING_FILE

REPO = Path(__file__).resolve().parents[2]


def test_stats_match_rejected_and_nothing_is_lost(ex):
    cfg = FilterConfig()
    seeds = [ex("s1", "the soup was cold and the waiter ignored us all evening")]
    evals = {"eval": [ex("e1", "the hotel room smelled of smoke and mold everywhere")]}
    cands = [
        ex("ok1", "fresh bread, friendly staff and a lovely view of the harbour"),
        ex("short", "meh"),
        ex("bad_label", "the parking was impossible to find on a saturday", "unsure"),
        ex("seed_copy", "The soup was cold, and the waiter ignored us all evening!"),
        ex("leak", "honestly the hotel room smelled of smoke and mold everywhere we went"),
        ex("ok2", "the app is fast and the new dark mode is easy on the eyes at night"),
        ex("ok2_near", "the app is fast and the new dark mode is easy on the eyes at bedtime"),
        ex("ok2_copy", "The app is fast and the new dark mode is easy on the eyes at night."),
    ]
    kept, rejected, stats = run_filters(cands, default_steps(cfg, seeds, evals, labels=["pos", "neg"]))

    assert len(kept) + len(rejected) == len(cands)
    assert {e.id for e in kept} | {r.example.id for r in rejected} == {e.id for e in cands}
    assert [e.id for e in kept] == ["ok1", "ok2"]
    assert {r.example.id: r.reason for r in rejected} == {
        "short": "too_short", "bad_label": "not_a_label", "seed_copy": "exact_duplicate",
        "ok2_copy": "exact_duplicate", "leak": "eval_ngram_overlap", "ok2_near": "near_duplicate"}

    # Stats agree with the rejected list, per (stage, reason).
    counted = {}
    for r in rejected:
        counted.setdefault(r.stage, {}).setdefault(r.reason, 0)
        counted[r.stage][r.reason] += 1
    assert {s: v["reasons"] for s, v in stats["stages"].items() if v["reasons"]} == counted
    assert (stats["candidates"], stats["kept"], stats["rejected"]) == (8, 2, 6)
    assert stats["stages"]["quality"]["in"] == 8 and stats["stages"]["near_dedup"]["kept"] == 2
    json.dumps(stats)  # JSON-able
    json.dumps([r.to_dict() for r in rejected])


def test_a_step_that_loses_examples_fails_loudly(ex):
    class Lossy:
        name = "lossy"

        def __call__(self, examples):
            return FilterResult(kept=examples[1:])

    with pytest.raises(RuntimeError, match="lossy"):
        run_filters([ex("a", "one two three"), ex("b", "four five six")], [Lossy()])


@pytest.fixture
def triage(tmp_path, monkeypatch):
    """The real ticket-triage skill with an external benchmark file, and a fresh work dir."""
    root = tmp_path / "seeds"
    shutil.copytree(REPO / "seeds" / "ticket-triage", root / "ticket-triage")
    path = root / "ticket-triage" / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["filters"]["external_eval_sets"] = ["bench.jsonl"]
    cfg["filters"]["min_confidence"] = 1.0  # the quality steps under test; audit thresholds: tests/filters/test_confidence.py
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "ticket-triage" / "bench.jsonl").write_text(json.dumps(
        {"id": "bench-1", "input": "My invoice PDF for March shows the wrong company address and VAT number"}) + "\n")
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "work"))
    return load_skill("ticket-triage", root=root)


def teacher(id, text, label, conf=1.0):
    return Example(id=id, skill="ticket-triage", input=text, output=label, source="teacher", confidence=conf)


def test_filter_stage_audit_files_and_the_two_step_commit(triage, tmp_path):
    seed, ev = triage.seeds[0], triage.eval_set[0]
    replay = [Example(id="r1", skill="ticket-triage", source="traffic", output="bug",
                      input="Since this morning the export button returns a blank spreadsheet for every report")]
    fresh = "I would love a way to schedule reports to be emailed to my whole team every Monday morning"
    cands = [
        teacher("c1", fresh, "feature_request"),
        teacher("c2", seed.input + " Thanks", seed.output),                      # near copy of a seed
        teacher("c3", "Hi! " + ev.input, ev.output),                             # regression-set leak
        teacher("c4", "Urgent: since this morning the export button returns a blank spreadsheet for every report",
                "bug"),                                                           # replay hold-out leak
        teacher("c5", "my invoice pdf for march shows the wrong company address and vat number!!", "billing"),
        teacher("c6", "Sure! Here is a ticket: the login page times out after I enter my password", "account"),
        teacher("c7", "The login page times out right after I type my password on the laptop", "account", 0.5),
        teacher("c8", fresh.replace("Monday", "Tuesday"), "feature_request"),   # near copy inside the batch
    ]
    run1 = tmp_path / "run1"
    out = filter_stage(triage, cands, replay, [], run1)
    got = {r.example.id: (r.stage, r.reason) for r in out.rejected}
    assert [e.id for e in out.kept] == ["c1"]
    assert got["c2"][1] in ("near_duplicate", "exact_duplicate")
    assert got["c3"] == ("contamination", "eval_ngram_overlap")
    assert got["c4"] == ("contamination", "eval_ngram_overlap")
    assert got["c5"] == ("contamination", "eval_ngram_overlap")
    assert got["c6"] == ("quality", "boilerplate") and got["c7"] == ("confidence", "low_confidence")
    assert got["c8"] == ("near_dedup", "near_duplicate")

    # Audit: each drop in the run folder with its reason and what it matched; counts per reason.
    rows = {json.loads(line)["example"]["id"]: json.loads(line) for line in
            (run1 / "filter_rejected.jsonl").read_text().splitlines()}
    assert rows["c3"]["detail"]["eval_set"] == "eval" and rows["c3"]["detail"]["eval_id"] == ev.id
    assert rows["c4"]["detail"]["eval_set"] == "replay" and rows["c4"]["detail"]["eval_id"] == "r1"
    assert rows["c5"]["detail"] | {"eval_set": "bench.jsonl", "eval_id": "bench-1"} == rows["c5"]["detail"]
    assert rows["c8"]["detail"]["matched_id"] == "c1"
    stats = json.loads((run1 / "filter_stats.json").read_text())
    assert stats["stages"]["contamination"]["reasons"] == {"eval_ngram_overlap": 3}
    assert stats["eval_sets"] == {"eval": len(triage.eval_set), "replay": 1, "bench.jsonl": 1}
    assert [e.id for e in read_examples(run1 / "accepted.jsonl")] == ["c1"]
    assert (run1 / PENDING_FILE).is_file()

    # Until the commit, a second run does not know c1; after it, c1's near copy is caught against the pool.
    again = [teacher("d1", fresh + " please", "feature_request")]
    assert [e.id for e in filter_stage(triage, again, replay, [], tmp_path / "run2").kept] == ["d1"]
    assert commit_index("ticket-triage", triage.config.filters, run1)["added"] == 1
    out3 = filter_stage(triage, again, replay, out.kept, tmp_path / "run3")
    assert not out3.kept and out3.rejected[0].detail["matched_in"] == "pool"
    assert out3.stats["index"]["rebuilt_from_pool"] is False
