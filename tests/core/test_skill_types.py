"""Skill files of every task type: config checks, per-task data checks with file:line,
safe names, `validate_all`, `distill skills` and `distill new-skill`."""

import json
import os
from pathlib import Path

import pytest
import yaml

from core.records import DataError
from core.scaffold import create_skill
from core.skills import (SkillConfig, SkillError, check_skill_name, load_config,
                         load_examples, load_skill, skill_dir, validate_all)
from core.structured import canonical_json
from core.tasks import BUILTIN, task_names
from tests.core.skillkit import EXTRACT_SCHEMA, SEND, WEATHER, call_input, config, make_skill, rows, traffic

REPO = Path(__file__).resolve().parents[2]


# ---- names -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["ticket-triage", "a", "tool-calling-2", "9lives", "x" * 64])
def test_good_names(name):
    assert check_skill_name(name) == name


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "..", ".hidden", "-lead", "Upper", "under_score",
                                  "sp ace", "x" * 65, "tab\t", "a\\b", "c:", None])
def test_bad_names_are_refused_before_any_path_is_built(name, tmp_path):
    with pytest.raises(SkillError, match="not allowed"):
        check_skill_name(name)
    with pytest.raises(SkillError):
        load_skill(name, root=tmp_path)


def test_bad_name_in_skill_file_names_the_key(tmp_path):
    make_skill(tmp_path, "classification", cfg=config("classification", name="my-skill"))
    y = tmp_path / "my-skill" / "skill.yaml"
    y.write_text(y.read_text().replace("name: my-skill", "name: My_Skill"))
    with pytest.raises(SkillError, match=r"name: Value error, skill name 'My_Skill' is not allowed"):
        load_skill("my-skill", root=tmp_path)


def test_a_symlinked_skill_folder_cannot_point_outside_the_root(tmp_path):
    outside = tmp_path / "elsewhere"
    make_skill(outside, "classification", cfg=config("classification", name="leak"))
    root = tmp_path / "seeds"
    root.mkdir()
    os.symlink(outside / "leak", root / "leak")
    with pytest.raises(SkillError, match="outside"):
        skill_dir(root, "leak")
    with pytest.raises(SkillError, match="outside"):
        load_skill("leak", root=root)


# ---- config per task type -------------------------------------------------------------------

def _errors(cfg: dict) -> str:
    with pytest.raises(ValueError) as e:
        SkillConfig.model_validate(cfg)
    return str(e.value)


def test_every_task_type_has_a_valid_minimal_config():
    assert set(BUILTIN) == {"classification", "extraction", "function_call", "generation"} <= set(task_names())
    for task in BUILTIN:
        assert SkillConfig.model_validate(config(task)).task == task


def test_per_task_config_rules():
    assert "needs the JSON Schema" in _errors(config("extraction", output_schema=None))
    assert "set `type: object`" in _errors(config("extraction", output_schema={"type": "array"}))
    assert "not a valid JSON Schema at properties/a/type" in _errors(
        config("extraction", output_schema={"type": "object", "properties": {"a": {"type": "strng"}}}))
    assert "only classification (and other label) skills have labels" in _errors(config("function_call", labels=["a", "b"]))
    assert "not used by function_call" in _errors(config("function_call", output_schema=EXTRACT_SCHEMA))
    assert "not used by classification" in _errors(config("classification", output_schema=EXTRACT_SCHEMA))
    assert "at least 2 labels" in _errors(config("classification", labels=["a"]))
    assert "one line without ':'" in _errors(config("classification", input_name="Ticket:"))
    assert SkillConfig.model_validate(config("generation", output_schema=EXTRACT_SCHEMA)).output_schema


def test_several_config_problems_come_in_one_message(tmp_path):
    cfg = config("classification", labels=["a"], output_schema={"type": "object"}, name="two-problems")
    make_skill(tmp_path, "classification", cfg=cfg)
    with pytest.raises(SkillError) as e:
        load_config(tmp_path / "two-problems")
    assert "at least 2 labels" in str(e.value) and "not used by classification" in str(e.value)


