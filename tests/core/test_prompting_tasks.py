"""Prompting for the JSON task types: format, parse leniently, validate strictly."""

import json
from pathlib import Path

import pytest

from core.prompting import (format_completion, format_prompt, parse_output, response_format, template_spec,
                            validate_input, validate_output)
from core.skills import SkillConfig, load_skill
from core.structured import canonical_json
from tests.core.skillkit import EXTRACT_SCHEMA, SEND, WEATHER, call_input, config

REPO = Path(__file__).resolve().parents[2]
TRIAGE = load_skill("ticket-triage", root=REPO / "seeds").config
EXT = SkillConfig.model_validate(config("extraction"))
FC = SkillConfig.model_validate(config("function_call"))
GEN = SkillConfig.model_validate(config("generation"))
GEN_JSON = SkillConfig.model_validate(config("generation", output_schema={"type": "array", "items": {"type": "string"}}))
CALL_IN = canonical_json(call_input("Weather in Oslo, in celsius?"))


def test_function_call_prompt_lists_tools_compactly_then_the_request():
    p = format_prompt(FC, CALL_IN)
    params = canonical_json(WEATHER["function"]["parameters"])
    assert f"Tools:\n- get_weather: Current weather for a city. Parameters: {params}\n- send_email:" in p
    assert p.endswith("\nRequest: Weather in Oslo, in celsius?\nCall:")
    # the bundled template reproduces it exactly
    spec = template_spec(FC)
    tools = "\n".join(spec["tool_template"].format(name=t["function"]["name"], description=t["function"]["description"],
                                                   parameters=canonical_json(t["function"]["parameters"]))
                      for t in (WEATHER, SEND))
    assert spec["prompt_template"].format(tools=tools, request="Weather in Oslo, in celsius?") == p


def test_function_call_shots_carry_their_own_tools_and_compact_answers():
    shot_in = canonical_json(call_input("mail bob hi", SEND))
    shot_out = json.dumps({"name": "send_email", "arguments": {"to": "bob", "body": "hi"}}, indent=2)
    p = format_prompt(FC, CALL_IN, [(shot_in, shot_out)])
    assert 'Request: mail bob hi\nCall: {"name":"send_email","arguments":{"to":"bob","body":"hi"}}\n\nTools:' in p
    assert p.count("- send_email:") == 2 and p.count("- get_weather:") == 1


def test_function_call_prompt_refuses_a_bad_input():
    with pytest.raises(ValueError, match="missing_tools"):
        format_prompt(FC, canonical_json({"request": "hi", "tools": []}))
    with pytest.raises(ValueError, match="function_call input"):
        format_prompt(FC, "not json")


def test_extraction_prompt_names_the_keys_and_the_template_matches():
    p = format_prompt(EXT, "Ana paid  40\nEUR")
    assert "JSON keys: person: string|null; amount: number|null; date: string|null (YYYY-MM-DD)" in p
    assert p.endswith("Message: Ana paid 40 EUR\nJSON:")
    assert template_spec(EXT)["prompt_template"].format(input="Ana paid 40 EUR") == p
    assert template_spec(EXT)["output_schema"] == EXTRACT_SCHEMA


def test_braces_in_an_instruction_survive_the_template():
    cfg = SkillConfig.model_validate(config("extraction", instruction='Answer like {"person": ...}.'))
    assert template_spec(cfg)["prompt_template"].format(input="x") == format_prompt(cfg, "x")


def test_completions_are_one_compact_line():
    pretty = json.dumps({"person": "Zoë", "amount": 4.5, "date": None}, indent=2, ensure_ascii=False)
    assert format_completion(EXT, pretty) == ' {"person":"Zoë","amount":4.5,"date":null}'
    assert format_completion(GEN, "line one\n line two") == " line one line two"
    assert format_completion(TRIAGE, "billing") == " billing"


@pytest.mark.parametrize("text", [
    '{"person": "Ana", "amount": 40, "date": null}',
    '```json\n{"person": "Ana",\n "amount": 40, "date": null}\n```',
    'Sure, here it is: {"person": "Ana", "amount": 40, "date": null} hope that helps {"x": 1}',
    ' {oops} {"person":"Ana","amount":40,"date":null}\nMessage: next one',
])
def test_extraction_parse_is_lenient(text):
    assert parse_output(EXT, text) == '{"person":"Ana","amount":40,"date":null}'


@pytest.mark.parametrize("text", ["", "no json here", '{"person": "Ana", ', "[1, 2]"])
def test_extraction_parse_returns_none_without_an_object(text):
    assert parse_output(EXT, text) is None


def test_function_call_parse_unwraps_openai_shapes():
    want = '{"name":"get_weather","arguments":{"city":"Oslo"}}'
    assert parse_output(FC, ' {"name": "get_weather", "arguments": {"city": "Oslo"}}\nRequest: x') == want
    assert parse_output(FC, '{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}') == want
    assert parse_output(FC, '{"tool_calls": [{"type": "function", "function": '
                            '{"name": "get_weather", "arguments": "{\\"city\\":\\"Oslo\\"}"}}]}') == want


def test_generation_parse_takes_the_first_line():
    assert parse_output(GEN, "  Hello there.\nInput: more") == "Hello there."
    assert parse_output(GEN, "   ") is None
    assert parse_output(GEN_JSON, 'x ["a"]') is None  # arrays are not objects: not found
    assert validate_output(GEN_JSON, '["a", 1]') == "schema_violation"
    assert validate_output(GEN_JSON, '["a"]') is None


