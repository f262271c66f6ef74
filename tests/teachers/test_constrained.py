"""Constrained decoding (decoding.constrained, xgrammar): a random tiny model, which writes garbage
when free, gives answers that always parse under the skill's grammar, for every task type with a
schema; confidences stay the model's own log-probabilities; one bad spec does not fail a batch."""

from __future__ import annotations

import json

import pytest

from core import structured
from core.config import SkillConfig
from core.tasks import get_task
from tests.core import skillkit

pytest.importorskip("xgrammar")


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from teachers.local import LocalModel

    return LocalModel(tiny_model_path)


def _cfg(task: str, constrained: bool = True, **extra) -> SkillConfig:
    return SkillConfig.model_validate(skillkit.config(task, decoding={"constrained": constrained}, **extra))


def _decode(model, cfg, inputs, max_new_tokens=48):
    from eval_gates.predict import predict

    return predict(model, cfg, inputs)


def _invalid_share(cfg, inputs, preds) -> float:
    task = get_task(cfg)
    return sum(p is None or task.output_problem(p, x) is not None for x, p in zip(inputs, preds)) / len(preds)


def test_classification_answers_are_always_a_label(tiny):
    cfg = _cfg("classification", labels=["billing", "bug", "account access", "feature request"])
    inputs = [f"ticket number {i}: the invoice is wrong again" for i in range(12)]
    free = _decode(tiny, _cfg("classification", False, labels=cfg.labels), inputs)
    assert _invalid_share(cfg, inputs, free.preds) > 0.5  # a random model writes no label when free
    p = _decode(tiny, cfg, inputs)
    assert all(x in cfg.labels for x in p.preds), p.raw
    assert all(r.startswith(" ") and r.strip() in cfg.labels for r in p.raw)  # the trained form: " label"
    assert all(f == "stop" for f in p.finish_reasons)  # the grammar ends the answer (EOS), not the length cap


def test_extraction_answers_are_valid_json_of_the_schema(tiny):
    # A finite language (enums, booleans, null): every answer ends within the cap, so none may be invalid.
    cfg = _cfg("extraction", output_schema={
        "type": "object", "properties": {"kind": {"enum": ["order", "support"]}, "urgent": {"type": "boolean"},
                                         "person": {"type": "null"}},  # not alphabetical: the order is kept
        "required": ["kind", "urgent", "person"], "additionalProperties": False}, gates={"max_new_tokens": 48})
    inputs = [f"Ana paid {i} EUR for order {i}." for i in range(8)]
    free = _decode(tiny, _cfg("extraction", False, output_schema=cfg.output_schema), inputs)
    assert _invalid_share(cfg, inputs, free.preds) == 1.0
    p = _decode(tiny, cfg, inputs)
    assert _invalid_share(cfg, inputs, p.preds) == 0.0, p.raw
    for r in p.raw:
        obj = json.loads(r)
        assert list(obj) == ["kind", "urgent", "person"] and obj["kind"] in ("order", "support")  # the schema's order
        assert r == " " + structured.canonical_json(obj)  # compact, one line, as trained
    # Open-ended values (a random model may write digits until the cap): what ends is valid, and what hits the
    # cap is reported as cut ('length'), never as a stop.
    cfg = _cfg("extraction", output_schema={
        "type": "object", "properties": {"person": {"type": ["string", "null"]}, "amount": {"type": ["number", "null"]}},
        "required": ["person", "amount"], "additionalProperties": False}, gates={"max_new_tokens": 48})
    p = _decode(tiny, cfg, inputs)
    for x, pred, fin in zip(inputs, p.preds, p.finish_reasons):
        assert fin == "length" or get_task(cfg).output_problem(pred, x) is None