# ---- data per task type ---------------------------------------------------------------------

@pytest.mark.parametrize("task", BUILTIN)
def test_valid_data_loads_for_every_task_type(tmp_path, task):
    make_skill(tmp_path, task)
    s = load_skill(config(task)["name"], root=tmp_path)
    assert len(s.seeds) == 3 and len(s.eval_set) == 3
    assert all(e.source == "human" and isinstance(e.input, str) and isinstance(e.output, str)
               for e in s.seeds + s.eval_set)


def test_json_fields_are_stored_as_canonical_text(tmp_path):
    seeds = rows("function_call", "seeds")
    seeds[1]["input"] = json.dumps(seeds[1]["input"], indent=2)  # a JSON string is accepted too
    make_skill(tmp_path, "function_call", seeds=seeds)
    s = load_skill("my-function-call", root=tmp_path)
    assert s.seeds[0].input == canonical_json(rows("function_call", "seeds")[0]["input"])
    assert s.seeds[1].input == canonical_json(rows("function_call", "seeds")[1]["input"])
    assert s.seeds[0].output == '{"name":"get_weather","arguments":{"city":"Cityseeds0","unit":"celsius"}}'
    assert s.eval_set[0].output == canonical_json(rows("function_call", "eval")[0]["output"])


def _load_error(tmp_path, task, kind, line_no, change) -> str:
    data = rows(task, kind)
    change(data[line_no - 1])
    make_skill(tmp_path, task, **{"seeds" if kind == "seeds" else "evals": data})
    with pytest.raises(DataError) as e:
        load_skill(config(task)["name"], root=tmp_path)
    return str(e.value)


@pytest.mark.parametrize("task,kind,change,expected", [
    ("extraction", "seeds", lambda r: r["output"].update(amount="forty"),
     r"seeds\.jsonl:2: output: schema_violation: amount: 'forty' is not of type"),
    ("extraction", "eval", lambda r: r["output"].pop("date"),
     r"eval\.jsonl:2: output: schema_violation: \(root\): 'date' is a required property"),
    ("extraction", "seeds", lambda r: r.update(input={"text": "x"}),
     r"seeds\.jsonl:2: 'input' must be a non-empty string for a extraction skill, got dict"),
    ("extraction", "seeds", lambda r: r.update(output="{not json"), r"seeds\.jsonl:2: output: invalid_json"),
    ("function_call", "seeds", lambda r: r["output"].update(name="get_forecast"),
     r"seeds\.jsonl:2: output: unknown_function: 'get_forecast' is not among the tools"),
    ("function_call", "seeds", lambda r: r["output"]["arguments"].update(days="3"),
     r"seeds\.jsonl:2: output: wrong_argument_type: get_weather\.days"),
    ("function_call", "seeds", lambda r: r["output"]["arguments"].pop("city"),
     r"seeds\.jsonl:2: output: missing_required_argument: get_weather: required argument 'city'"),
    ("function_call", "seeds", lambda r: r["input"].update(tools=[]),
     r"seeds\.jsonl:2: input: missing_tools"),
    ("function_call", "seeds", lambda r: r["input"]["tools"].append({"type": "function"}),
     r"seeds\.jsonl:2: input: invalid_tool: tools\[2\]"),
    ("function_call", "eval", lambda r: r["output"]["arguments"].update(city="Oslo"),
     r"eval\.jsonl:2: output: not_acceptable_values: get_weather\.city"),
    ("function_call", "eval", lambda r: r["output"]["arguments"].update(unit=["celsius", "kelvin"]),
     r"eval\.jsonl:2: output: schema_violation: get_weather\.unit: acceptable value 'kelvin'"),
    ("function_call", "eval", lambda r: r["output"]["arguments"].update(days=["3", ""]),
     r"eval\.jsonl:2: output: wrong_argument_type: get_weather\.days: acceptable value '3'"),
    ("function_call", "eval", lambda r: r["output"]["arguments"].update(city=["Oslo", ""]),
     r"eval\.jsonl:2: output: required_argument_omittable: get_weather\.city"),
    ("function_call", "eval", lambda r: r["output"]["arguments"].update(mood=["happy"]),
     r"eval\.jsonl:2: output: unknown_argument: get_weather: no parameter 'mood'"),
    ("function_call", "eval", lambda r: r["output"]["arguments"].update(tags=[["a", "b"], ["b", "a"], ""]),
     None),  # a list of acceptable lists for an array parameter is right
    ("generation", "seeds", lambda r: r.update(output=""), r"seeds\.jsonl:2: 'output' must not be empty"),
    ("classification", "seeds", lambda r: r.update(extra=1), r"seeds\.jsonl:2: unknown key\(s\) \['extra'\]"),
    ("classification", "seeds", lambda r: r.pop("output"), r"seeds\.jsonl:2: missing key\(s\) \['output'\]"),
])
def test_data_problems_name_file_line_and_reason(tmp_path, task, kind, change, expected):
    if expected is None:
        data = rows(task, kind)
        change(data[1])
        make_skill(tmp_path, task, **{"seeds" if kind == "seeds" else "evals": data})
        assert load_skill(config(task)["name"], root=tmp_path)
        return
    import re
    msg = _load_error(tmp_path, task, kind, 2, change)
    assert re.search(expected, msg), msg


