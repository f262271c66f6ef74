"""The prompt template: one function turns an input into the model's prompt for
training, evaluation, the teacher and registry consumers alike.

The template is plain text (the embedded Gemma 3 270M is a base model with no chat
template), and is bundled with every published adapter in `skill.json` so
consumers format inputs exactly as in training.

Per task type (see the contract in the team brief):
  classification  input: text;  answer: one of the labels
  extraction      input: text;  answer: a JSON object matching `output_schema`
  function_call   input: {"request", "tools"} as JSON;  answer: {"name", "arguments"}
  generation      input: text;  answer: one line of text (JSON when `output_schema` is set)
Answers are always one line (compact JSON for JSON tasks), so "\n" is the stop.
Structured inputs and outputs are canonical JSON text (`core.structured.canonical_json`).
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from core import structured
from core.skills import SkillConfig

# 1: classification only. 2: every task type; the classification prompt is unchanged.
TEMPLATE_VERSION = 2
# Longest property description shown in an extraction prompt's key list (see schema_sketch).
SKETCH_DESCRIPTION_CHARS = 40


def is_json_task(cfg: SkillConfig) -> bool:
    """Whether answers are JSON (compact, one line) rather than a label or text."""
    return cfg.task in ("extraction", "function_call") or (cfg.task == "generation" and cfg.output_schema is not None)


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


def format_tool(tool: dict) -> str:
    """One tool on one line: name, description, parameters as compact JSON."""
    fn = tool["function"]
    desc = _one_line(fn.get("description") or "")
    params = structured.canonical_json(fn.get("parameters") or {"type": "object", "properties": {}})
    return f"- {fn['name']}: {desc + ' ' if desc else ''}Parameters: {params}"


def _call_input(input: str) -> dict:
    obj = structured.loads_object(input)
    bad = structured.check_call_input(obj)
    if bad:
        raise ValueError(f"function_call input: {bad[1]} ({bad[0]}); input was {input[:120]!r}")
    return obj


def format_input(cfg: SkillConfig, input: str) -> str:
    """The input block of a prompt, up to and including the input line."""
    if cfg.task == "function_call":
        obj = _call_input(input)
        tools = "\n".join(format_tool(t) for t in obj["tools"])
        return f"Tools:\n{tools}\n{cfg.input_name}: {_one_line(obj['request'])}"
    return f"{cfg.input_name}: {_one_line(input)}"


def format_shot(cfg: SkillConfig, input: str, output: str) -> str:
    return f"{format_input(cfg, input)}\n{cfg.output_name}:{format_completion(cfg, output)}\n\n"


def format_prompt(cfg: SkillConfig, input: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt the model completes; the answer follows after one space."""
    body = "".join(format_shot(cfg, i, o) for i, o in shots)
    return f"{header(cfg)}{body}{format_input(cfg, input)}\n{cfg.output_name}:"


def format_completion(cfg: SkillConfig, output: str) -> str:
    """What the model is trained to write after the prompt (EOS is added by the trainer)."""
    if cfg.task == "classification":
        return f" {output}"
    if is_json_task(cfg):
        obj = _loads(output)
        if obj is not None:
            return " " + structured.canonical_json(obj)
    return f" {_one_line(output)}"


def _one_line(text: str) -> str:
    # Inputs are shown on one line so the answer line is unambiguous.
    return " ".join(text.split())


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _unwrap_call(obj: dict) -> dict:
    """Common near-misses of a call: OpenAI's arguments-as-a-JSON-string, or a
    {"function": {...}} / {"tool_calls": [...]} wrapper."""
    if isinstance(obj.get("tool_calls"), list) and obj["tool_calls"] and isinstance(obj["tool_calls"][0], dict):
        obj = obj["tool_calls"][0]
    if isinstance(obj.get("function"), dict) and "name" in obj["function"]:
        obj = obj["function"]
    if isinstance(obj.get("arguments"), str):
        args = structured.loads_object(obj["arguments"])
        if args is not None:
            obj = {**obj, "arguments": args}
    return obj


def parse_output(cfg: SkillConfig, text: str) -> str | None:
    """Lenient parse (first line, case, punctuation, code fences; for JSON tasks the first
    JSON object anywhere in the text) into canonical text; None when nothing usable.
    Parsing does not judge the answer: see validate_output."""
    if is_json_task(cfg):
        obj = structured.first_json_object(text or "")
        if obj is None:
            return None
        if cfg.task == "function_call":
            obj = _unwrap_call(obj)
        return structured.canonical_json(obj)
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


