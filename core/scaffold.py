"""`distill new-skill`: a commented skill.yaml and empty data files.

The per-type parts (instruction, prompt labels, a placeholder answer, the floor) come from the
task type's `scaffold`; every other key is written with its default and help text from core/config.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from core import structured
from core.config import SkillConfig, SkillError, check_skill_name
from core.skills import seeds_root, skill_dir
from core.tasks import task_class, task_names

# What `new-skill` writes beyond the config defaults (measured_settings): the settings measured best on the shipped skills, each
# with why (a comment line above the key). `auto` keys resolve from the skill's own labels when it loads
# (core/config.py auto_target_examples, auto_audit_floor), so they scale with the labels written later.
_AUDITED = {
    ("teacher", "shot_selection"): ("auto", "per run: the audit scores random and similar (BM25) shots and the "
                                            "better labels the run (ticket-triage: 0.58 similar+calibrated against "
                                            "0.44 random+sampled)."),
    ("audit", "floor"): ("auto", "from the task: 2.5x chance for a label set (8 labels: 0.312), else the gates' floor. "
                                 "An 8-label skill's teacher at 0.29 (2.3x chance) made its student worse with more "
                                 "data (0.48 against 0.57); ticket-triage's at 0.58 (2.9x) lifted it from 0.32 to 0.74."),
    ("expansion", "target_examples"): ("auto", "scaled with the labels: 192 for ticket-triage's 5 (64 scored 0.56, 128 "
                                               "0.70, 192 0.74 over 6 runs), 38.4 per label, at least 192; 64 "
                                               "extraction, 32 function calls (the shipped skills)."),
}
_LABELED = {
    ("teacher", "calibration"): ("auto", "per run with the score answerer, the audit scores raw against calibrated label "
                                         "scores (ticket-triage: calibrated won, 0.58 against 0.54)."),
    ("filters", "target_precision"): (0.6, "ticket-triage: 0.68 +- 0.02 over 6 runs against 0.66 +- 0.09 at 0.7 "
                                           "(0.7 cuts a weak teacher's data)."),
    ("filters", "max_label_distance"): (0.2, "ticket-triage: keeps the teacher's lean to one label out of the data."),
    ("student", "train", "checkpoint_selection"): ("last", "ticket-triage: the last checkpoint scored 0.68 / 0.74 / "
                                                           "0.66 where the lowest validation loss chose 0.43 / 0.53 / "
                                                           "0.53 (its validation labels are mostly the teacher's)."),
    ("gates", "margin"): (0.1, "the paired 95% interval on ~100 eval items is about +-0.07: a smaller margin "
                               "rejects equal candidates (benchmarks/eval_gates.py)."),
}
# Below the floor: a label set stops (seeds alone do not teach it); a format is learnt from the seeds alone.
_STOP = {("audit", "on_fail"): ("stop", "below the floor, stop and say why: seeds alone trained a 0.32 student on "
                                        "ticket-triage (chance 0.20), below its gate floor.")}
_SEEDS_ALONE = {("audit", "on_fail"): ("skip_expansion", "below the floor, train without the teacher's data: "
                                                         "tool-calling's teacher audited 0.09 AST, and its seeds "
                                                         "alone trained students of 0.265 +- 0.021 over 6 runs.")}
_SCORED = ("teacher", "filters")  # the keys of _LABELED that need label scores (the score answerer)


def measured_settings(task: str) -> dict[tuple[str, ...], tuple[Any, str]]:
    """The measured keys `new-skill` writes for a task type: label sets (labels in its scaffold) stop below
    the audit floor and take ticket-triage's training and gate settings, plus its calibration and confidence
    filters where the type scores labels; other types train on the seeds alone below the floor."""
    t = task_class(task)
    if "labels" not in t.scaffold:
        return {**_AUDITED, **_SEEDS_ALONE}
    scored = t.default_answerer == "score"
    return {**_AUDITED, **{k: v for k, v in _LABELED.items() if scored or k[0] not in _SCORED}, **_STOP}


# Comments for keys whose config class has no description.
_FALLBACK_COMMENTS = {
    "cron": "Cron expression for scheduled runs, e.g. \"0 3 * * *\" (null: manual runs only).",
}


def _flow(value: Any) -> str:
    # PyYAML, not json.dumps: YAML 1.1 reads a JSON float such as 1e-05 as a string.
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip().removesuffix("\n...").strip()


def _comment(text: str, pad: str) -> list[str]:
    import textwrap

    return [f"{pad}# {line}" for line in textwrap.wrap(" ".join(text.split()), 96 - len(pad))]


def _emit(model: BaseModel, pad: str, measured: dict[tuple[str, ...], tuple[Any, str]] | None = None,
          path: tuple[str, ...] = ()) -> list[str]:
    """Every field of a config block with its value and description as a comment; a `measured` key
    (MEASURED) is written as given (`auto` stays `auto`), with why."""
    lines: list[str] = []
    values = model.model_dump(mode="json")
    for key, info in type(model).model_fields.items():
        desc = info.description or _FALLBACK_COMMENTS.get(key)
        lines += _comment(desc, pad) if desc else []
        sub = getattr(model, key)
        here = (*path, key)
        if isinstance(sub, BaseModel):
            lines.append(f"{pad}{key}:")
            lines += _emit(sub, pad + "  ", measured, here)
        elif measured and here in measured:
            value, why = measured[here]
            lines += _comment(f"Measured: {why}", pad) + [f"{pad}{key}: {_flow(value)}"]
        else:
            lines.append(f"{pad}{key}: {_flow(values[key])}")
    return lines


def skill_template(name: str, task: str) -> str:
    """The text of a new skill.yaml: every key with its value and what it means."""
    check_skill_name(name)
    if task not in task_names():
        raise SkillError(f"unknown task type {task!r}; choose one of: {', '.join(task_names())}")
    spec = task_class(task).scaffold
    raw: dict[str, Any] = {"name": name, "task": task, "instruction": spec["instruction"],
                           "input_name": spec["input_name"], "output_name": spec["output_name"]}
    for key in ("labels", "output_schema"):
        if key in spec:
            raw[key] = spec[key]
    raw["gates"] = {"floor": spec["floor"]}
    if "max_length" in spec:
        raw["student"] = {"train": {"max_length": spec["max_length"]}}
    measured = measured_settings(task)
    for keys, (value, _) in measured.items():  # validated with the rest: a measured value must load
        block = raw
        for k in keys[:-1]:
            block = block.setdefault(k, {})
        block[keys[-1]] = value
    cfg = SkillConfig.model_validate(raw)  # the file written must load back to this config
    example = json.dumps(spec["example"], ensure_ascii=False)
    lines = [
        f"# Skill {name!r} ({task}). Every key is listed with its default and what it means; delete a",
        "# block to take the defaults (they live in core/config.py). Check with `distill skills`, then",
        f"# `distill run {name} --profile smoke` for a quick end-to-end run.",
        "#",
        "# Data files next to this one, JSON lines, one example per line:",
        "#   seeds.jsonl    human-written examples (the teacher imitates them, the student trains on them):",
        f"#                  {example}",
        "#   eval.jsonl     the frozen regression set, same form; never trained on, no input shared with seeds",
    ]
    if spec.get("eval_example") is not None:
        lines += ["#                  whose output lists every acceptable value per argument (\"\" = may be omitted):",
                  f"#                  \"output\": {structured.canonical_json(spec['eval_example'])}"]
    lines += [
        "#   traffic.jsonl  live requests with the reference answer, replayed by the gate:",
        '#                  {"id", "timestamp", "request", "reference", "reference_source": "llm"|"human", "accepted": true|false}',
        "",
    ]
    values = cfg.model_dump(mode="json")
    for key, info in SkillConfig.model_fields.items():
        if key in ("labels", "output_schema") and key not in raw:
            continue  # not used by this task type (the validator refuses them)
        if key == "profiles":
            lines += [""] + _comment(info.description or "", "")
            lines += ["# Built in: `smoke` (few items, a few training steps, publishes as candidate only).",
                      "# Example: profiles: {quick: {expansion: {target_examples: 16}}}", "profiles: {}"]
            continue
        sub = getattr(cfg, key)
        desc = info.description or _FALLBACK_COMMENTS.get(key, "")
        if isinstance(sub, BaseModel):
            lines += [""] + (_comment(desc, "") if desc else []) + [f"{key}:"] + _emit(sub, "  ", measured, (key,))
        elif key == "output_schema":
            schema = yaml.safe_dump({key: values[key]}, sort_keys=False, default_flow_style=None, width=100).rstrip()
            lines += _comment(desc, "") + schema.splitlines()
        else:
            lines += _comment(desc, "") + [f"{key}: {_flow(values[key])}"]
    return "\n".join(lines) + "\n"


def create_skill(name: str, task: str, root: Path | None = None) -> Path:
    """Write root/NAME/ with a commented skill.yaml and empty seeds/eval/traffic files.
    Refuses a bad name, an unknown task type or an existing folder (SkillError)."""
    root = Path(root or seeds_root())
    folder = skill_dir(root, name)
    text = skill_template(name, task)
    if folder.exists():
        raise SkillError(f"{folder} already exists; choose another name or edit that skill")
    root.mkdir(parents=True, exist_ok=True)
    folder.mkdir()
    (folder / "skill.yaml").write_text(text, encoding="utf-8")
    for fname in ("seeds.jsonl", "eval.jsonl", "traffic.jsonl"):
        (folder / fname).touch()
    return folder
