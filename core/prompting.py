"""The prompt template: one function turns an input into the model's prompt for
training, evaluation, the teacher and registry consumers alike.

The template is plain text (the embedded Gemma 3 270M is a base model with no chat
template), and is bundled with every published adapter in `skill.json` so
consumers format inputs exactly as in training.
"""

from __future__ import annotations

import re
from typing import Sequence

from core.skills import SkillConfig

TEMPLATE_VERSION = 1


def header(cfg: SkillConfig) -> str:
    lines = [cfg.instruction.strip()]
    if cfg.labels:
        lines.append(f"{cfg.output_name} options: {', '.join(cfg.labels)}")
    return "\n".join(lines) + "\n\n"


def format_shot(cfg: SkillConfig, input: str, output: str) -> str:
    return f"{cfg.input_name}: {_one_line(input)}\n{cfg.output_name}: {output}\n\n"


def format_prompt(cfg: SkillConfig, input: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt the model completes; the answer follows after one space."""
    body = "".join(format_shot(cfg, i, o) for i, o in shots)
    return f"{header(cfg)}{body}{cfg.input_name}: {_one_line(input)}\n{cfg.output_name}:"


def format_completion(cfg: SkillConfig, output: str) -> str:
    """What the model is trained to write after the prompt (EOS is added by the trainer)."""
    return f" {output}"


def _one_line(text: str) -> str:
    # Inputs are shown on one line so the answer line is unambiguous.
    return " ".join(text.split())


def parse_output(cfg: SkillConfig, text: str) -> str | None:
    """Lenient parse (first line, case, punctuation, code fences); None when nothing valid."""
    text = text.strip().strip("`").strip()
    first = text.splitlines()[0].strip() if text else ""
    if cfg.task == "classification":
        token = re.sub(r"[^a-z0-9_\- ]", " ", first.lower()).strip()
        token = token.replace(" ", "_") if token.replace(" ", "_") in cfg.labels else token
        if token in cfg.labels:
            return token
        # Accept "billing." or "billing - because ..." but not a label buried mid-sentence.
        head = token.split()[0] if token.split() else ""
        return head if head in cfg.labels else None
    return first or None


def template_spec(cfg: SkillConfig) -> dict:
    """What a consumer needs to format inputs and parse outputs as in training."""
    return {
        "template_version": TEMPLATE_VERSION,
        "task": cfg.task,
        "instruction": cfg.instruction,
        "input_name": cfg.input_name,
        "output_name": cfg.output_name,
        "labels": list(cfg.labels),
        "prompt_template": header(cfg) + f"{cfg.input_name}: {{input}}\n{cfg.output_name}:",
        "completion_prefix": " ",
        "stop": ["\n"],
    }