def output_problem(cfg: SkillConfig, output: str, input: str | None = None) -> structured.Problem | None:
    """validate_output with a human detail: (reason, detail) or None."""
    if cfg.task == "classification":
        return None if output in cfg.labels else ("not_a_label", f"{output!r} is not one of {cfg.labels}")
    if not is_json_task(cfg):
        return None if output.strip() else ("empty_output", "the answer is empty")
    obj = _loads(output)
    if obj is None:
        return "invalid_json", "the answer is not valid JSON"
    if cfg.task == "function_call":
        input_obj = None
        if input is not None:
            input_obj = structured.loads_object(input)
            if structured.check_call_input(input_obj):
                return "invalid_input", "the input is not a valid function_call input"
        return structured.check_call(obj, input_obj)
    if cfg.task == "extraction" and not isinstance(obj, dict):
        return "invalid_json", "the answer is not a JSON object"
    bad = structured.value_problem(cfg.output_schema, obj)
    return ("schema_violation", bad[1]) if bad else None


def validate_output(cfg: SkillConfig, output: str, input: str | None = None) -> str | None:
    """None when `output` (canonical text, as parse_output returns) is a valid answer,
    else a snake_case reason: not_a_label, invalid_json, schema_violation, malformed_call,
    unknown_function, unknown_argument, missing_required_argument, wrong_argument_type,
    empty_output. Function calls are checked against the input's tools when given."""
    bad = output_problem(cfg, output, input)
    return bad[0] if bad else None


def input_problem(cfg: SkillConfig, input: str) -> structured.Problem | None:
    """validate_input with a human detail: (reason, detail) or None."""
    if cfg.task == "function_call":
        obj = structured.loads_object(input)
        if obj is None:
            return "invalid_json", 'the input is not a JSON object {"request": ..., "tools": [...]}'
        return structured.check_call_input(obj)
    return None if input.strip() else ("empty_input", "the input is empty")


def validate_input(cfg: SkillConfig, input: str) -> str | None:
    """None when `input` is a valid input for the skill, else a snake_case reason:
    empty_input, invalid_json, missing_request, missing_tools, invalid_tool, duplicate_tool."""
    bad = input_problem(cfg, input)
    return bad[0] if bad else None


def call_schema() -> dict:
    """JSON Schema of a function call answer (the tools decide the arguments)."""
    return {"type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}},
            "required": ["name", "arguments"], "additionalProperties": False}


def response_format(cfg: SkillConfig) -> dict | None:
    """An OpenAI `response_format` payload that constrains a teacher's answer, or None
    (plain-text generation). Classification: a JSON string among the labels (a quoted
    label, which parse_output accepts; servers such as llama.cpp and vLLM take a non-object
    root, OpenAI's strict mode does not). `strict` only where the schema fits OpenAI's
    strict subset (every key required, no extra keys); otherwise the server treats it as
    a hint and validate_output checks the answer."""
    if cfg.task == "classification":
        schema, strict = {"type": "string", "enum": list(cfg.labels)}, True
    elif cfg.task == "function_call":
        schema, strict = call_schema(), False  # arguments differ per request: no fixed schema
    elif cfg.output_schema is not None:
        schema, strict = cfg.output_schema, _strict_ok(cfg.output_schema)
    else:
        return None
    name = re.sub(r"[^A-Za-z0-9_-]", "_", cfg.name)[:64]
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": strict}}


def _strict_ok(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False or set(schema.get("required", [])) != set(props):
            return False
        return all(_strict_ok(s) for s in props.values())
    if isinstance(schema.get("items"), dict):
        return _strict_ok(schema["items"])
    return True


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
    head = _braces(header(cfg))
    if cfg.task == "function_call":
        prompt = head + f"Tools:\n{{tools}}\n{_braces(cfg.input_name)}: {{request}}\n{_braces(cfg.output_name)}:"
    else:
        prompt = head + f"{_braces(cfg.input_name)}: {{input}}\n{_braces(cfg.output_name)}:"
    spec = {
        "template_version": TEMPLATE_VERSION,
        "task": cfg.task,
        "instruction": cfg.instruction,
        "input_name": cfg.input_name,
        "output_name": cfg.output_name,
        "labels": list(cfg.labels),
        "output_schema": cfg.output_schema,
        "answer_format": "json" if is_json_task(cfg) else ("label" if cfg.task == "classification" else "text"),
        "prompt_template": prompt,
        "completion_prefix": " ",
        "stop": ["\n"],
    }
    if cfg.task == "function_call":
        spec["tool_template"] = "- {name}: {description} Parameters: {parameters}"
        spec["input_schema"] = {"request": "string", "tools": "list of OpenAI tool definitions"}
    return spec
