import json
import shutil
from pathlib import Path

import pytest

from core.records import DataError
from core.skills import SkillError, load_skill

REPO = Path(__file__).resolve().parents[2]


def _copy(tmp_path) -> Path:
    root = tmp_path / "seeds"
    shutil.copytree(REPO / "seeds", root)
    return root


def test_ticket_triage_is_a_real_skill():
    s = load_skill("ticket-triage", root=REPO / "seeds")
    labels = {e.output for e in s.seeds}
    assert len(s.seeds) >= 40 and len(labels) >= 5
    assert len(s.eval_set) >= 80
    assert not {e.input for e in s.seeds} & {e.input for e in s.eval_set}
    assert all(e.source == "human" for e in s.seeds + s.eval_set)


def test_smoke_profile_overrides_defaults():
    s = load_skill("ticket-triage", profile="smoke", root=REPO / "seeds")
    assert s.config.expansion.target_examples == 8
    assert s.config.gates.publish_alias == "candidate"
    assert s.config.labels == load_skill("ticket-triage", root=REPO / "seeds").config.labels


def test_malformed_seed_line_names_file_and_line(tmp_path):
    root = _copy(tmp_path)
    seeds = root / "ticket-triage" / "seeds.jsonl"
    lines = seeds.read_text().splitlines()
    lines[6] = lines[6][:-3]  # cut the closing of line 7
    seeds.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"seeds\.jsonl:7: invalid JSON"):
        load_skill("ticket-triage", root=root)


def test_unknown_label_names_file_and_line(tmp_path):
    root = _copy(tmp_path)
    ev = root / "ticket-triage" / "eval.jsonl"
    lines = ev.read_text().splitlines()
    obj = json.loads(lines[2])
    obj["output"] = "sales"
    lines[2] = json.dumps(obj)
    ev.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"eval\.jsonl:3: output 'sales' is not one of the labels"):
        load_skill("ticket-triage", root=root)


def test_missing_eval_set_and_unknown_skill(tmp_path):
    root = _copy(tmp_path)
    (root / "ticket-triage" / "eval.jsonl").unlink()
    with pytest.raises(SkillError, match="missing eval set file"):
        load_skill("ticket-triage", root=root)
    with pytest.raises(SkillError, match="unknown skill 'nope'.*ticket-triage"):
        load_skill("nope", root=root)


def test_config_errors_are_collected_into_one_message(tmp_path):
    root = _copy(tmp_path)
    y = root / "ticket-triage" / "skill.yaml"
    y.write_text(y.read_text().replace("few_shot: 10", "few_shot: -1").replace("epochs: 3", "epochs: zero")
                 + "\nunknown_key: 1\n")
    with pytest.raises(SkillError) as e:
        load_skill("ticket-triage", root=root)
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "teacher.few_shot" in msg and "student.train.epochs" in msg and "unknown_key" in msg


def test_unknown_profile(tmp_path):
    with pytest.raises(SkillError, match="unknown profile 'huge'.*smoke"):
        load_skill("ticket-triage", profile="huge", root=REPO / "seeds")


def test_distill_skills_refuses_an_answer_cap_that_cuts_a_label(skill_root, capsys):
    """Issue 36: an explicit cap below the longest label in the student's tokens is refused at
    `distill skills`, naming the key and the label it would cut; the run's start refuses it too."""
    import yaml

    from core.answer_cap import count_tokens, local_tokenizer
    from core.config import SkillError
    from core.skills import load_skill, validate_all
    from flows.cli import main

    path = skill_root / "ticket-triage" / "skill.yaml"
    raw = yaml.safe_load(path.read_text())
    tok = local_tokenizer(raw["student"]["base_model"])  # the tiny model: a local folder
    need = max(count_tokens(" " + lab, tok) for lab in raw["labels"]) + 1
    longest = max(raw["labels"], key=lambda lab: count_tokens(" " + lab, tok))
    assert need > 2
    raw["gates"]["max_new_tokens"] = need - 1
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    report = next(r for r in validate_all(skill_root) if r.name == "ticket-triage")
    assert report.problems == [f"gates.max_new_tokens: {need - 1} tokens would cut the answer {longest!r}, which "
                               f"needs {need} ({need - 1} tokens and the stop) with the student's tokenizer; set "
                               f"gates.max_new_tokens to at least {need} or remove the key (the default holds every "
                               f"answer)"]
    assert main(["skills"]) == 1 and "gates.max_new_tokens" in capsys.readouterr().out
    from trainers.base_model import check_answer_caps

    with pytest.raises(SkillError, match=f"would cut the answer {longest!r}"):
        check_answer_caps(load_skill("ticket-triage", root=skill_root), raw["student"]["base_model"])
    raw["gates"]["max_new_tokens"] = need
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert next(r for r in validate_all(skill_root) if r.name == "ticket-triage").ok