def test_function_call_grammar_is_per_request_from_its_own_tools(tiny):
    cfg = _cfg("function_call", gates={"max_new_tokens": 64})

    def tool(name, params):  # finite parameter languages: a random model's answers end within the cap
        return {"type": "function", "function": {"name": name, "description": f"{name}.", "parameters": {
            "type": "object", "properties": params, "required": list(params)}}}

    weather = [tool("get_weather", {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}),
               tool("get_alerts", {"severe": {"type": "boolean"}})]
    table = [tool("book_table", {"window": {"type": "boolean"}, "size": {"enum": ["two", "four"]}})]
    inputs = [json.dumps({"request": f"request {i}", "tools": weather if i % 2 else table}) for i in range(8)]
    free = _decode(tiny, _cfg("function_call", False, gates={"max_new_tokens": 64}), inputs)
    assert _invalid_share(cfg, inputs, free.preds) == 1.0
    p = _decode(tiny, cfg, inputs)
    assert _invalid_share(cfg, inputs, p.preds) == 0.0, p.raw
    for x, pred in zip(inputs, p.preds):
        names = set(structured.tools_by_name(json.loads(x)))
        assert json.loads(pred)["name"] in names, (x, pred)  # only this request's functions
    with pytest.raises(ValueError, match="needs the inputs"):
        from eval_gates.predict import decode

        decode(tiny, cfg, ["a prompt"])


def test_free_argument_strings_are_bounded_so_calls_end_within_the_cap(tiny, monkeypatch):
    from core.tasks import function_call

    tools = [{"type": "function", "function": {"name": "find_city", "description": "Find a city.", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "exact": {"type": "boolean"}},
        "required": ["city", "exact"]}}}]
    inputs = [json.dumps({"request": f"find Oslo {i}", "tools": tools}) for i in range(6)]
    cfg = _cfg("function_call", gates={"max_new_tokens": 96})
    p = _decode(tiny, cfg, inputs)
    assert all(f == "stop" for f in p.finish_reasons), p.raw  # each string closed within the bound, the call ended
    for x, raw in zip(inputs, p.raw):
        call = json.loads(raw)  # strict: the bound excludes raw control characters too
        assert call["name"] == "find_city" and isinstance(call["arguments"]["exact"], bool)
        assert len(call["arguments"]["city"]) <= len(json.loads(x)["request"]) + function_call.STRING_SLACK_CHARS
    # Without the bound the random model never closes the string: every call is cut at the cap.
    monkeypatch.setattr(function_call.structured, "bound_values", lambda schema, *bounds: schema)
    unbounded = _decode(tiny, cfg, inputs)
    assert all(f == "length" for f in unbounded.finish_reasons) and _invalid_share(cfg, inputs, unbounded.preds) == 1.0


def test_multi_label_answers_end_with_at_most_every_label_once(tiny, monkeypatch):
    from core.tasks.multi_label import MultiLabel

    labels = ["billing", "bug", "account"]
    cfg = _cfg("multi_label", labels=labels, gates={"max_new_tokens": 40})
    inputs = [f"ticket {i}: charged twice and the app crashes" for i in range(8)]
    p = _decode(tiny, cfg, inputs)
    assert all(f == "stop" for f in p.finish_reasons), p.raw
    assert all(1 <= len(r.strip().split(", ")) <= len(labels) for r in p.raw), p.raw
    # The same labels under an unbounded repetition: the random model repeats ", label" until the cap.
    alternatives = "|".join(labels)
    monkeypatch.setattr(MultiLabel, "_answer_regex", lambda self: f"({alternatives})(, ({alternatives}))*")
    unbounded = _decode(tiny, cfg, inputs)
    assert any(f == "length" for f in unbounded.finish_reasons), unbounded.raw