def test_every_problem_is_reported_at_once(tmp_path):
    seeds = rows("classification", "seeds", 5)
    seeds[0]["output"] = "maybe"
    seeds[2] = "{not json"
    seeds[4]["id"] = seeds[3]["id"]
    make_skill(tmp_path, "classification", seeds=seeds)
    with pytest.raises(DataError) as e:
        load_skill("my-classification", root=tmp_path)
    msg = str(e.value)
    assert "seeds.jsonl:1: output 'maybe' is not one of the labels" in msg
    assert "seeds.jsonl:3: invalid JSON" in msg
    assert "seeds.jsonl:5: duplicate id 'seeds-3' (first on line 4)" in msg


def test_overlap_between_seeds_and_eval_is_found_by_normalized_request(tmp_path):
    evals = rows("function_call", "eval")
    seed = rows("function_call", "seeds")[0]
    evals[2]["input"] = call_input("  WEATHER in Cityseeds0\nin celsius? ", SEND, WEATHER)  # other tools, same request
    evals[1]["id"] = seed["id"]
    make_skill(tmp_path, "function_call", evals=evals)
    with pytest.raises(DataError) as e:
        load_skill("my-function-call", root=tmp_path)
    assert "eval.jsonl:3: input also in" in str(e.value) and "seeds.jsonl:1" in str(e.value)
    assert "eval.jsonl:2: id 'seeds-0' is also used in" in str(e.value)


def test_empty_seeds_file_is_a_clear_error(tmp_path):
    make_skill(tmp_path, "generation", seeds=[])
    with pytest.raises(DataError, match=r"seeds\.jsonl: no examples"):
        load_skill("my-generation", root=tmp_path)


def test_load_examples_kinds(tmp_path):
    folder = make_skill(tmp_path, "function_call")
    cfg = load_config(folder)
    # an eval file read as seeds: its acceptable-value lists are not concrete arguments
    with pytest.raises(DataError, match="wrong_argument_type"):
        load_examples(folder / "eval.jsonl", cfg, "seeds")
    assert len(load_examples(folder / "eval.jsonl", cfg, "eval set")) == 3
    with pytest.raises(ValueError, match="kind must be one of"):
        load_examples(folder / "eval.jsonl", cfg, "traffic")


# ---- validate_all and the CLI ----------------------------------------------------------------

