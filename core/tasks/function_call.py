"""function_call: the input is {"request", "tools"} (OpenAI tools format); the answer is one call
{"name", "arguments"} to one of the input's tools.

Eval answers list every acceptable value per argument ("" = may be omitted), as BFCL does; the
metric is BFCL's AST check (Patil et al. 2024, "The Berkeley Function Calling Leaderboard").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from core import structured
from core.records import Example
from core.tasks.base import NEW_TOOLS, TaskType, json_completion, labels_problems, loads, no_output_schema, one_line, \
    register
from core.tasks.extraction import norm_scalar



def format_tool(tool: dict) -> str:
    """One tool on one line: name, description, parameters as compact JSON."""
    fn = tool["function"]
    desc = one_line(fn.get("description") or "")
    params = structured.canonical_json(fn.get("parameters") or {"type": "object", "properties": {}})
    return f"- {fn['name']}: {desc + ' ' if desc else ''}Parameters: {params}"


def call_schema() -> dict:
    """JSON Schema of a function call answer (the tools decide the arguments)."""
    return {"type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}},
            "required": ["name", "arguments"], "additionalProperties": False}


def request_call_schema(input_obj: dict) -> dict:
    """JSON Schema of a call to one of a valid function_call input's tools: one anyOf branch per
    function, {"name": {"const": name}, "arguments": its parameters schema}, names in tool order."""
    branches = [{"type": "object",
                 "properties": {"name": {"const": name}, "arguments": params or {"type": "object", "properties": {}}},
                 "required": ["name", "arguments"], "additionalProperties": False}
                for name, params in structured.tools_by_name(input_obj).items()]
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


# A decoded argument string is at most this many characters longer than the request it answers.
STRING_SLACK_CHARS = 32


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


def _request_of(input: str) -> str:
    obj = structured.loads_object(input)
    return obj["request"] if obj and isinstance(obj.get("request"), str) else input


# --- the AST check ---------------------------------------------------------------------------------------------------


def _norm_str(s: str) -> str:
    return " ".join(s.split()).casefold()


def _coerce(value: Any, schema: dict) -> Any:
    """A value normalised to its JSON Schema type; raise ValueError when it cannot be that type."""
    t = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(t, list):  # e.g. ["string", "null"]: the first type that fits
        if value is None and "null" in t:
            return None
        for one in t:
            if one == "null":
                continue
            try:
                return _coerce(value, {**schema, "type": one})
            except ValueError:
                continue
        raise ValueError(f"{value!r} is none of {t}")
    if t == "integer":
        if isinstance(value, bool):
            raise ValueError("bool is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.0*)?\s*", value):
            return int(float(value))
        raise ValueError(f"{value!r} is not an integer")
    if t == "number":
        if isinstance(value, bool):
            raise ValueError("bool is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{value!r} is not a number")
    if t == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"{value!r} is not a boolean")
    if t == "string":
        if isinstance(value, str):
            return _norm_str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _norm_str(str(value))
        raise ValueError(f"{value!r} is not a string")
    if t == "array":
        if not isinstance(value, list):
            raise ValueError(f"{value!r} is not an array")
        return tuple(_coerce(v, schema.get("items") or {}) for v in value)
    if t == "object":
        if not isinstance(value, dict):
            raise ValueError(f"{value!r} is not an object")
        props = schema.get("properties") or {}
        return tuple(sorted((k, _coerce(v, props.get(k) or {})) for k, v in value.items()))
    return norm_scalar(value)  # no type given: light normalisation


def _acceptable(gold_value: Any, schema: dict) -> list:
    """Gold in acceptable-values form (list; "" = may be omitted; arrays: list of lists), or a concrete value
    (traffic references) turned into that form."""
    is_array = isinstance(schema, dict) and (schema.get("type") == "array" or
                                             (isinstance(schema.get("type"), list) and "array" in schema["type"]))
    if is_array:
        if isinstance(gold_value, list) and gold_value and all(isinstance(v, list) or v == "" for v in gold_value):
            return gold_value
        return [gold_value]
    return gold_value if isinstance(gold_value, list) else [gold_value]


def _is_default(value: Any, schema: dict) -> bool:
    """Whether `value` is the parameter's schema `default`: passing it and omitting the argument
    make the same call."""
    if not isinstance(schema, dict) or "default" not in schema or value == structured.OMITTED:
        return False
    try:
        return _coerce(value, schema) == _coerce(schema["default"], schema)
    except ValueError:
        return False


def _tools(example: Example) -> dict[str, dict]:
    obj = loads(example.input)
    tools = obj.get("tools", []) if isinstance(obj, dict) else []
    out = {}
    for t in tools if isinstance(tools, list) else []:
        fn = t.get("function", t) if isinstance(t, dict) else {}
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn.get("parameters") or {}
    return out


def ast_check(example: Example, prediction: str | None) -> tuple[bool, str | None]:
    """BFCL-style AST check of one call: (correct, reason when not). Gold is BFCL's acceptable-value
    form (eval sets) or a concrete call (traffic references). An omitted argument takes its schema
    `default`, so omitting it where gold gives the default, or passing the default where gold omits
    it, is the same call and right."""
    pred = loads(prediction)
    if not isinstance(pred, dict) or not isinstance(pred.get("name"), str):
        return False, "invalid_call"
    args = pred.get("arguments", {})
    if not isinstance(args, dict):
        return False, "arguments_not_an_object"
    gold = loads(example.output) or {}
    if pred["name"] != gold.get("name"):
        return False, "wrong_function_name"
    params = _tools(example).get(gold["name"], {})
    props = params.get("properties") or {}
    gold_args = gold.get("arguments") or {}
    for name in params.get("required") or []:
        if name not in args:
            return False, f"missing_required_argument:{name}"
    for name in args:
        if name not in props and name not in gold_args:
            return False, f"unknown_argument:{name}"
    for name, gold_value in gold_args.items():
        schema = props.get(name) or {}
        accept = _acceptable(gold_value, schema)
        if name not in args:  # right when the answer may omit it, or its value is the default
            if "" not in accept and not any(_is_default(a, schema) for a in accept):
                return False, f"missing_argument:{name}"
            continue
        try:
            got = _coerce(args[name], schema)
        except ValueError:
            return False, f"wrong_argument_type:{name}"
        ok = False
        for a in accept:
            if a == "":
                continue
            try:
                ok = _coerce(a, schema) == got
            except ValueError:
                ok = False
            if ok:
                break
        if not ok:
            return False, f"wrong_argument_value:{name}"
    for name in args:
        if name not in gold_args and name in props and not _is_default(args[name], props[name]):
            return False, f"unexpected_argument:{name}"  # BFCL: an argument the answer does not allow
    return True, None


@register
class FunctionCall(TaskType):
    name, primary = "function_call", "ast_accuracy"
    json_input = True
    api_tools = True
    answer_format = "json"
    scaffold = {
        "instruction": 'Call one of the functions to answer the request. Reply with one JSON object: '
                       '{"name": ..., "arguments": {...}}.',
        "input_name": "Request", "output_name": "Call",
        "floor": {"ast_accuracy": 0.3},
        "max_length": 512,  # tool definitions make prompts a few hundred tokens long
        "example": {"id": "seed-001", "input": {"request": "Weather in Oslo in celsius?", "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]},
            "output": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}},
        "eval_example": {"name": "get_weather", "arguments": {"city": ["Oslo", "Oslo, Norway"], "unit": ["celsius"]}},
    }

    @classmethod
    def config_problems(cls, cfg):
        return labels_problems(cfg, required=False) + no_output_schema(cfg)

    @property
    def json_output(self):
        return True

    # --- prompts -------------------------------------------------------------------------------------------------

    def _call_input(self, input: str) -> dict:
        obj = structured.loads_object(input)
        bad = structured.check_call_input(obj)
        if bad:
            raise ValueError(f"function_call input: {bad[1]} ({bad[0]}); input was {input[:120]!r}")
        return obj

    def format_input(self, input):
        obj = self._call_input(input)
        tools = "\n".join(format_tool(t) for t in obj["tools"])
        return f"Tools:\n{tools}\n{self.cfg.input_name}: {one_line(obj['request'])}"

    def format_completion(self, output):
        return json_completion(output)

    def template_prompt(self, head, braces):
        cfg = self.cfg
        prompt = head + f"Tools:\n{{tools}}\n{braces(cfg.input_name)}: {{request}}\n{braces(cfg.output_name)}:"
        return prompt, {"tool_template": "- {name}: {description} Parameters: {parameters}",
                        "input_schema": {"request": "string", "tools": "list of OpenAI tool definitions"}}

    def api_input(self, text, tools=None):
        """{"request": text, "tools": tools} as canonical JSON; the tools come from the request's
        OpenAI `tools` field. Raises ValueError naming `tools` when they are missing or malformed."""
        if not tools:
            raise ValueError("tools: this skill answers with a function call; pass the functions in the request's 'tools' field")
        obj = {"request": text, "tools": tools}
        bad = structured.check_call_input(obj)
        if bad:
            raise ValueError(f"tools: {bad[1]} ({bad[0]})")
        return structured.canonical_json(obj)

    def api_message(self, answer):
        """An OpenAI `tool_calls` message: the call's name and its arguments as a JSON string."""
        import hashlib

        obj = loads(answer) or {}
        args = json.dumps(obj.get("arguments") or {}, ensure_ascii=False, separators=(",", ":"))
        call_id = "call_" + hashlib.sha256(answer.encode()).hexdigest()[:16]
        return {"role": "assistant", "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": obj.get("name"), "arguments": args}}]}

    # --- answers -------------------------------------------------------------------------------------------------

    def parse_output(self, text):
        obj = structured.first_json_object(text or "")
        return None if obj is None else structured.canonical_json(_unwrap_call(obj))

    def output_problem(self, output, input=None):
        obj = loads(output)
        if obj is None:
            return "invalid_json", "the answer is not valid JSON"
        input_obj = None
        if input is not None:
            input_obj = structured.loads_object(input)
            if structured.check_call_input(input_obj):
                return "invalid_input", "the input is not a valid function_call input"
        return structured.check_call(obj, input_obj)

    def input_problem(self, input):
        obj = structured.loads_object(input)
        if obj is None:
            return "invalid_json", 'the input is not a JSON object {"request": ..., "tools": [...]}'
        return structured.check_call_input(obj)

    def example_problem(self, input, output, kind):
        if kind != "eval":
            return super().example_problem(input, output, kind)
        bad = self.input_problem(input)
        if bad:
            return f"input: {bad[0]}: {bad[1]}"
        obj = structured.loads_object(output)
        bad = ("invalid_json", "not a JSON object") if obj is None else \
            structured.check_acceptable_call(obj, structured.loads_object(input))
        return f"output: {bad[0]}: {bad[1]}" if bad else None

    def answer_schema(self, input=None):
        return call_schema(), False  # arguments differ per request: no fixed schema

    grammar_needs_input = True

    expansion_examples = 32  # each new input is up to 320 tokens of JSON (tool-calling ships 32)

    def cap_answers(self, inputs=()):
        # Arguments are free; a cap must at least hold a call of the longest function name the inputs offer.
        from types import SimpleNamespace

        names = {n for x in inputs for n in _tools(SimpleNamespace(input=x)) if n}  # _tools reads .input only
        longest = max(names, key=len, default=None)
        return [json_completion(json.dumps({"name": longest, "arguments": {}}))] if longest else []

    def answer_grammar(self, input=None):
        """Per request: {"name": one of the request's functions, "arguments": that function's
        parameters} (an anyOf with one branch per tool), bounded so every call ends
        (`structured.bound_values`): free strings no longer than the request plus STRING_SLACK_CHARS
        nor decoding.max_string_chars, arrays of at most as many items as the request has words,
        numbers within 15 digits. Without an input, any call."""
        if input is None:
            return {"prefix": " ", "json_schema": call_schema()}
        obj = self._call_input(input)
        request = obj.get("request") if isinstance(obj.get("request"), str) else ""
        bound = len(request) + STRING_SLACK_CHARS
        if self.cfg.decoding.max_string_chars:
            bound = min(bound, self.cfg.decoding.max_string_chars)
        items = max(1, len(request.split()))  # each item of an answer's list is named in the request
        return {"prefix": " ", "json_schema": structured.bound_values(request_call_schema(obj), bound, items)}

    # --- matching and the teacher --------------------------------------------------------------------------------

    def match_text(self, input):
        return _request_of(input)  # tool definitions repeat across items and would make everything alike

    def group_key(self, example):
        obj = structured.loads_object(example.input) or {}
        return json.dumps(obj.get("tools", []), ensure_ascii=False, separators=(",", ":"))

    def shown_input(self, input):
        return str(_request_of(input))

    def build_input(self, text, group_key):
        if group_key == NEW_TOOLS:
            try:  # the teacher wrote the whole input: keep it canonical when it parses; validation says why not
                return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))
            except ValueError:
                return text
        return json.dumps({"request": text, "tools": json.loads(group_key)}, ensure_ascii=False,
                          separators=(",", ":"))

    def new_tools_share(self):
        return self.cfg.expansion.new_function_share

    def new_tools_prompt(self, shots):
        """Seeds shown whole (tools and request); the teacher writes one more line with functions
        of its own, from another domain, and a request that needs one of them."""
        lines = ["Each line is a JSON object: a user request and the functions (OpenAI tools format, JSON Schema "
                 "parameters) an assistant may call. Write one more line for a different domain, with new functions "
                 "and a new request that one of them answers.", ""]
        lines += [" ".join(s.input.split()) for s in shots]
        return "\n".join(lines) + "\n"

    # --- metric --------------------------------------------------------------------------------------------------

    def score(self, example, prediction):
        pred = loads(prediction)
        gold = loads(example.output) or {}
        ok, _ = ast_check(example, prediction)
        valid = isinstance(pred, dict) and self.invalid_reason(example, prediction) is None
        return {"ast_accuracy": float(ok),
                "name_accuracy": float(isinstance(pred, dict) and pred.get("name") == gold.get("name")),
                "valid": float(valid)}

    def error(self, example, prediction):
        ok, reason = ast_check(example, prediction)
        return None if ok else reason

    def slice_of(self, example):
        return (loads(example.output) or {}).get("name") or super().slice_of(example)

    def aggregate(self, per_item, examples, predictions):
        out = super().aggregate(per_item, examples, predictions)
        out["invalid_rate"] = round(1 - out.get("valid", 0.0), 4)
        # Failure reasons without the argument name: which kind of mistake dominates.
        out["failure_kinds"] = dict(Counter(k.split(":")[0] for k, n in out["errors"].items() for _ in range(n)))
        return out
