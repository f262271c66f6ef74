"""JSON helpers for structured skills (extraction, function calling).

Plain functions with no skill config: canonical JSON text, lenient extraction of
the first JSON object in model output, and the checks of OpenAI tool
definitions, function calls and BFCL-style acceptable-value answers. Every check
returns None when valid, else `(reason, detail)`: a snake_case reason that
metrics and filters count, and a detail that names the key for people.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from core.names import NameRule

Problem = tuple[str, str]  # (snake_case reason, human detail)

# OpenAI's rule for function names.
FUNCTION_NAME = NameRule(r"[A-Za-z0-9_.\-]{1,64}", "1-64 letters, digits, '_', '.', '-'")  # whole string
FUNCTION_NAME_RE = FUNCTION_NAME.regex
# "" in a list of acceptable values means "omitting the argument is also right" (BFCL).
OMITTED = ""


def canonical_json(obj: Any) -> str:
    """The one text form of structured data (contract): compact, key order kept, UTF-8."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def loads_object(text: str) -> dict | None:
    """`text` parsed as a JSON object, or None (not JSON, or not an object)."""
    try:
        obj = json.loads(text)
    except (TypeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


_DECODER = json.JSONDecoder()


def _top_level_braces(text: str):
    """Positions of the "{" that open a top-level object: a brace inside an object that is still
    open (or inside one of its strings) is nested, never a candidate of its own."""
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"' and depth:
            in_str = True
        elif ch == "{":
            if depth == 0:
                yield i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1


def first_json_object(text: str, max_starts: int = 32) -> dict | None:
    """The first top-level `{...}` in `text` that parses as a JSON object, ignoring code fences
    and any words around it; None when there is none. A broken outer object is not rescued by an
    object nested in it (`{"a": 1, "b": {"c": 2}, "d": 4` gives None, not {"c": 2}). Tries at
    most `max_starts` braces."""
    for tries, start in enumerate(_top_level_braces(text)):
        if tries >= max_starts:
            break
        try:
            obj, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    return None


# Decoded numbers have at most this many integer digits (and xgrammar writes at most 6 decimals under a
# range): 15 digits is the most a JSON double holds exactly, so no real answer is cut by it.
NUMBER_DIGITS = 15
_OWN_VALUES = ("enum", "const", "multipleOf")


def _number(schema: dict, *keys: str) -> float | None:
    """The first of `keys` the schema sets to a number (a bound of its own), else None."""
    for k in keys:
        v = schema.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
    return None


def _has_type(schema: dict, name: str) -> bool:
    t = schema.get("type")
    return t == name or (isinstance(t, list) and name in t)


def bound_values(schema: Any, max_chars: int | None = None, max_items: int | None = None) -> Any:
    """A copy of a JSON Schema, for decoding only, in which every answer ends: under a grammar a
    small model that never closes a string, stops a digit run or ends an array writes until the
    token cap and the answer is lost. Bounds only what the schema leaves free, at every depth
    (properties, items, anyOf/oneOf/allOf, $defs):

    - free strings (no enum, const, pattern or format) get at most `max_chars` (or their own
      maxLength, the smaller), written as a pattern that also excludes control characters;
    - integers and numbers (without enum, const or multipleOf) get -(10**NUMBER_DIGITS - 1) as
      minimum and/or 10**NUMBER_DIGITS - 1 as maximum where they have none of their own, which
      xgrammar compiles to at most that many digits (and 6 decimals);
    - arrays without maxItems get maxItems `max_items` when it is given.

    The tools' and skills' own schemas are never changed: validation keeps them. Raises nothing;
    a non-dict, non-list value is returned as is."""
    if isinstance(schema, list):
        return [bound_values(x, max_chars, max_items) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bound_values(v, max_chars, max_items) if k in ("items", "anyOf", "oneOf", "allOf",
                                                             "additionalProperties", "prefixItems") else v
           for k, v in schema.items()}
    for key in ("properties", "$defs", "definitions"):  # name -> schema maps
        if isinstance(schema.get(key), dict):
            out[key] = {k: bound_values(v, max_chars, max_items) for k, v in schema[key].items()}
    free_string = not any(k in schema for k in ("enum", "const", "pattern", "format"))
    limits = [n for n in (max_chars, schema.get("maxLength")) if n]
    longest = min(limits) if limits else None
    if longest and free_string and _has_type(schema, "string"):
        # As a pattern, not maxLength: xgrammar's maxLength rule admits raw control characters,
        # which JSON forbids in strings, so a bounded answer could fail to parse.
        out.pop("maxLength", None)
        out["pattern"] = f"^[^\\x00-\\x1f]{{{min(schema.get('minLength', 0), longest)},{longest}}}$"
    if (_has_type(schema, "integer") or _has_type(schema, "number")) and not any(k in schema for k in _OWN_VALUES):
        big = 10 ** NUMBER_DIGITS - 1
        low, high = _number(schema, "minimum", "exclusiveMinimum"), _number(schema, "maximum", "exclusiveMaximum")
        if low is None:  # each open side is closed on its own: `minimum: 0` alone still ends
            out["minimum"] = min(-big, high) if high is not None else -big
        if high is None:
            out["maximum"] = max(big, low) if low is not None else big
    if max_items and _has_type(schema, "array") and "maxItems" not in schema and "enum" not in schema \
            and "const" not in schema:
        out["maxItems"] = max(max_items, schema.get("minItems", 0))
    return out


def schema_problem(schema: dict) -> str | None:
    """Why `schema` is not a valid JSON Schema (Draft 2020-12), or None."""
    if not isinstance(schema, dict):
        return "must be a JSON Schema object (a mapping)"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        return f"not a valid JSON Schema at {where}: {e.message}"
    return None


def _path(err) -> str:
    return "/".join(str(p) for p in err.absolute_path) or "(root)"


def value_problem(schema: dict, value: Any) -> Problem | None:
    """The first way `value` violates `schema`: wrong_argument_type for a type mismatch,
    schema_violation for anything else (enum, range, pattern, required...)."""
    errors = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    err = next((e for e in errors if e.validator == "type"), errors[0])
    reason = "wrong_argument_type" if err.validator == "type" else "schema_violation"
    return reason, f"{_path(err)}: {err.message}"


def check_tool(tool: Any) -> Problem | None:
    """An OpenAI tool definition: {"type": "function", "function": {"name", "description",
    "parameters": JSON Schema of an object}}."""
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        return "invalid_tool", 'each tool must be {"type": "function", "function": {...}}'
    fn = tool["function"]
    name = fn.get("name")
    if not FUNCTION_NAME.ok(name):
        return "invalid_tool", f"function name {name!r} must be 1-64 letters, digits, '_', '.', '-'"
    unknown = set(fn) - {"name", "description", "parameters", "strict"}
    if unknown:
        return "invalid_tool", f"function {name}: unknown key(s) {sorted(unknown)}"
    if "description" in fn and not isinstance(fn["description"], str):
        return "invalid_tool", f"function {name}: description must be a string"
    params = fn.get("parameters", {"type": "object", "properties": {}})
    bad = schema_problem(params)
    if bad:
        return "invalid_tool", f"function {name}: parameters {bad}"
    if params.get("type") != "object":
        return "invalid_tool", f"function {name}: parameters must have \"type\": \"object\""
    props = params.get("properties", {})
    missing = [r for r in params.get("required", []) if r not in props]
    if missing:
        return "invalid_tool", f"function {name}: required {missing} not among its properties"
    return None


def check_call_input(obj: Any) -> Problem | None:
    """A function_call input: {"request": str, "tools": [tool, ...]} with unique names."""
    if not isinstance(obj, dict):
        return "invalid_json", 'input must be a JSON object {"request": ..., "tools": [...]}'
    unknown = set(obj) - {"request", "tools"}
    if unknown:
        return "invalid_input", f"unknown key(s) {sorted(unknown)} in input; allowed: request, tools"
    if not isinstance(obj.get("request"), str) or not obj["request"].strip():
        return "missing_request", "input.request must be a non-empty string"
    tools = obj.get("tools")
    if not isinstance(tools, list) or not tools:
        return "missing_tools", "input.tools must be a non-empty list of tool definitions"
    names: set[str] = set()
    for i, tool in enumerate(tools):
        bad = check_tool(tool)
        if bad:
            return bad[0], f"tools[{i}]: {bad[1]}"
        name = tool["function"]["name"]
        if name in names:
            return "duplicate_tool", f"tools[{i}]: function {name} is defined twice"
        names.add(name)
    return None


def tools_by_name(input_obj: dict) -> dict[str, dict]:
    """{function name: its parameters schema} for a valid function_call input."""
    out = {}
    for tool in input_obj.get("tools", []):
        fn = tool["function"]
        out[fn["name"]] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


def _call_shape(call: Any) -> Problem | None:
    if not isinstance(call, dict):
        return "invalid_json", 'a call must be a JSON object {"name": ..., "arguments": {...}}'
    if set(call) != {"name", "arguments"}:
        return "malformed_call", f'a call has exactly the keys "name" and "arguments", got {sorted(call)}'
    if not isinstance(call["name"], str) or not call["name"]:
        return "malformed_call", "name must be a non-empty string"
    if not isinstance(call["arguments"], dict):
        return "malformed_call", "arguments must be a JSON object"
    return None


def _called_tool(call: dict, input_obj: dict) -> tuple[dict, Problem | None]:
    """The JSON Schema parameters of the function `call` names, or unknown_function."""
    tools = tools_by_name(input_obj)
    if call["name"] not in tools:
        return {}, ("unknown_function", f"{call['name']!r} is not among the tools {sorted(tools)}")
    return tools[call["name"]], None


def check_call(call: Any, input_obj: dict | None) -> Problem | None:
    """A concrete call {"name", "arguments"}; with the input, checked against its tools:
    unknown_function, unknown_argument, missing_required_argument, wrong_argument_type,
    schema_violation (enum, range...)."""
    bad = _call_shape(call)
    if bad or input_obj is None:
        return bad
    params, bad = _called_tool(call, input_obj)
    if bad:
        return bad
    props = params.get("properties", {})
    for arg in call["arguments"]:
        if arg not in props:
            return "unknown_argument", f"{call['name']}: no parameter {arg!r} (parameters: {sorted(props)})"
    for req in params.get("required", []):
        if req not in call["arguments"]:
            return "missing_required_argument", f"{call['name']}: required argument {req!r} is missing"
    for arg, value in call["arguments"].items():
        bad = value_problem(props[arg], value)
        if bad:
            return bad[0], f"{call['name']}.{arg}: {bad[1]}"
    return None


def check_acceptable_call(gold: Any, input_obj: dict) -> Problem | None:
    """An eval answer in acceptable-values form: {"name", "arguments": {arg: [value, ...]}};
    "" in a list means the argument may be omitted (never for a required one)."""
    bad = _call_shape(gold)
    if bad:
        return bad
    params, bad = _called_tool(gold, input_obj)
    if bad:
        return bad
    props = params.get("properties", {})
    for arg, values in gold["arguments"].items():
        if arg not in props:
            return "unknown_argument", f"{gold['name']}: no parameter {arg!r} (parameters: {sorted(props)})"
        if not isinstance(values, list) or not values:
            return "not_acceptable_values", (f"{gold['name']}.{arg}: eval answers list every acceptable value, "
                                             f'e.g. ["celsius", ""]; got {values!r}')
        for v in values:
            if v == OMITTED:
                continue
            bad = value_problem(props[arg], v)
            if bad:
                return bad[0], f"{gold['name']}.{arg}: acceptable value {v!r}: {bad[1]}"
    for req in params.get("required", []):
        if req not in gold["arguments"]:
            return "missing_required_argument", f"{gold['name']}: required argument {req!r} is missing"
        if OMITTED in gold["arguments"][req]:
            return "required_argument_omittable", f"{gold['name']}.{req}: a required argument cannot list \"\""
    return None