def test_validate_all_collects_every_problem_of_every_skill(tmp_path):
    make_skill(tmp_path, "classification")
    seeds = rows("extraction", "seeds")
    seeds[0]["output"]["amount"] = -5
    evals = rows("extraction", "eval")
    evals[1]["input"] = seeds[2]["input"]
    tr = traffic("extraction", 3)
    tr[0]["accepted"] = "yes"
    tr[1]["reference"] = {"person": 1}  # wrong, but rejected by a person: allowed
    tr[1]["accepted"] = False
    tr[2]["reference"] = {"person": 1}
    make_skill(tmp_path, "extraction", seeds=seeds, evals=evals, traffic_rows=tr)
    (tmp_path / "Bad_Name").mkdir()
    reports = {r.name: r for r in validate_all(tmp_path)}
    assert reports["my-classification"].ok
    assert reports["my-classification"].counts == {"seeds": 3, "eval": 3, "traffic": 2}
    ext = reports["my-extraction"]
    text = "\n".join(ext.problems)
    assert len(ext.problems) == 4, text
    assert "seeds.jsonl:1: output: schema_violation" in text
    assert "eval.jsonl:2: input also in" in text
    assert "traffic.jsonl:1: 'accepted' must be true or false" in text
    assert "traffic.jsonl:3: reference: schema_violation" in text
    assert ext.counts == {"seeds": 2, "eval": 3, "traffic": 1}
    assert any("not allowed" in p for p in reports["Bad_Name"].problems)
    assert any("no skill.yaml" in p for p in reports["Bad_Name"].problems)


def test_validate_all_checks_every_profile(tmp_path):
    cfg = config("classification", profiles={"fast": {"expansion": {"target_examples": -1}}})
    make_skill(tmp_path, "classification", cfg=cfg)
    (rep,) = validate_all(tmp_path)
    assert len(rep.problems) == 1 and rep.problems[0].startswith("profile fast:")
    assert "expansion.target_examples" in rep.problems[0]


def test_every_bundled_skill_is_valid():
    reports = validate_all(REPO / "seeds")
    assert {"ticket-triage"} <= {r.name for r in reports}
    assert all(r.ok for r in reports), [p for r in reports for p in r.problems][:10]


def test_distill_skills_lists_problems_with_file_and_line(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    make_skill(tmp_path, "function_call")
    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(tmp_path))
    assert main(["skills"]) == 0
    out = capsys.readouterr().out
    assert "my-function-call" in out and "function_call" in out and " ok" in out
    ev = tmp_path / "my-function-call" / "eval.jsonl"
    lines = ev.read_text().splitlines()
    obj = json.loads(lines[1])
    obj["output"]["name"] = "get_forecast"
    lines[1] = json.dumps(obj)
    ev.write_text("\n".join(lines) + "\n")
    assert main(["skills"]) == 1
    out = capsys.readouterr().out
    assert f"{ev}:2: output: unknown_function: 'get_forecast'" in out and "1 problem(s)" in out


def test_distill_skills_with_no_skills(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(tmp_path))
    assert main(["skills"]) == 2
    assert "no skills found" in capsys.readouterr().err


@pytest.mark.parametrize("task", task_names())
def test_new_skill_writes_a_commented_file_that_loads_back(tmp_path, task):
    folder = create_skill(f"new-{task.replace('_', '-')}", task, tmp_path)
    text = (folder / "skill.yaml").read_text()
    cfg = load_config(folder)
    assert cfg.task == task
    # the file holds every key of every block, each with its value, so the defaults are visible
    raw = yaml.safe_load(text)
    assert raw["name"] == folder.name
    assert raw["teacher"].keys() == SkillConfig.model_fields["teacher"].annotation.model_fields.keys()
    assert raw["student"]["train"].keys() == cfg.student.train.model_dump().keys()
    assert {k for k in raw} == {k for k in SkillConfig.model_fields if k in raw}
    assert cfg.model_dump() == load_config(folder).model_dump()
    assert text.count("\n# ") + text.count("\n  # ") > 40  # commented
    assert "# Label before the answer in prompts." in text
    for f in ("seeds.jsonl", "eval.jsonl", "traffic.jsonl"):
        assert (folder / f).read_text() == ""
    # empty data: the skill does not load and `validate_all` says why
    with pytest.raises(DataError, match="no examples"):
        load_skill(folder.name, root=tmp_path)
    (rep,) = validate_all(tmp_path)
    assert any("seeds.jsonl: no examples" in p for p in rep.problems)


