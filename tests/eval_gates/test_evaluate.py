"""evaluate_candidate end to end on the tiny model with real (random) LoRA adapters."""

import json
from pathlib import Path

import pytest

from core.skills import load_skill
from eval_gates.evaluate import evaluate_candidate, run_dir_for
from eval_gates.replay import replay_items


def _adapter(base: str, folder: Path, seed: int) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    # Random A and B (not the zero-B default): each adapter really changes the answers.
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def adapters(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return _adapter(tiny_model_path, root / "cand", 1), _adapter(tiny_model_path, root / "champ", 2)


def test_candidate_vs_champion_writes_record_routing_and_reports(skill_root, tiny_model_path, adapters, tmp_path):
    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    skill.config.gates.eval_limit = 20  # gates.min_paired_items: fewer paired items fail closed
    items, traffic = replay_items(skill)
    run = tmp_path / "run"
    out = evaluate_candidate(skill, tiny_model_path, adapters[0], adapters[1], items, run, traffic=traffic)
    cand, champ = out["candidate"], out["champion"]
    assert cand["eval"]["n"] == champ["eval"]["n"] == 20 and cand["replay"]["n"] == champ["replay"]["n"] == 6
    assert cand["eval"]["item_scores"]["ids"] == champ["eval"]["item_scores"]["ids"]
    assert {"accuracy", "macro_f1", "invalid_rate", "per_label_recall", "confusion"} <= set(cand["eval"])
    assert {"agreement", "invalid_rate", "p50_s", "p95_s"} <= set(cand["replay"])
    # The decision names every check with value, bound and verdict, and the data it ran on.
    d = json.loads((run / "decision.json").read_text())
    assert d == {**out["decision"], "data": d["data"]}
    assert d["data"]["eval_items"] == 20 and len(d["data"]["eval_set_hash"]) == 64
    assert d["data"]["replay_ids"] == [e.id for e in items] and d["data"]["traffic"]["records"] == len(traffic)
    names = [c["name"] for g in d["gates"] for c in g["checks"]]
    assert "floor:accuracy" in names and "paired:accuracy" in names and "agreement_vs_production" in names
    paired = next(c for g in d["gates"] for c in g["checks"] if c["name"] == "paired:accuracy")
    assert paired["detail"]["method"] == "mcnemar" and paired["bound"] == -1.0
    assert d["promote"] is True  # the tiny profile's margin is 1.0: anything passes but a crash
    # Routing profile: both lanes on the eval items and the replayed requests (no teacher lane measured
    # here: nothing valid escalates), a confidence per replayed request.
    r = json.loads((run / "routing.json").read_text())
    human = sum(e.meta.get("reference_source") == "human" for e in items)  # the rest may be the teacher's own
    assert r["target_error_rate"] == 0.05 and r["n"] == 20 + human and len(r["confidences"]) == 6
    assert r["replay_items_without_an_independent_reference"] == 6 - human
    assert r["policy"] == "quality" and r["teacher_measured"] is False and r["mode"] != "threshold"
    assert set(r["signals"]) == {"mean_logprob", "min_logprob", "mean_grammar_logprob", "min_grammar_logprob", "min_margin"}
    assert r["by_set"]["eval"]["n"] == 20 and r["by_set"].get("replay", {"n": 0})["n"] == human
    assert all(c is None or c <= 0 for c in r["confidences"])
    assert r["mode"] in ("threshold", "keep_all_valid", "escalate_all") and 0 <= r["escalation_rate"] <= 1
    assert r["escalation"]["confidence_threshold"] == r["threshold"] and r["latency_s"]["p95"] is not None
    # Reports and per-item answers.
    md = (run / "eval_report.md").read_text()
    assert "**Decision: PROMOTE**" in md and "Confusion matrix" in md and "paired:accuracy" in md
    assert (run / "eval_comparison.png").read_bytes()[:4] == b"\x89PNG"
    rows = [json.loads(x) for x in (run / "eval_items.jsonl").read_text().splitlines()]
    assert len(rows) == 26 and all("candidate" in x and "champion" in x for x in rows)
    # The flow body calls the gates itself on the returned dicts: same decision.
    from eval_gates.gates import decide, regression_gate, replay_gate

    again = decide([regression_gate(skill.config.gates, cand["eval"], champ["eval"]),
                    replay_gate(skill.config.gates, cand["replay"], champ["replay"])])
    assert again.to_dict() == out["decision"]


def test_same_adapter_as_champion_is_a_zero_difference(skill_root, tiny_model_path, adapters, tmp_path):
    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    skill.config.gates.eval_limit = 20
    items, _ = replay_items(skill)
    out = evaluate_candidate(skill, tiny_model_path, adapters[0], adapters[0], items, tmp_path)
    paired = next(c for g in out["decision"]["gates"] for c in g["checks"] if c["name"] == "paired:accuracy")
    assert paired["detail"]["diff"] == 0 and paired["detail"]["lower"] == 0 == paired["detail"]["upper"]


def test_a_scoring_crash_and_empty_traffic_block_promotion(skill_root, tiny_model_path, adapters, tmp_path, monkeypatch):
    import core.tasks.classification

    def broken(self, example, prediction):
        raise KeyError("injected scoring failure")

    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    monkeypatch.setattr(core.tasks.classification.Classification, "score", broken)
    out = evaluate_candidate(skill, tiny_model_path, adapters[0], None, [], tmp_path)
    d = out["decision"]
    assert d["promote"] is False
    assert d["reasons"][0].startswith("gate failed: regression (regression gate cannot run: scoring failed: KeyError")
    assert "replay sample is empty" in d["reasons"][1]
    assert json.loads((tmp_path / "routing.json").read_text())["mode"] == "unavailable"
    assert "**Decision: REJECT**" in (tmp_path / "eval_report.md").read_text()


def test_run_dir_for_finds_the_run_folder(tmp_path):
    (tmp_path / "params.json").write_text("{}")
    (tmp_path / "train" / "adapter").mkdir(parents=True)
    assert run_dir_for(tmp_path / "train" / "adapter") == tmp_path.resolve()


def test_evaluate_task_attaches_report_artifacts(skill_root, tiny_model_path, adapters, tmp_path, prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.pipeline import evaluate

    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    items, _ = replay_items(skill)

    @flow
    def one_task():
        from prefect.runtime import flow_run

        return evaluate(skill, tiny_model_path, adapters[0], None, items, tmp_path), flow_run.id

    out, run_id = one_task()
    assert (tmp_path / "eval_report.md").is_file() and out["decision"]["promote"] is True

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))

    import asyncio

    found = {a.key: a for a in asyncio.run(artifacts())}
    assert found["ticket-triage-eval-report"].type == "markdown"
    assert "Decision: PROMOTE" in found["ticket-triage-eval-report"].data
    assert found["ticket-triage-eval-checks"].type == "table"