@pytest.mark.parametrize("output,reason", [
    ('{"person":"Ana","amount":40,"date":null}', None),
    ('{"person":"Ana","amount":40}', "schema_violation"),
    ('{"person":"Ana","amount":-1,"date":null}', "schema_violation"),
    ('{"person":"Ana","amount":40,"date":null,"extra":1}', "schema_violation"),
    ('{"person":"Ana","amount":"40","date":null}', "schema_violation"),
    ('[1]', "invalid_json"),
    ('{"person":', "invalid_json"),
])
def test_extraction_validation(output, reason):
    assert validate_output(EXT, output) == reason


@pytest.mark.parametrize("call,reason", [
    ({"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius", "days": 3, "tags": ["a"]}}, None),
    ({"name": "get_forecast", "arguments": {"city": "Oslo"}}, "unknown_function"),
    ({"name": "get_weather", "arguments": {"city": "Oslo", "country": "NO"}}, "unknown_argument"),
    ({"name": "get_weather", "arguments": {"unit": "celsius"}}, "missing_required_argument"),
    ({"name": "get_weather", "arguments": {"city": "Oslo", "days": "3"}}, "wrong_argument_type"),
    ({"name": "get_weather", "arguments": {"city": "Oslo", "days": 2.5}}, "wrong_argument_type"),
    ({"name": "get_weather", "arguments": {"city": "Oslo", "unit": "kelvin"}}, "schema_violation"),
    ({"name": "get_weather", "arguments": {"city": "Oslo", "days": 0}}, "schema_violation"),
    ({"name": "get_weather", "args": {"city": "Oslo"}}, "malformed_call"),
    ({"name": "get_weather", "arguments": ["Oslo"]}, "malformed_call"),
])
def test_function_call_validation_against_the_input_tools(call, reason):
    assert validate_output(FC, canonical_json(call), CALL_IN) == reason


def test_function_call_validation_without_input_checks_the_shape_only():
    assert validate_output(FC, '{"name":"anything","arguments":{}}') is None
    assert validate_output(FC, "get_weather(city='Oslo')") == "invalid_json"
    assert validate_output(FC, '{"name":"x","arguments":{}}', "not json") == "invalid_input"


def test_classification_validation():
    assert validate_output(TRIAGE, "billing") is None
    assert validate_output(TRIAGE, "sales") == "not_a_label"


@pytest.mark.parametrize("inp,reason", [
    (CALL_IN, None),
    ("plain text", "invalid_json"),
    (canonical_json({"request": "", "tools": [WEATHER]}), "missing_request"),
    (canonical_json({"request": "hi"}), "missing_tools"),
    (canonical_json({"request": "hi", "tools": [WEATHER, WEATHER]}), "duplicate_tool"),
    (canonical_json({"request": "hi", "tools": [{"name": "f"}]}), "invalid_tool"),
    (canonical_json({"request": "hi", "tools": [{"type": "function", "function": {"name": "bad name"}}]}),
     "invalid_tool"),
    (canonical_json({"request": "hi", "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "strin"}}}}}]}), "invalid_tool"),
    (canonical_json({"request": "hi", "tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {}, "required": ["x"]}}}]}), "invalid_tool"),
])
def test_function_call_input_validation(inp, reason):
    assert validate_input(FC, inp) == reason


def test_text_input_validation():
    assert validate_input(EXT, "some text") is None
    assert validate_input(EXT, "  \n") == "empty_input"


def test_response_formats():
    rf = response_format(TRIAGE)
    assert rf["type"] == "json_schema" and rf["json_schema"]["name"] == "ticket-triage"
    assert rf["json_schema"]["schema"] == {"type": "string", "enum": TRIAGE.labels}
    ext = response_format(EXT)["json_schema"]
    assert ext["schema"] == EXTRACT_SCHEMA and ext["strict"] is True
    loose = SkillConfig.model_validate(config("extraction", output_schema={
        "type": "object", "properties": {"a": {"type": "string"}}}))
    assert response_format(loose)["json_schema"]["strict"] is False  # not in OpenAI's strict subset
    fc = response_format(FC)["json_schema"]["schema"]
    assert fc["required"] == ["name", "arguments"] and fc["properties"]["arguments"]["type"] == "object"
    assert response_format(GEN) is None
    assert response_format(GEN_JSON)["json_schema"]["schema"]["type"] == "array"


def test_template_spec_describes_every_task():
    for cfg in (TRIAGE, EXT, FC, GEN):
        spec = template_spec(cfg)
        assert spec["task"] == cfg.task and spec["stop"] == ["\n"] and spec["completion_prefix"] == " "
        assert json.loads(json.dumps(spec)) == spec  # goes into skill.json as is
    assert template_spec(FC)["answer_format"] == "json" and template_spec(GEN)["answer_format"] == "text"
    assert template_spec(TRIAGE)["labels"] == TRIAGE.labels and template_spec(TRIAGE)["output_schema"] is None


def test_bundled_structured_skills_round_trip():
    """Every seed of the shipped JSON skills: its completion parses back to itself and validates."""
    for name in ("json-extraction", "tool-calling"):
        if not (REPO / "seeds" / name / "skill.yaml").is_file():
            pytest.skip(f"seeds/{name} not written yet")
        s = load_skill(name, root=REPO / "seeds")
        for e in s.seeds:
            prompt = format_prompt(s.config, e.input)
            assert "\n" not in format_completion(s.config, e.output)
            assert len(prompt) < 2400, (e.id, len(prompt))  # ~350 Gemma tokens: fits max_length 512
            parsed = parse_output(s.config, format_completion(s.config, e.output) + "\n" + s.config.input_name + ":")
            assert parsed == e.output
            assert validate_output(s.config, parsed, e.input) is None
