"""Task-type plug-ins on fixed predictions."""

import json

import pytest

from core.records import Example
from core.skills import SkillConfig
from core.tasks import get_task, score_items
from core.tasks.function_call import ast_check
from core.tasks.generation import _chrf, chrf, corpus_chrf


def cj(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def ex(i, inp, out, **meta):
    return Example(id=f"e{i}", skill="s", input=inp, output=out, source="human", meta=meta)


CLS = SkillConfig.model_validate({"name": "s", "task": "classification", "instruction": "x", "labels": ["a", "b", "c"]})
EXT = SkillConfig.model_validate({
    "name": "s", "task": "extraction", "instruction": "x",
    "output_schema": {"type": "object", "properties": {"person": {"type": ["string", "null"]},
                                                       "amount": {"type": ["number", "null"]},
                                                       "date": {"type": ["string", "null"]}},
                      "required": ["person", "amount", "date"], "additionalProperties": False}})
FC = SkillConfig.model_validate({"name": "s", "task": "function_call", "instruction": "x"})
GEN = SkillConfig.model_validate({"name": "s", "task": "generation", "instruction": "x"})


def test_classification_metrics_and_confusion():
    items = [ex(1, "x", "a"), ex(2, "x", "a"), ex(3, "x", "b"), ex(4, "x", "b"), ex(5, "x", "c")]
    preds = ["a", "b", "b", None, "c"]
    task = get_task(CLS)
    per_item, agg = score_items(task, items, preds)
    assert [s["accuracy"] for s in per_item] == [1, 0, 1, 0, 1]
    assert agg["accuracy"] == 0.6 and agg["invalid_rate"] == 0.2 and agg["primary"] == "accuracy"
    assert agg["per_label_recall"] == {"a": 0.5, "b": 0.5, "c": 1.0} == agg["slices"]
    assert agg["confusion"]["b"] == {"b": 1, "<invalid>": 1}
    # a: P=1 R=.5 -> 2/3; b: P=.5 R=.5 -> .5; c: 1
    assert agg["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 1) / 3, abs=1e-4)
    assert agg["errors"] == {"a -> b": 1, "invalid_output": 1}


def test_extraction_field_scores_with_light_normalisation():
    gold = cj({"person": "Ana  Silva", "amount": 12.5, "date": None})
    task = get_task(EXT)
    # Case/whitespace of strings and "12.50" vs 12.5 are the same value; null == absent.
    s = task.score(ex(1, "t", gold), cj({"person": "ana silva", "amount": "12.50", "date": None}))
    assert s["field_f1"] == 1.0 and s["exact_match"] == 1.0 and s["valid_json"] == 1.0
    s = task.score(ex(1, "t", gold), cj({"person": "Bob", "amount": 12.5, "date": "2026-01-01"}))
    assert (s["tp"], s["fp"], s["fn"]) == (1, 2, 1)
    assert s["field_precision"] == pytest.approx(1 / 3) and s["field_recall"] == pytest.approx(1 / 2)
    assert s["field_f1"] == pytest.approx(0.4)
    bad = task.score(ex(1, "t", gold), None)
    assert bad["field_f1"] == 0.0 and bad["valid_json"] == 0.0
    items = [ex(1, "t", gold), ex(2, "t", gold)]
    _, agg = score_items(task, items, [cj({"person": "Ana Silva", "amount": 12.5, "date": None}), "{not json"])
    assert agg["valid_json_rate"] == 0.5 and agg["field_f1"] == 0.5 and agg["primary"] == "field_f1"
    assert agg["field_precision_micro"] == 1.0 and agg["field_recall_micro"] == 0.5
    assert agg["per_field_recall"] == {"amount": 0.5, "person": 0.5}
    assert agg["errors"] == {"invalid_json": 1}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                     "unit": {"type": "string", "enum": ["c", "f"]},
                                     "hourly": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
FC_INPUT = cj({"request": "Weather in Paris for 3 days?", "tools": TOOLS})
FC_GOLD = cj({"name": "get_weather", "arguments": {"city": ["Paris", "Paris, France"], "days": [3], "unit": ["c", ""],
                                                   "hourly": [False, ""], "tags": [["a", "b"], ""]}})


@pytest.mark.parametrize("pred,ok,reason", [
    ({"name": "get_weather", "arguments": {"city": "paris ", "days": 3}}, True, None),
    ({"name": "get_weather", "arguments": {"city": "Paris,  France", "days": "3", "unit": "C", "hourly": "false"}}, True, None),
    ({"name": "get_weather", "arguments": {"city": "Paris", "days": 3.0, "tags": ["A", "b"]}}, True, None),
    ({"name": "get_time", "arguments": {}}, False, "wrong_function_name"),
    ({"name": "get_weather", "arguments": {"days": 3}}, False, "missing_required_argument:city"),
    ({"name": "get_weather", "arguments": {"city": "Paris"}}, False, "missing_argument:days"),
    ({"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "lang": "fr"}}, False, "unknown_argument:lang"),
    ({"name": "get_weather", "arguments": {"city": "Lyon", "days": 3}}, False, "wrong_argument_value:city"),
    ({"name": "get_weather", "arguments": {"city": "Paris", "days": 3.5}}, False, "wrong_argument_type:days"),
    ({"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "tags": ["b", "a"]}}, False, "wrong_argument_value:tags"),
])
def test_function_call_ast_check(pred, ok, reason):
    e = ex(1, FC_INPUT, FC_GOLD)
    assert ast_check(e, cj(pred)) == (ok, reason)
    assert get_task(FC).score(e, cj(pred))["ast_accuracy"] == float(ok)


def test_function_call_concrete_reference_and_aggregate():
    # Replay references are concrete calls, not acceptable-value lists.
    ref = ex(1, FC_INPUT, cj({"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "tags": ["a"]}}))
    assert ast_check(ref, cj({"name": "get_weather", "arguments": {"city": "PARIS", "days": 3, "tags": ["a"]}}))[0]
    assert not ast_check(ref, cj({"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "tags": ["b"]}}))[0]
    # An omitted argument takes its schema default: omitting it where the reference gives the default,
    # or passing the default where the reference omits it, is the same call; any other value is not.
    tools = json.loads(FC_INPUT)["tools"]
    tools[0]["function"]["parameters"]["properties"]["unit"]["default"] = "c"
    dflt = cj({"request": "Weather in Paris?", "tools": tools})
    ref_c = ex(2, dflt, cj({"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}))
    assert ast_check(ref_c, cj({"name": "get_weather", "arguments": {"city": "Paris"}})) == (True, None)
    ref_f = ex(3, dflt, cj({"name": "get_weather", "arguments": {"city": "Paris", "unit": "f"}}))
    assert ast_check(ref_f, cj({"name": "get_weather", "arguments": {"city": "Paris"}})) == (False, "missing_argument:unit")
    ref_none = ex(4, dflt, cj({"name": "get_weather", "arguments": {"city": "Paris"}}))
    assert ast_check(ref_none, cj({"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}})) == (True, None)
    assert ast_check(ref_none, cj({"name": "get_weather", "arguments": {"city": "Paris", "unit": "f"}})) == (
        False, "unexpected_argument:unit")
    assert ast_check(ref_none, cj({"name": "get_weather", "arguments": {"city": "Paris", "days": 3}})) == (
        False, "unexpected_argument:days")  # no default: still unexpected
    task = get_task(FC)
    items = [ex(1, FC_INPUT, FC_GOLD), ex(2, FC_INPUT, FC_GOLD), ex(3, FC_INPUT, FC_GOLD)]
    preds = [cj({"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}), "nope",
             cj({"name": "get_weather", "arguments": {"city": "Rome", "days": 3}})]
    _, agg = score_items(task, items, preds)
    assert agg["ast_accuracy"] == pytest.approx(1 / 3, abs=1e-4) and agg["name_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert agg["failure_kinds"] == {"invalid_call": 1, "wrong_argument_value": 1}
    assert agg["slices"] == {"get_weather": pytest.approx(1 / 3, abs=1e-4)}


# sacrebleu 2.6 CHRF() sentence scores (chrF2, char 6-grams), as reference values.
KNOWN_CHRF = [("The cat sat on the mat.", "The cat is on the mat.", 67.17273492330233),
              ("hello world", "hello world", 100.0), ("abc", "xyz", 0.0),
              ("Der schnelle braune Fuchs", "The quick brown fox", 7.811807599331322), ("a", "ab", 55.55555555555556)]


@pytest.mark.parametrize("hyp,ref,score", KNOWN_CHRF)
def test_chrf_matches_sacrebleu_values(hyp, ref, score):
    assert _chrf(hyp, ref) == pytest.approx(score / 100, abs=1e-9)  # the fallback implementation
    assert chrf(hyp, ref) == pytest.approx(score / 100, abs=1e-9)  # sacrebleu when installed


def test_generation_plugin_and_corpus_chrf():
    hyps, refs = [h for h, _, _ in KNOWN_CHRF], [r for _, r, _ in KNOWN_CHRF]
    assert corpus_chrf(hyps, refs) == pytest.approx(0.4812877433374766, abs=1e-9)  # sacrebleu corpus_score
    task = get_task(GEN)
    items = [ex(i, "x", r) for i, r in enumerate(refs)]
    _, agg = score_items(task, items, hyps[:-1] + [None])
    assert agg["chrf"] == pytest.approx(sum(s for _, _, s in KNOWN_CHRF[:-1]) / 100 / 5, abs=1e-4)
    assert agg["invalid_rate"] == 0.2 and agg["errors"]["empty_output"] == 1


def test_unknown_task_type_names_it():
    class Cfg:
        task = "ranking"

    with pytest.raises(ValueError, match="unknown task type 'ranking'; known: classification"):
        get_task(Cfg())


@pytest.mark.parametrize("skill_name", ["ticket-triage", "tool-calling", "json-extraction"])
def test_gold_answers_score_perfectly_on_the_real_skills(skill_name):
    """Each plug-in against the repo's own data: the gold answer (for function_call, the first
    acceptable value of each argument) and every replay reference score 1.0 and are valid."""
    from pathlib import Path

    from core.skills import load_skill
    from eval_gates.replay import replay_items

    root = Path(__file__).resolve().parents[2] / "seeds"
    if not (root / skill_name).is_dir():
        pytest.skip(f"seeds/{skill_name} is not there")
    skill = load_skill(skill_name, root=root)
    task = get_task(skill.config)
    for e in skill.eval_set:
        pred = e.output
        if skill.config.task == "function_call":
            g = json.loads(e.output)
            pred = cj({"name": g["name"], "arguments": {k: next(x for x in v if x != "")
                                                        for k, v in g["arguments"].items() if any(x != "" for x in v)}})
        s = task.score(e, pred)
        assert s[task.primary] == 1.0 and s["valid"] == 1.0, (e.id, task.error(e, pred))
    items, log = replay_items(skill)
    assert items and not log.skipped
    assert all(task.score(e, e.output)[task.primary] == 1.0 for e in items)


@pytest.mark.parametrize("labels", [["Billing", "Bug"], ["Feature Request", "Other"], ["账单", "故障"],
                                    ["Facturación", "Técnico"], ["C++", "Rust"], ["P1-urgent", "p2_later"],
                                    ["bug", "bug report"]])
def test_every_accepted_label_parses_back_as_declared(labels):
    from core.prompting import format_completion, parse_output
    from core.skills import SkillConfig

    cfg = SkillConfig.model_validate({"name": "labels", "task": "classification", "instruction": "i", "labels": labels})
    task = get_task(cfg)
    for lab in labels:
        assert parse_output(cfg, format_completion(cfg, lab)) == lab  # what the model was trained to write
        assert parse_output(cfg, f"{lab}.\nmore") == lab
        assert parse_output(cfg, lab.upper() + " - because") == lab
    ex = Example(id="1", skill="labels", input="x", output=labels[0], source="human")
    assert task.score(ex, parse_output(cfg, " " + labels[0]))["accuracy"] == 1.0  # a perfect model scores 1


@pytest.mark.parametrize("labels, problem", [(["C++", "c"], "read the same"), (["Bug", "bug"], "read the same"),
                                             (["!!!", "ok"], "no letters or digits"),
                                             (["feature_request", "Feature Request"], "read the same")])
def test_labels_that_cannot_parse_back_are_refused(labels, problem):
    from core.skills import SkillConfig

    with pytest.raises(ValueError, match=problem):
        SkillConfig.model_validate({"name": "labels", "task": "classification", "instruction": "i", "labels": labels})
