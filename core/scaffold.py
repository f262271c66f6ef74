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


def _emit(model: BaseModel, pad: str) -> list[str]:
    """Every field of a config block with its default value and description as a comment."""
    lines: list[str] = []
    values = model.model_dump(mode="json")
    for key, info in type(model).model_fields.items():
        desc = info.description or _FALLBACK_COMMENTS.get(key)
        lines += _comment(desc, pad) if desc else []
        sub = getattr(model, key)
        if isinstance(sub, BaseModel):
            lines.append(f"{pad}{key}:")
            lines += _emit(sub, pad + "  ")
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
            lines += [""] + (_comment(desc, "") if desc else []) + [f"{key}:"] + _emit(sub, "  ")
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
