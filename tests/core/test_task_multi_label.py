"""The worked example task type (core/tasks/multi_label.py): config, prompts, parsing, checks, the
metric, the scaffold and the CLI, with nothing else in the tree changed for it."""

from __future__ import annotations

import json

import pytest

from core import prompting
from core.records import Example
from core.scaffold import create_skill
from core.skills import SkillConfig, load_skill, validate_all
from core.tasks import get_task, score_items

LABELS = ["billing", "bug", "account"]


def _cfg(**extra) -> SkillConfig:
    return SkillConfig.model_validate({"name": "ticket-tags", "task": "multi_label", "instruction": "Tag the ticket.",
                                       "input_name": "Ticket", "output_name": "Tags", "labels": LABELS, **extra})


def test_config_needs_labels_without_commas_and_refuses_the_score_answerer():
    with pytest.raises(ValueError, match="at least 2 labels"):
        _cfg(labels=["billing"])
    with pytest.raises(ValueError, match="cannot contain ','"):
        _cfg(labels=["a,b", "c"])
    with pytest.raises(ValueError, match="score ranks a closed label set"):
        _cfg(expansion={"strategies": ["self_instruct", "score"]})
    assert _cfg().expansion.strategies == ["self_instruct", "label"]  # the default answerer


def test_prompt_completion_and_template():
    cfg = _cfg()
    prompt = prompting.format_prompt(cfg, "charged twice and the app crashes", [("login fails", "account")])
    assert prompt == ("Tag the ticket.\nTags options: billing, bug, account\n\n"
                      "Ticket: login fails\nTags: account\n\nTicket: charged twice and the app crashes\nTags:")
    assert prompting.format_completion(cfg, "billing, bug") == " billing, bug"
    spec = prompting.template_spec(cfg)
    assert spec["answer_format"] == "labels" and spec["prompt_template"].endswith("Ticket: {input}\nTags:")


@pytest.mark.parametrize("raw, parsed", [
    ("billing, bug", "billing, bug"),
    ("Bug, Billing.", "billing, bug"),  # declared order, case folded, punctuation dropped
    ("bug; bug", "bug"),  # once each
    (" account\nmore text", "account"),
    ("billing, refunds", None),  # an unknown label makes the answer invalid, not a shorter set
    ("", None),
])
def test_lenient_parse(raw, parsed):
    assert prompting.parse_output(_cfg(), raw) == parsed


def test_strict_check_names_the_reason():
    cfg = _cfg()
    assert prompting.validate_output(cfg, "billing, bug") is None
    assert prompting.validate_output(cfg, "bug, billing") == "not_canonical"
    assert prompting.validate_output(cfg, "refund") == "not_a_label"
    schema, strict = get_task(cfg).answer_schema()
    import re

    assert re.fullmatch(schema["pattern"], "billing, account") and not re.fullmatch(schema["pattern"], "billing,bug")


def test_metric_example_f1_subset_accuracy_and_per_label_recall():
    task = get_task(_cfg())
    items = [Example(id=str(i), skill="ticket-tags", input="x", output=g, source="human")
             for i, g in enumerate(["billing, bug", "account", "bug"])]
    per_item, agg = score_items(task, items, ["billing", "account", None])
    assert [round(s["example_f1"], 4) for s in per_item] == [0.6667, 1.0, 0.0]
    assert agg["example_f1"] == pytest.approx(0.5556, abs=1e-4)
    assert agg["subset_accuracy"] == pytest.approx(0.3333, abs=1e-4)
    assert agg["invalid_rate"] == pytest.approx(0.3333, abs=1e-4)
    assert agg["per_label_recall"] == {"billing": 1.0, "bug": 0.0, "account": 1.0}
    assert agg["errors"] == {"missing bug": 1, "invalid_output": 1}


def test_new_skill_scaffold_loads_and_validates_with_data(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(tmp_path))
    assert main(["new-skill", "ticket-tags", "--type", "multi_label"]) == 0
    folder = tmp_path / "ticket-tags"
    rows = [("charged twice", "label_a"), ("app crashes on login", "label_a, label_b"),
            ("please add dark mode", "label_c"), ("refund and crash", "label_a, label_b, label_c")]
    (folder / "seeds.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "input": a, "output": b}) + "\n"
                                                for i, (a, b) in enumerate(rows[:3])))
    (folder / "eval.jsonl").write_text(json.dumps({"id": "e0", "input": rows[3][0], "output": rows[3][1]}) + "\n")
    (rep,) = [r for r in validate_all(tmp_path) if r.name == "ticket-tags"]
    assert [p for p in rep.problems if "traffic" not in p] == []
    skill = load_skill("ticket-tags", root=tmp_path)
    assert skill.config.task == "multi_label" and len(skill.seeds) == 3
    # a seed whose labels are out of the declared order is reported with file and line
    (folder / "seeds.jsonl").write_text(json.dumps({"id": "s9", "input": "x y z", "output": "label_b, label_a"}) + "\n")
    (rep,) = [r for r in validate_all(tmp_path) if r.name == "ticket-tags"]
    assert any("seeds.jsonl:1" in p and "not_canonical" in p for p in rep.problems)