def test_bound_values_touches_only_free_values():
    from core.structured import NUMBER_DIGITS, bound_values

    schema = {"type": "object", "properties": {
        "a": {"type": "string"}, "b": {"type": ["string", "null"]}, "c": {"type": "string", "enum": ["x", "y"]},
        "d": {"type": "string", "pattern": "^[0-9]+$"}, "e": {"type": "string", "maxLength": 5},
        "f": {"type": "array", "items": {"type": "string"}}, "g": {"type": "integer"},
        "h": {"type": "object", "properties": {"i": {"type": "string", "format": "date"}, "j": {"type": "string"}}},
        "n": {"type": ["number", "null"]}, "m": {"type": "integer", "minimum": 1},
        "o": {"type": "number", "exclusiveMinimum": 0, "maximum": 5}, "q": {"type": "integer", "enum": [1, 2]},
        "l": {"type": "array", "items": {"type": "integer"}, "maxItems": 2}, "k": {"type": "array", "minItems": 9},
        "type": {"$ref": "#/$defs/k"}}, "$defs": {"k": {"type": "string"}}}
    before = json.dumps(schema)
    out = bound_values(schema, 40, 4)
    assert json.dumps(schema) == before  # the tools' own schema is not changed
    p = out["properties"]
    def longest(x):  # the bound, written as a pattern without control characters
        return x.get("pattern") if "maxLength" not in x else None

    bounded = "^[^\\x00-\\x1f]{0,40}$"
    assert longest(p["a"]) == longest(p["b"]) == longest(p["f"]["items"]) == bounded
    assert longest(p["h"]["properties"]["j"]) == bounded
    assert p["c"] == schema["properties"]["c"] and p["d"] == schema["properties"]["d"]
    assert longest(p["e"]) == "^[^\\x00-\\x1f]{0,5}$"  # its own maxLength, smaller than 40
    assert "pattern" not in p["g"] and p["h"]["properties"]["i"] == {"type": "string", "format": "date"}
    assert longest(out["$defs"]["k"]) == bounded and p["type"] == {"$ref": "#/$defs/k"}
    big = 10 ** NUMBER_DIGITS - 1
    assert (p["g"]["minimum"], p["g"]["maximum"]) == (p["n"]["minimum"], p["n"]["maximum"]) == (-big, big)
    assert p["l"]["items"]["maximum"] == big and p["m"] == {"type": "integer", "minimum": 1, "maximum": big}
    assert p["o"] == schema["properties"]["o"]  # its own range kept; a one-sided one (m) is closed
    assert p["f"]["maxItems"] == 4 and p["l"]["maxItems"] == 2 and p["k"]["maxItems"] == 9  # never below minItems
    # What the engine then admits: a bounded string without raw control characters (JSON forbids
    # them; xgrammar's own maxLength rule lets them through), a number of at most 15 digits.
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string as admits

    def grammar(x):
        return xgr.Grammar.from_json_schema(json.dumps(x), any_whitespace=False)

    assert admits(grammar(p["e"]), '"Züri"') and not admits(grammar(p["e"]), '"Zürich"')
    assert not admits(grammar(p["e"]), '"a\tb"') and admits(grammar(schema["properties"]["e"]), '"a\tb"')
    assert admits(grammar(p["g"]), "-" + "9" * 15) and not admits(grammar(p["g"]), "1" * 16)
    assert admits(grammar(p["n"]), "3.25") and not admits(grammar(p["n"]), "3.1415926")
    assert admits(grammar(p["m"]), "12") and not admits(grammar(p["m"]), "1" * 16) and not admits(grammar(p["m"]), "0")
    assert p["q"] == schema["properties"]["q"]
    # Without string or item bounds only numbers are bounded.
    bare = bound_values(schema)["properties"]
    assert "pattern" not in bare["a"] and "maxItems" not in bare["f"] and bare["g"]["maximum"] == big


def test_numbers_and_lists_are_bounded_so_calls_end_within_the_cap(tiny, monkeypatch):
    from core.tasks import function_call

    tools = [{"type": "function", "function": {"name": "set_timer", "description": "Set timers.", "parameters": {
        "type": "object", "properties": {"minutes": {"type": "number"}, "labels": {"type": "array", "items": {
            "type": "integer"}}}, "required": ["minutes", "labels"]}}}]
    inputs = [json.dumps({"request": f"timer {i} for 5 minutes", "tools": tools}) for i in range(6)]
    # The longest bounded call: 5 lists items (one per request word) and a number, each of 15 digits.
    cfg = _cfg("function_call", gates={"max_new_tokens": 192})
    p = _decode(tiny, cfg, inputs)
    assert all(f == "stop" for f in p.finish_reasons), p.raw
    for x, raw in zip(inputs, p.raw):
        args = json.loads(raw)["arguments"]
        assert abs(args["minutes"]) < 10 ** structured.NUMBER_DIGITS
        assert len(args["labels"]) <= len(json.loads(x)["request"].split())
    monkeypatch.setattr(function_call.structured, "bound_values", lambda schema, *bounds: schema)
    unbounded = _decode(tiny, cfg, inputs)
    assert any(f == "length" for f in unbounded.finish_reasons), unbounded.raw