def test_json_task_skill_end_to_end(tiny_model_path, adapters, tmp_path):
    """function_call: prompts with tools, AST scoring, error table and routing on a non-label task."""
    root = Path(__file__).resolve().parents[2] / "seeds"
    if not (root / "tool-calling").is_dir():
        pytest.skip("seeds/tool-calling is not there")
    skill = load_skill("tool-calling", root=root)
    g = skill.config.gates
    g.eval_limit, g.max_new_tokens, g.replay.sample = 4, 24, 3
    items, traffic = replay_items(skill)
    out = evaluate_candidate(skill, tiny_model_path, adapters[0], adapters[1], items, tmp_path, traffic=traffic)
    cand = out["candidate"]["eval"]
    assert out["task"] == "function_call" and cand["primary"] == "ast_accuracy" and cand["n"] == 4
    assert {"ast_accuracy", "name_accuracy", "invalid_rate", "failure_kinds"} <= set(cand)
    assert out["candidate"]["replay"]["n"] == 3 and out["routing"]["n"] == 4 + sum(e.meta.get("reference_source") == "human" for e in items)
    md = (tmp_path / "eval_report.md").read_text()
    assert "Errors (candidate)" in md and "paired:ast_accuracy" in md and "Confusion matrix" not in md


def test_too_few_paired_items_block_promotion(skill_root, tiny_model_path, adapters, tmp_path):
    """Issue 16 item 7: the tiny profile scores 10 eval items, under the default minimum of 20."""
    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    items, _ = replay_items(skill)
    out = evaluate_candidate(skill, tiny_model_path, adapters[0], adapters[0], items, tmp_path)
    assert out["decision"]["promote"] is False
    assert "only 10 paired item(s) with production, fewer than gates.min_paired_items=20" in out["decision"]["reasons"][0]


