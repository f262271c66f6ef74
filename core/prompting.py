"""The prompt template: one function turns an input into the model's prompt for
training, evaluation, the teacher and registry consumers alike.

The template is plain text (the embedded Gemma 3 270M is a base model with no chat
template), and is bundled with every published adapter in `skill.json` so
consumers format inputs exactly as in training.

What differs per task type (how an input and an answer are rendered, parsed and checked) is
asked of the skill's task type (core/tasks/); this module holds what every type shares: the
header, the prompt around the input, and skill.json's template. Answers are always one line (compact JSON for JSON tasks), so "\n" is the stop.
Structured inputs and outputs are canonical JSON text (`core.structured.canonical_json`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from core import structured
from core.config import SkillConfig
from core.tasks import get_task
from core.tasks.base import one_line as _one_line

# 1: classification only. 2: every task type; the classification prompt is unchanged.
TEMPLATE_VERSION = 2
# Longest property description shown in an extraction prompt's key list (see schema_sketch).
SKETCH_DESCRIPTION_CHARS = 40


def is_json_task(cfg: SkillConfig) -> bool:
    """Whether answers are JSON (compact, one line) rather than a label or text."""
    return get_task(cfg).json_output


def _type_sketch(schema: Any) -> str:
    """A short human form of a property schema: "order"|"support", string|null, number."""
    if not isinstance(schema, dict):
        return "any"
    if "enum" in schema:
        return "|".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return "|".join(_type_sketch(s) for s in schema[key])
    t = schema.get("type", "any")
    types = t if isinstance(t, list) else [t]
    out = []
    for ty in types:
        if ty == "array":
            out.append(f"list of {_type_sketch(schema.get('items'))}")
        elif ty == "object" and isinstance(schema.get("properties"), dict):
            out.append("{" + ", ".join(schema["properties"]) + "}")
        else:
            out.append(str(ty))
    return "|".join(out)


def schema_sketch(schema: dict) -> str:
    """The keys of an object schema with their types, on one line (far shorter than the
    schema itself: the student's context is a few hundred tokens)."""
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        return "a JSON value matching " + structured.canonical_json(schema)
    parts = []
    for key, sub in props.items():
        desc = _one_line(sub.get("description") or "") if isinstance(sub, dict) else ""
        # Short descriptions (a format such as YYYY-MM-DD) are shown; long conventions would
        # double every prompt, and the examples teach them anyway.
        shown = f" ({desc})" if desc and len(desc) <= SKETCH_DESCRIPTION_CHARS else ""
        parts.append(f"{key}: {_type_sketch(sub)}{shown}")
    return "; ".join(parts)


def header(cfg: SkillConfig) -> str:
    lines = [cfg.instruction.strip()]
    if cfg.labels:
        lines.append(f"{cfg.output_name} options: {', '.join(cfg.labels)}")
    if cfg.output_schema is not None:
        lines.append(f"{cfg.output_name} keys: {schema_sketch(cfg.output_schema)}")
    return "\n".join(lines) + "\n\n"


def format_input(cfg: SkillConfig, input: str) -> str:
    """The input block of a prompt, up to and including the input line."""
    return get_task(cfg).format_input(input)


def format_shot(cfg: SkillConfig, input: str, output: str) -> str:
    return f"{format_input(cfg, input)}\n{cfg.output_name}:{format_completion(cfg, output)}\n\n"


def format_prompt(cfg: SkillConfig, input: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt the model completes; the answer follows after one space."""
    body = "".join(format_shot(cfg, i, o) for i, o in shots)
    return f"{header(cfg)}{body}{format_input(cfg, input)}\n{cfg.output_name}:"


def render_prompt(cfg: SkillConfig, input: str, tokenizer=None) -> str:
    """The text the model reads for `input`: the skill's prompt, wrapped in the base tokenizer's chat
    template when `student.train.prompt_format` is chat_template (as trl renders it for training:
    the user turn, then the generation prompt). The chat template's leading BOS text is left to the
    tokenizer, so `tokenizer(text)` gives the very ids the trainer's prompt had. ValueError when a
    chat-template skill is rendered without its tokenizer."""
    prompt = format_prompt(cfg, input)
    return chat_wrap(prompt, tokenizer) if cfg.student.train.prompt_format == "chat_template" else prompt


def chat_wrap(prompt: str, tokenizer) -> str:
    """`prompt` as the user turn of the tokenizer's chat template, with the generation prompt; minus
    the template's leading BOS text when the tokenizer adds BOS itself (so `tokenizer(text)` has one)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("student.train.prompt_format is chat_template: the prompt needs the base tokenizer's chat "
                         "template (pass the tokenizer; a base model without one cannot use chat_template)")
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    ids = tokenizer("a")["input_ids"] if bos else []
    adds_bos = bool(ids) and ids[0] == tokenizer.bos_token_id
    return text[len(bos):] if adds_bos and text.startswith(bos) else text


def format_completion(cfg: SkillConfig, output: str) -> str:
    """What the model is trained to write after the prompt (EOS is added by the trainer)."""
    return get_task(cfg).format_completion(output)


def parse_output(cfg: SkillConfig, text: str) -> str | None:
    """Lenient parse (first line, case, punctuation, code fences; for JSON tasks the first
    JSON object anywhere in the text) into canonical text; None when nothing usable.
    Parsing does not judge the answer: see validate_output."""
    return get_task(cfg).parse_output(text)


def output_problem(cfg: SkillConfig, output: str, input: str | None = None) -> structured.Problem | None:
    """validate_output with a human detail: (reason, detail) or None."""
    return get_task(cfg).output_problem(output, input)


def validate_output(cfg: SkillConfig, output: str, input: str | None = None) -> str | None:
    """None when `output` (canonical text, as parse_output returns) is a valid answer,
    else a snake_case reason: not_a_label, invalid_json, schema_violation, malformed_call,
    unknown_function, unknown_argument, missing_required_argument, wrong_argument_type,
    empty_output. Function calls are checked against the input's tools when given."""
    bad = output_problem(cfg, output, input)
    return bad[0] if bad else None


def input_problem(cfg: SkillConfig, input: str) -> structured.Problem | None:
    """validate_input with a human detail: (reason, detail) or None."""
    return get_task(cfg).input_problem(input)


def validate_input(cfg: SkillConfig, input: str) -> str | None:
    """None when `input` is a valid input for the skill, else a snake_case reason:
    empty_input, invalid_json, missing_request, missing_tools, invalid_tool, duplicate_tool."""
    bad = input_problem(cfg, input)
    return bad[0] if bad else None


def response_format(cfg: SkillConfig) -> dict | None:
    """An OpenAI `response_format` payload that constrains a teacher's answer, or None
    (plain-text generation). Classification: a JSON string among the labels (a quoted
    label, which parse_output accepts; servers such as llama.cpp and vLLM take a non-object
    root, OpenAI's strict mode does not). `strict` only where the schema fits OpenAI's
    strict subset (every key required, no extra keys); otherwise the server treats it as
    a hint and validate_output checks the answer."""
    got = get_task(cfg).answer_schema()
    if got is None:
        return None
    schema, strict = got
    name = re.sub(r"[^A-Za-z0-9_-]", "_", cfg.name)[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def _braces(text: str) -> str:
    # The template is a str.format string: literal braces (JSON in an instruction) are doubled.
    return text.replace("{", "{{").replace("}", "}}")


def template_spec(cfg: SkillConfig) -> dict:
    """What a consumer needs to format inputs and parse outputs as in training.

    `prompt_template` is a str.format string. classification / extraction / generation:
    `.format(input=one_line_input)`. function_call: `.format(tools=..., request=...)`
    where tools is one `tool_template` line per tool joined by "\\n" (parameters as
    compact JSON, description omitted with its space when empty). The model writes
    `completion_prefix` then the answer and stops at `stop`."""
    task = get_task(cfg)
    prompt, extra = task.template_prompt(_braces(header(cfg)), _braces)
    return {
        "template_version": TEMPLATE_VERSION,
        "task": cfg.task,
        "instruction": cfg.instruction,
        "input_name": cfg.input_name,
        "output_name": cfg.output_name,
        "labels": list(cfg.labels),
        "output_schema": cfg.output_schema,
        "answer_format": task.answer_format,
        "prompt_format": cfg.student.train.prompt_format,
        "prompt_template": prompt,
        "completion_prefix": " ",
        "stop": ["\n"],
        **extra,
    }