def test_new_skill_writes_the_measured_defaults_and_they_scale_with_its_labels(tmp_path):
    """Issue 36: `new-skill` wrote target_examples 64 (0.56 on ticket-triage against 0.74 with 192), random
    shots and no audit floor. Now the measured settings, with `auto` resolved from the labels the user writes."""
    folder = create_skill("intents", "classification", tmp_path)
    raw = yaml.safe_load((folder / "skill.yaml").read_text())
    assert raw["expansion"]["target_examples"] == "auto" and raw["audit"]["floor"] == "auto"
    assert raw["teacher"]["shot_selection"] == "auto" and raw["teacher"]["calibration"] == "auto"
    assert raw["audit"]["on_fail"] == "stop" and raw["filters"]["target_precision"] == 0.6
    assert raw["student"]["train"]["checkpoint_selection"] == "last" and raw["gates"]["margin"] == 0.1
    assert "# Measured: " in (folder / "skill.yaml").read_text()
    raw["labels"] = [f"intent_{i}" for i in range(8)]  # the 8-label skill
    (folder / "skill.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(folder)
    assert cfg.expansion.target_examples == 320  # 192 per 5 labels, scaled
    assert cfg.audit.floor == 0.312  # 2.5x chance (0.125): the teacher at 0.29 is refused
    raw["labels"] = ["yes", "no"]
    (folder / "skill.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(folder)
    assert cfg.expansion.target_examples == 192 and cfg.audit.floor == 0.75  # at most halfway from chance to 1
    # A format (no labels): the shipped skill's size, the gates' floor, and the seeds alone below it.
    fc = load_config(create_skill("calls", "function_call", tmp_path))
    assert (fc.expansion.target_examples, fc.audit.floor, fc.audit.on_fail) == (32, fc.gates.floor["ast_accuracy"],
                                                                                 "skip_expansion")


def test_new_skill_filled_with_its_documented_example_line_validates(tmp_path):
    """The example line written in the header of a new skill.yaml is valid data for it."""
    folder = create_skill("doc-example", "function_call", tmp_path)
    text = (folder / "skill.yaml").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith('#                  {"id"'))
    example = json.loads(line.lstrip("# "))
    (folder / "seeds.jsonl").write_text(json.dumps(example) + "\n")
    gold = json.loads(next(ln for ln in text.splitlines() if '"output": {"name"' in ln and "Oslo, Norway" in ln)
                      .split('"output": ', 1)[1])
    (folder / "eval.jsonl").write_text(json.dumps({"id": "eval-001", "input": {
        "request": "Is it warm in Oslo?", "tools": example["input"]["tools"]}, "output": gold}) + "\n")
    (rep,) = validate_all(tmp_path)
    assert rep.ok, rep.problems


def test_new_skill_refuses_bad_names_existing_folders_and_unknown_types(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(tmp_path))
    assert main(["new-skill", "my-tool", "--type", "function_call"]) == 0
    assert (tmp_path / "my-tool" / "skill.yaml").is_file()
    capsys.readouterr()
    assert main(["new-skill", "my-tool", "--type", "extraction"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["new-skill", "../escape", "--type", "extraction"]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert not (tmp_path.parent / "escape").exists()
    with pytest.raises(SystemExit) as e:
        main(["new-skill", "ok-name", "--type", "poetry"])
    assert e.value.code == 2
    with pytest.raises(SkillError, match="unknown task type"):
        create_skill("ok-name", "poetry", tmp_path)


@pytest.mark.parametrize("bad", ["../etc", "a/b", "/abs", "UPPER", "", "x" * 65])
def test_work_dir_paths_refuse_names_that_escape(bad, tmp_path, monkeypatch):
    from core.skills import SkillError
    from core.workdir import index_dir, pool_dir, runs_dir

    monkeypatch.setenv("DISTILL_HOME", str(tmp_path))
    for fn in (runs_dir, pool_dir, index_dir):
        with pytest.raises(SkillError):
            fn(bad)
    assert runs_dir("ticket-triage") == tmp_path / "runs" / "ticket-triage"