@pytest.mark.parametrize("skill", ["tool-calling", "json-extraction"])
def test_every_shipped_answer_fits_the_decoding_bounds(skill):
    """The bounds end runaway answers and never exclude a right one: every answer in the skill's
    seeds, eval set (each acceptable value) and traffic is valid under its bounded grammar schema."""
    from pathlib import Path

    from jsonschema import Draft202012Validator

    from core.records import iter_jsonl
    from core.skills import load_config
    from core.tasks.function_call import _acceptable

    root = Path(__file__).resolve().parents[2] / "seeds" / skill
    cfg = load_config(root)
    task = get_task(cfg)
    checked = 0
    for name in ("seeds.jsonl", "eval.jsonl", "traffic.jsonl"):
        for _, row, _ in iter_jsonl(root / name):
            x, y = row.get("input", row.get("request")), row.get("output", row.get("reference"))
            x = x if isinstance(x, str) else json.dumps(x)
            schema = task.answer_grammar(x)["json_schema"]
            if name == "eval.jsonl" and cfg.task == "function_call":  # lists of acceptable values
                branch = next(b for b in schema.get("anyOf", [schema]) if b["properties"]["name"]["const"] == y["name"])
                props = branch["properties"]["arguments"].get("properties", {})
                for arg, values in y["arguments"].items():
                    for v in _acceptable(values, props[arg]):
                        if v != "":
                            Draft202012Validator(props[arg]).validate(v)
                            checked += 1
            else:
                Draft202012Validator(schema).validate(y)
                checked += 1
    assert checked > 50
def test_max_string_chars_bounds_extraction_strings_and_the_consumer_decodes_the_same(tiny, tmp_path):
    from registry.consumer import skill_config

    schema = {"type": "object", "properties": {"person": {"type": "string"}, "urgent": {"type": "boolean"}},
              "required": ["person", "urgent"], "additionalProperties": False}
    inputs = [f"Ana paid {i} EUR for order {i}." for i in range(6)]
    cfg = SkillConfig.model_validate(skillkit.config("extraction", output_schema=schema, gates={"max_new_tokens": 64},
                                                     decoding={"constrained": True, "max_string_chars": 12}))
    p = _decode(tiny, cfg, inputs)
    assert all(f == "stop" for f in p.finish_reasons), p.raw
    assert all(len(json.loads(r)["person"]) <= 12 for r in p.raw)  # and every answer parses strictly
    unbounded = _decode(tiny, _cfg("extraction", output_schema=schema, gates={"max_new_tokens": 64}), inputs)
    assert any(f == "length" for f in unbounded.finish_reasons)  # without the bound some strings never close
    # The published skill.json carries the bound and the consumer rebuilds it.
    from registry.stage import skill_spec

    spec = skill_spec(cfg)
    assert spec["decoding"]["max_string_chars"] == 12
    assert skill_config(json.loads(json.dumps(spec))).decoding.max_string_chars == 12


def test_confidence_is_the_models_own_probability_under_the_grammar(tiny):
    from teachers.local import teacher_forced_logprobs

    cfg = _cfg("classification", labels=["billing", "bug", "account access"])
    inputs = [f"my card was charged twice, case {i}" for i in range(6)]
    from core.prompting import render_prompt

    prompts = [render_prompt(cfg, x, tiny.tokenizer) for x in inputs]
    p = _decode(tiny, cfg, inputs)
    forced = teacher_forced_logprobs(tiny.model, tiny.tokenizer, prompts, p.raw)
    for c, f in zip(p.confidences, forced):
        assert c is not None and c == pytest.approx(f, abs=1e-4)  # the unmasked model's, not renormalised


def test_a_spec_that_does_not_compile_decodes_its_row_free_and_is_counted(tiny):
    comp = tiny.grammar_compiler()
    from teachers.constrained import GrammarError

    with pytest.raises(GrammarError, match="regex"):
        comp.compile({"regex": "(unclosed"})
    with pytest.raises(GrammarError, match="exactly one of"):
        comp.compile({"prefix": " "})
    before = comp.failed
    out = tiny.complete(["Ticket: a\nTeam:", "Ticket: b\nTeam:"], max_new_tokens=6,
                        grammars=[{"prefix": " ", "choices": ["x", "y"]}, {"regex": "(unclosed"}])
    assert out[0].text in (" x", " y") and comp.failed == before + 1
    # An unsupported schema is tried once, not once per row: later rows fail fast with the same reason.
    bad = {"regex": "(still unclosed"}
    out = tiny.complete(["a", "b", "c"], max_new_tokens=2, grammars=[bad] * 3)
    assert comp.failed == before + 4 and len(out) == 3
    assert sum("still unclosed" in k for k in comp._failed) == 1
    with pytest.raises(ValueError, match="grammars: 1 specs for 2 prompts"):
        tiny.complete(["a", "b"], max_new_tokens=2, grammars=[None])