def test_production_is_scored_on_the_base_its_own_version_names(skill_root, tiny_model_path, adapters, tmp_path):
    """Issue 16 item 10: student.base_model changed since production was published."""
    import shutil

    from teachers.local import LocalModel

    old_base = tmp_path / "old-base"
    shutil.copytree(tiny_model_path, old_base)
    champion = tmp_path / "champion"
    shutil.copytree(adapters[1], champion)
    (champion / "skill.json").write_text(json.dumps({"task_type": "classification", "base_model": str(old_base)}))
    loaded = []

    def load_model(path, adapter):
        loaded.append((path, adapter))
        return LocalModel(path, adapter_path=adapter)

    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    items, _ = replay_items(skill)
    out = evaluate_candidate(skill, tiny_model_path, adapters[0], str(champion), items, tmp_path / "run",
                             load_model=load_model)
    assert loaded == [(tiny_model_path, adapters[0]), (str(old_base.resolve()), str(champion))]
    assert out["data"]["base_models"] == {"candidate": tiny_model_path, "champion": str(old_base.resolve())}
    # A production version whose base is gone fails the run with the reason, instead of a wrong score.
    (champion / "skill.json").write_text(json.dumps({"base_model": str(tmp_path / "gone")}))
    from trainers.base_model import ModelError

    with pytest.raises(ModelError, match="production version"):
        evaluate_candidate(skill, tiny_model_path, adapters[0], str(champion), items, tmp_path / "run2",
                           load_model=load_model)


def test_routing_measures_both_lanes_on_the_same_items(skill_root, tiny_model_path, adapters, tmp_path):
    """teacher_answers.jsonl in the run folder (the teacher-lane task's output): a teacher right on every eval
    item and wrong on every replayed one. The curve holds each lane alone and the served quality of every cut;
    the quality policy's point is at least as good as the better lane alone."""
    from core.records import write_jsonl

    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    items, traffic = replay_items(skill)
    for e in items:  # two labelled by a person; the others' LLM references may be the teacher's own answers
        e.meta["reference_source"] = "human" if e in items[:2] else "llm"
    ev = skill.eval_set[:10]
    wrong = {lab: next(x for x in skill.config.labels if x != lab) for lab in skill.config.labels}
    write_jsonl(tmp_path / "teacher_answers.jsonl",
                [{"set": "eval", "id": e.id, "answer": e.output} for e in ev] +
                [{"set": "replay", "id": e.id, "answer": wrong[e.output]} for e in items])
    out = evaluate_candidate(skill, tiny_model_path, adapters[0], None, items, tmp_path, traffic=traffic)
    r = json.loads((tmp_path / "routing.json").read_text())
    assert r["version"] == 2 and r["teacher_measured"] is True and r["n"] == 12
    assert r["replay_items_without_an_independent_reference"] == 4 and len(r["confidences"]) == 6
    assert r["teacher_alone"]["served"] == round(10 / 12, 4)
    best_alone = max(r["teacher_alone"]["served"], r["student_alone"]["served"])
    assert r["served"]["quality"] >= best_alone and r["served"]["low"] <= r["served"]["quality"] <= r["served"]["high"]
    assert r["curve"][0]["teacher_share"] == 1.0 and r["curve"][0]["served"] == r["teacher_alone"]["served"]
    assert out["routing"]["by_set"]["eval"]["n"] == 10
    rows = [json.loads(x) for x in (tmp_path / "eval_items.jsonl").read_text().splitlines()]
    assert [x["teacher"] for x in rows if x["set"] == "eval"] == [e.output for e in ev]
    assert (tmp_path / "routing_curve.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "eval_report.md").read_text()
    assert "| policy | quality" in md and "student alone / teacher alone" in md
