"""The whole flow end to end on tiny models, under a real Prefect test harness."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(profile, run_id):
    from flows.pipeline import RunParams, distill_skill

    return distill_skill(RunParams(skill="ticket-triage", profile=profile, run_id=run_id))


def test_flow_publishes_when_every_gate_passes(skill_root, prefect_harness):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from registry import Registry

    s = _run("tiny", "r1")
    run_dir = Path(s["run_dir"])
    c = s["counts"]
    # Every teacher request is accounted for: kept, or dropped with a reason.
    rejected = [json.loads(x) for x in (run_dir / "rejected.jsonl").read_text().splitlines()]
    assert sum(s["drops"].values()) == len(rejected)
    assert c["teacher_requested"] == c["accepted"] + len(rejected)
    assert all(r["reason"] and r["example"]["source"] in ("teacher", "traffic_relabel") for r in rejected)
    assert c["train"] + c["val"] >= c["seeds"]  # seeds always train
    assert s["training"]["quantization"] == "nf4" and s["training"]["steps"] == 3
    cand = s["evaluation"]["candidate"]
    assert cand["eval"]["n"] == 10 and cand["replay"]["n"] == 6
    assert s["decision"]["promote"] is True
    # Published: a complete version folder, production alias, lineage, loads with PEFT.
    reg = Registry()
    assert reg.aliases("ticket-triage") == {"production": 1}
    v = Path(s["published"]["path"])
    for f in ("adapter_model.safetensors", "adapter_config.json", "README.md", "metrics.json", "lineage.json",
              "routing.json", "skill.json", "checksums.json"):
        assert (v / f).is_file(), f
    reg.verify("ticket-triage", 1)
    lineage = json.loads((v / "lineage.json").read_text())
    assert lineage["run_id"] == "r1" and lineage["seeds_hash"] and lineage["dataset_hash"]
    skill_json = json.loads((v / "skill.json").read_text())
    assert "{input}" in skill_json["prompt_template"] and skill_json["labels"]
    base = AutoModelForCausalLM.from_pretrained(lineage_base(skill_root))
    model = PeftModel.from_pretrained(base, str(v))
    assert torch.isfinite(model(torch.tensor([[2, 7, 11]])).logits).all()
    for f in ("summary.json", "summary.md", "accepted.jsonl", "train.jsonl", "filter_stats.json"):
        assert (run_dir / f).is_file(), f

    # A second run has a champion: both are evaluated on the same items, and the
    # strict profile's floor rejects the candidate, leaving the registry as it was.
    before = reg.snapshot("ticket-triage")
    s2 = _run("tiny_strict", "r2")
    assert s2["decision"]["promote"] is False and s2["champion_version"] == 1
    assert s2["evaluation"]["champion"]["eval"]["n"] == s2["evaluation"]["candidate"]["eval"]["n"]
    assert any("below the floor" in r for g in s2["decision"]["gates"] for r in g["reasons"])
    assert reg.snapshot("ticket-triage") == before
    assert json.loads((Path(s2["run_dir"]) / "summary.json").read_text())["published"] is None
    # A rejected run's examples are held apart with the reason: the pool (what later runs train on)
    # and the dedup index stay as they were (student.train.rejected_runs: hold).
    assert s2["counts"]["pool_after_run"] == s["counts"]["pool_after_run"]
    held = s2["held"]
    assert held["examples"] == s2["counts"]["accepted"] + s2["counts"]["traffic_accepted"]
    assert any("below the floor" in r for r in held["reasons"]) and Path(held["path"]).is_file()
    assert s2["filters"]["index_commit"]["committed"] == 0
    decision = json.loads((Path(s2["run_dir"]) / "decision.json").read_text())
    assert decision["promote"] is False and decision["champion_version"] == 1

    # A later run that re-admits held batches (student.train.readmit_held) trains with them and, once
    # promoted, moves them into the pool and the dedup index; a retried release does nothing twice.
    from core.records import Example, read_examples, write_examples
    from core.workdir import pool_dir, run_dir as run_folder
    from filters.index import PENDING_FILE, open_store
    from filters.pool import hold, release_held
    from flows.pipeline import filter_candidates, load_skill

    # The tiny teacher's r2 kept nothing, so a batch the filters accepted is held as a rejected run would be.
    skill = load_skill("ticket-triage", "tiny_readmit")
    h = run_folder("ticket-triage", "h1")
    h.mkdir(parents=True)
    write_examples(h / "generated.jsonl", [
        Example(id="h-1", skill=skill.name, input="My invoice shows the annual plan twice after I renewed last week",
                output="billing", source="teacher"),
        Example(id="h-2", skill=skill.name, input="Exporting a report to CSV freezes the whole dashboard tab",
                output="bug", source="teacher")])
    assert filter_candidates.fn(skill, h, [])["accepted"] == 2 and (h / PENDING_FILE).is_file()
    hold("ticket-triage", "h1", read_examples(h / "accepted.jsonl"), {"gates": [{"passed": False, "reasons": ["x"]}]})
    held_ids = {e.id for e in read_examples(held["path"])} | {"h-1", "h-2"}
    s3 = _run("tiny_readmit", "r3")
    assert s3["decision"]["promote"] is True, s3["decision"]
    assert s3["readmitted"]["runs"] == ["r2", "h1"]  # in the order they were held
    trained = {json.loads(x)["id"] for name in ("train.jsonl", "val.jsonl")
               for x in (Path(s3["run_dir"]) / name).read_text().splitlines() if x.strip()}
    assert held_ids <= trained  # it trained with them
    pool = read_examples(pool_dir("ticket-triage") / "accepted.jsonl")
    assert held_ids <= {e.id for e in pool}
    assert len(pool) == s3["counts"]["pool_after_run"] == len({e.id for e in pool})
    held_dir = pool_dir("ticket-triage") / "held"
    assert not list(held_dir.glob("*.json*")) and (held_dir / "readmitted" / "h1.jsonl").is_file()
    assert (held_dir / "readmitted" / "r2.json").is_file() and (held_dir / "readmitted" / "h1.dedup_pending.npz").is_file()
    indexed = set(open_store("ticket-triage", skill.config.filters).ids())
    assert held_ids <= indexed
    again = release_held(skill, Path(s3["run_dir"]))
    assert again["runs"] == ["r2", "h1"]
    assert read_examples(pool_dir("ticket-triage") / "accepted.jsonl") == pool
    assert set(open_store("ticket-triage", skill.config.filters).ids()) == indexed


def test_a_run_that_fails_midway_changes_no_published_state(skill_root, prefect_harness, monkeypatch):
    """Fault injected after training (evaluation crashes): registry and pool stay as they were."""
    import eval_gates.predict
    from core.workdir import pool_dir
    from registry import Registry

    _run("tiny", "ok")
    reg = Registry()
    before = reg.snapshot("ticket-triage")
    pool = (pool_dir("ticket-triage") / "accepted.jsonl").read_bytes()

    def broken(*a, **k):
        raise RuntimeError("injected evaluation failure")

    monkeypatch.setattr(eval_gates.predict, "predict", broken)
    with pytest.raises(RuntimeError, match="injected evaluation failure"):
        _run("tiny", "broken")
    assert reg.snapshot("ticket-triage") == before and reg.aliases("ticket-triage") == {"production": 1}
    assert (pool_dir("ticket-triage") / "accepted.jsonl").read_bytes() == pool


def lineage_base(skill_root):
    import yaml

    return yaml.safe_load((skill_root / "ticket-triage" / "skill.yaml").read_text())["student"]["base_model"]


def test_filter_stage_drops_seed_copies_and_eval_items(skill_root, tmp_path):
    """The filter task on a hand-made batch: copies of seeds and of eval items never pass."""
    from core.records import Example, read_examples, write_examples
    from core.skills import load_skill
    from flows.pipeline import filter_candidates

    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    ev, seed = skill.eval_set[0], skill.seeds[0]
    cands = [
        Example(id="c1", skill=skill.name, input=seed.input, output="bug", source="teacher"),
        Example(id="c2", skill=skill.name, input="Hello team. " + ev.input + " Thanks!", output=ev.output,
                source="teacher"),
        Example(id="c3", skill=skill.name, input="The mobile app logs me out every time I switch to another app on my tablet",
                output="bug", source="teacher"),
        Example(id="c4", skill=skill.name, input="The mobile app logs me out every time I switch to another app on my tablet",
                output="bug", source="teacher"),
    ]
    write_examples(tmp_path / "generated.jsonl", cands)
    out = filter_candidates.fn(skill, tmp_path, [])
    reasons = {r.example.id: (r.reason, r.detail) for r in out["rejected"]}
    assert reasons["c1"][0] == "exact_duplicate"
    assert reasons["c2"][0] == "eval_ngram_overlap" and reasons["c2"][1]["eval_id"] == ev.id
    assert reasons["c4"][0] == "exact_duplicate"
    assert [e.id for e in read_examples(tmp_path / "accepted.jsonl")] == ["c3"]


@pytest.mark.parametrize("args,needle", [
    (["run", "no-such-skill"], "unknown skill 'no-such-skill'"),
    (["run", "ticket-triage", "--profile", "huge"], "unknown profile 'huge'"),
])
def test_cli_bad_input_is_one_clear_line(args, needle, skill_root):
    p = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("error: ") and needle in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_cli_malformed_seed_and_missing_eval(skill_root):
    seeds = skill_root / "ticket-triage" / "seeds.jsonl"
    seeds.write_text(seeds.read_text() + '{"id": "x", "input": "broken\n')
    p = subprocess.run([sys.executable, "-m", "flows.cli", "run", "ticket-triage"], capture_output=True, text=True,
                       cwd=REPO)
    assert p.returncode == 2 and "seeds.jsonl:51: invalid JSON" in p.stderr
    (skill_root / "ticket-triage" / "eval.jsonl").unlink()
    p = subprocess.run([sys.executable, "-m", "flows.cli", "skills"], capture_output=True, text=True, cwd=REPO)
    # Every problem is reported with its file (and line where there is one); exit 1.
    assert p.returncode == 1 and "eval.jsonl" in p.stdout and "missing" in p.stdout


def test_cli_unreachable_teacher(skill_root):
    y = skill_root / "ticket-triage" / "skill.yaml"
    y.write_text(y.read_text().replace("backend: local", "backend: openai\n  base_url: http://127.0.0.1:9/v1"))
    p = subprocess.run([sys.executable, "-m", "flows.cli", "run", "ticket-triage"], capture_output=True, text=True,
                       cwd=REPO)
    assert p.returncode == 2 and "teacher unreachable at http://127.0.0.1:9/v1" in p.stderr


def _add_profile(skill_root, name, over):
    import yaml

    from core.skills import deep_merge

    path = skill_root / "ticket-triage" / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["profiles"][name] = deep_merge(cfg["profiles"]["tiny"], over)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def test_a_teacher_below_the_audit_floor_is_refused_before_expansion(skill_root, prefect_harness):
    """Issue 10: the k-fold audit on the seeds scores the (random, tiny) teacher below the floor:
    no expansion, no training, nothing published; decision.json says why."""
    from core.workdir import pool_dir
    from registry import Registry

    _add_profile(skill_root, "refused", {"audit": {"floor": 0.99, "folds": 3},
                                         "expansion": {"strategies": ["self_instruct", "score"]},
                                         "teacher": {"calibration_shot_sets": 1}})
    s = _run("refused", "weak")
    run_dir = Path(s["run_dir"])
    assert s["decision"]["promote"] is False and s["decision"]["stage"] == "teacher_audit"
    decision = json.loads((run_dir / "decision.json").read_text())
    assert "< audit.floor 0.990" in decision["reasons"][0] and "expansion refused" in decision["reasons"][0]
    assert decision["gates"][0]["name"] == "teacher_audit" and decision["gates"][0]["passed"] is False
    audit = json.loads((run_dir / "teacher_audit.json").read_text())
    assert audit["n"] == 50 and len(audit["items"]) == 50 and audit["score"] < 0.99
    assert not (run_dir / "generated.jsonl").exists() and not (run_dir / "train").exists()
    assert not (pool_dir("ticket-triage") / "accepted.jsonl").exists()
    assert Registry().aliases("ticket-triage") == {}
    md = (run_dir / "summary.md").read_text()
    assert "## Teacher audit" in md and "REJECTED" in md


def test_confidence_thresholds_and_label_balance_reach_the_summary(skill_root, prefect_harness):
    """Issue 10: scored, calibrated labels; per-label thresholds from the audit; the label
    distribution bound; all of it in summary.json and summary.md."""
    _add_profile(skill_root, "scored", {
        "expansion": {"strategies": ["self_instruct", "score"], "target_examples": 10},
        "teacher": {"shot_selection": "auto", "calibration": "auto", "calibration_shot_sets": 1},
        "audit": {"folds": 3},
        "filters": {"min_confidence": 0.0, "target_precision": 0.05, "threshold_min_support": 1,
                    "max_label_distance": 0.5}})
    s = _run("scored", "scored")
    run_dir = Path(s["run_dir"])
    assert [o["option"] for o in s["audit"]["options"]] == [
        "random shots, raw", "random shots, calibrated", "similar shots, raw", "similar shots, calibrated"]
    # (The random tiny teacher writes few usable inputs; tests/teachers/test_audit.py checks the scored labels.)
    gen = [json.loads(x) for x in (run_dir / "generated.jsonl").read_text().splitlines()]
    assert all(g["meta"]["answer_strategy"] == "score" and 0 < g["confidence"] <= 1 for g in gen)
    conf = s["filters"]["stats"]["confidence"]
    assert set(conf["thresholds"]) == set(["billing", "bug", "feature_request", "account", "other"])
    kept_by_threshold = sum(t["kept"] for t in conf["thresholds"].values())
    dist = conf["label_distribution"]
    assert sum(dist["accepted_counts"].values()) == s["counts"]["accepted"] <= kept_by_threshold
    assert dist["bound"]["max_distance"] == 0.5 and set(dist["seeds"]) == set(conf["thresholds"])
    used = json.loads((run_dir / "teacher_accounting.json").read_text())["answering"]
    chosen = next(o for o in s["audit"]["options"] if o["option"] == s["audit"]["chosen"])
    assert used["shots"] == chosen["shots"] and used["calibration"] == chosen["calibration"]
    md = (run_dir / "summary.md").read_text()
    for needle in ("## Teacher audit", "**used**", "## Confidence and label balance", "| accepted |", "| seeds |"):
        assert needle in md, needle


def test_skip_expansion_trains_without_the_refused_teachers_data(skill_root, prefect_harness):
    """audit.on_fail: skip_expansion: below the floor the run still trains (seeds, pool, traffic),
    sends no expansion request, and records the refusal beside the gates."""
    _add_profile(skill_root, "skip", {"audit": {"floor": 0.99, "folds": 3, "on_fail": "skip_expansion"}})
    s = _run("skip", "skip")
    run_dir = Path(s["run_dir"])
    assert s["counts"]["teacher_generated"] == 0 and (run_dir / "generated.jsonl").read_text() == ""
    assert s["training"]["steps"] == 3 and s["counts"]["train"] + s["counts"]["val"] >= s["counts"]["seeds"]
    gate = next(g for g in s["decision"]["gates"] if g["name"] == "teacher_audit")
    assert gate["passed"] is False and gate["blocking"] is False and "skip_expansion" in gate["reasons"][0]
    decision = json.loads((run_dir / "decision.json").read_text())
    assert any(g["name"] == "teacher_audit" for g in decision["gates"])


def test_readmitted_batches_are_chosen_once_per_run_folder(skill_root):
    """A resumed run trains on the held batches it chose first, not on a batch held since; with the key
    off nothing held is read."""
    from core.records import Example
    from core.workdir import run_dir as run_folder
    from filters.pool import hold, readmitted_examples
    from flows.pipeline import load_skill

    def batch(run_id, n):
        ex = [Example(id=f"{run_id}-{i}", skill="ticket-triage", input=f"ticket {run_id} {i}", output="bug",
                      source="teacher") for i in range(n)]
        hold("ticket-triage", run_id, ex, {"gates": [{"passed": False, "reasons": ["below the floor"]}]})

    batch("a", 2)
    skill = load_skill("ticket-triage", "tiny_readmit")
    run = run_folder("ticket-triage", "now")
    run.mkdir(parents=True)
    assert [e.id for e in readmitted_examples(load_skill("ticket-triage", "tiny"), run)] == []
    assert not (run / "readmitted.json").exists()
    assert [e.id for e in readmitted_examples(skill, run)] == ["a-0", "a-1"]
    batch("b", 1)
    batch("now", 1)  # the run's own batch (a retry after it was held) never trains it twice
    assert [e.id for e in readmitted_examples(skill, run)] == ["a-0", "a-1"]
    fresh = run_folder("ticket-triage", "later")
    fresh.mkdir(parents=True)
    assert [e.id for e in readmitted_examples(skill, fresh)] == ["a-0", "a-1", "b-0", "now-0"]


def test_readmitted_batches_are_whole_newest_first_and_capped(skill_root):
    """At most student.train.max_pool_examples held examples, whole batches, newest first; a broken
    held record is an error naming the file."""
    from core.records import DataError, Example
    from core.workdir import pool_dir, run_dir as run_folder
    from filters.pool import hold, readmitted_examples
    from flows.pipeline import load_skill

    for run_id, n in (("20260101-000000", 2), ("20260102-000000", 3), ("20260103-000000", 1)):
        hold("ticket-triage", run_id, [Example(id=f"{run_id}-{i}", skill="ticket-triage", input=f"t {run_id} {i}",
                                                output="bug", source="teacher") for i in range(n)],
              {"gates": []})
    skill = load_skill("ticket-triage", "tiny_readmit")
    skill.config.student.train.max_pool_examples = 3
    run = run_folder("ticket-triage", "now")
    run.mkdir(parents=True)
    # newest (1) fits, the 3-example batch would pass the cap, the oldest (2) fits: 3 in all
    assert [e.id for e in readmitted_examples(skill, run)] == ["20260101-000000-0", "20260101-000000-1",
                                                                 "20260103-000000-0"]
    (pool_dir("ticket-triage") / "held" / "20260102-000000.json").write_text("{broken")
    other = run_folder("ticket-triage", "other")
    other.mkdir(parents=True)
    with pytest.raises(DataError, match="20260102-000000.json"):
        readmitted_examples(skill, other)


def test_train_task_caps_the_pool_with_the_configured_sampling_rule(skill_root, prefect_harness, monkeypatch):
    """student.train.max_pool_examples and pool_sampling reach the train task: the run's own examples
    always train; of the pool, the newest (or a seeded uniform sample of) max_pool_examples."""
    from prefect import flow

    import trainers.stage
    from core.records import Example, write_examples
    from core.workdir import run_dir as run_folder
    from filters.pool import append_pool
    from flows.pipeline import load_skill, train

    append_pool("ticket-triage", [Example(id=f"p{d}-{i}", skill="ticket-triage", input=f"ticket {d} {i}",
                                           output="bug", source="teacher", created_at=f"2026-11-0{d}T00:00:00+00:00")
                                   for d in (1, 2, 3) for i in range(4)])
    run = run_folder("ticket-triage", "now")
    run.mkdir(parents=True)
    write_examples(run / "accepted.jsonl", [Example(id="own-0", skill="ticket-triage", input="mine", output="bug",
                                                    source="teacher", created_at="2026-11-01T00:00:00+00:00")])
    seen = []

    def fake_train(skill, student_path, run_dir, accepted, progress=None):  # records what the trainer was given
        seen.append([e.id for e in accepted])
        return {"result": {"notes": [], "steps": 0, "seconds": 0.0, "quantization": "none", "device": "cpu"}}

    monkeypatch.setattr(trainers.stage, "train_skill", fake_train)

    @flow(name="train-only")
    def train_only(skill):
        return train.fn(skill, "unused", run)

    skill = load_skill("ticket-triage", "tiny")
    skill.config.student.train.max_pool_examples = 4
    train_only(skill)
    assert seen[-1] == ["p3-0", "p3-1", "p3-2", "p3-3", "own-0"]  # newest pooled + own (own is old, still trains)
    skill.config.student.train.pool_sampling = "uniform"
    train_only(skill)
    train_only(skill)
    assert len(seen[-1]) == 5 and seen[-1][-1] == "own-0" and seen[-1] == seen[-2]  # seeded: a retry trains the same
    assert seen[-1] != seen[0]
    skill.config.student.train.max_pool_examples = None
    train_only(skill)
    assert len(seen[-1]) == 13