def test_skill_json_records_the_decoding_and_old_versions_decode_free():
    from registry.consumer import skill_config
    from registry.stage import skill_spec

    cfg = _cfg("classification", labels=["a", "b"])
    spec = skill_spec(cfg)
    assert spec["decoding"]["constrained"] is True and spec["decoding"]["engine"].startswith("xgrammar ")
    assert skill_config(spec).decoding.constrained is True
    old = {k: v for k, v in spec.items() if k != "decoding"}  # published before decoding existed
    assert skill_config(old).decoding.constrained is False
    assert skill_spec(_cfg("classification", False, labels=["a", "b"]))["decoding"] == {"constrained": False}


def test_a_local_teacher_labels_under_the_grammar(skill, tiny):
    """The transformers teacher decodes label requests under the skill's grammar: no answer is dropped
    as invalid, where the same random model answering free loses most of them."""
    from core.config import DecodingConfig
    from teachers.client import ClientSettings, Teacher
    from teachers.local import LocalBackend
    from teachers.strategies import label

    inputs = [e.__class__(**{**e.__dict__, "output": None}) for e in skill.eval_set[:8]]
    results = {}
    for constrained in (False, True):
        skill.config = skill.config.model_copy(update={"decoding": DecodingConfig(constrained=constrained)})
        teacher = Teacher(LocalBackend(tiny), ClientSettings(batch_size=8, invalid_retries=0), cache=None, name="tiny")
        results[constrained] = label(skill, teacher, inputs, seed=0)
    kept, rejected = results[True]
    assert len(kept) == 8 and not rejected and all(e.output in skill.config.labels for e in kept)
    assert len(results[False][1]) >= 4  # free, the random model's answers are mostly not labels


def test_a_label_of_12_tokens_decodes_whole_under_the_grammar_with_the_default_cap(tiny):
    """Issue 36: the fixed classification cap of 8 tokens cut longer labels, so 10.8% of a skill's answers
    were invalid under the grammar. The default cap now holds the longest label; every answer is valid."""
    from core.answer_cap import cap_problems, count_tokens
    from eval_gates.predict import answer_tokens

    tok = tiny.tokenizer
    candidates = ["refund_pending_at_bank", "refund_not_received", "invoice_not_received", "refund_not_received_by",
                  "payment_not_received_yet", "refund not received by customer"]
    long = next(c for c in candidates if count_tokens(" " + c, tok) == 12)  # the tiny tokenizer is trained per session
    # Every label is longer than 8 tokens: an answer cut at the old cap is never a label.
    labels = [long] + [c for c in candidates if c != long and 8 < count_tokens(" " + c, tok) < 12][:2]
    assert len(labels) == 3
    cfg = _cfg("classification", labels=labels)
    assert answer_tokens(cfg) >= 13  # 12 tokens and the stop, whatever the tokenizer
    inputs = [f"ticket number {i}: where is my refund" for i in range(12)]
    p = _decode(tiny, cfg, inputs)
    assert _invalid_share(cfg, inputs, p.preds) == 0.0, p.raw
    assert all(f == "stop" for f in p.finish_reasons)
    from eval_gates.predict import decode, render_prompt

    cut = decode(tiny, cfg, [render_prompt(cfg, x, tok) for x in inputs], max_new_tokens=8, inputs=inputs)
    assert _invalid_share(cfg, inputs, cut.preds) == 1.0  # what the old cap did
    # An explicit cap that would cut the longest label is refused, naming the key and the label.
    small = _cfg("classification", labels=labels, gates={"max_new_tokens": 8}, teacher={"answer_max_tokens": 12})
    problems = cap_problems(small, tok)
    assert len(problems) == 2 and problems[0].startswith(f"gates.max_new_tokens: 8 tokens would cut the answer {long!r}")
    assert problems[1].startswith("teacher.answer_max_tokens: 12 tokens") and "at least 13" in problems[1]
    assert cap_problems(_cfg("classification", labels=labels, gates={"max_new_tokens": 13}), tok) == []
