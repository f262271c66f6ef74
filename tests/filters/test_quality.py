import pytest

from core.skills import FilterConfig, SkillConfig
from filters import MinConfidence, QualityFilter, run_filters

CLASSIFY = SkillConfig(name="t", task="classification", instruction="Classify.", labels=["pos", "neg"])
EXTRACT = SkillConfig(name="x", task="extraction", instruction="Extract the person.", output_schema={
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name"], "additionalProperties": False})


def test_quality_reasons(ex):
    cfg = FilterConfig(min_input_words=3, max_input_words=6, max_output_chars=10)
    cands = [
        ex("ok", "a perfectly fine input", "pos"),
        ex("short", "too short!", "pos"),
        ex("long", "one two three four five six seven", "pos"),
        ex("none", "output is missing here", None),
        ex("empty", "output is blank here", "   "),
        ex("bad", "label is not allowed", "maybe"),
        ex("verbose", "the output is long", "positive and also more"),
    ]
    kept, rejected, stats = run_filters(cands, [QualityFilter(cfg, CLASSIFY)])
    assert [e.id for e in kept] == ["ok"]
    reasons = {r.example.id: r.reason for r in rejected}
    assert reasons == {"short": "too_short", "long": "too_long", "none": "missing_output",
                       "empty": "missing_output", "bad": "not_a_label", "verbose": "output_too_long"}
    assert all(r.stage == "quality" for r in rejected)
    assert stats["stages"]["quality"]["reasons"] == {"too_short": 1, "too_long": 1, "missing_output": 2,
                                                     "not_a_label": 1, "output_too_long": 1}


def test_output_schema_validity_uses_the_skill_contract(ex):
    cands = [ex("ok", "Ann is 31 years old", '{"name":"Ann","age":31}'),
             ex("schema", "Bob is forty years old", '{"name":"Bob","age":"forty"}'),
             ex("json", "Cy is 20 years old", "name: Cy"),
             ex("extra", "Di is 50 years old", '{"name":"Di","city":"Rome"}')]
    kept, rejected, _ = run_filters(cands, [QualityFilter(FilterConfig(), EXTRACT)])
    assert [e.id for e in kept] == ["ok"]
    assert {r.example.id: r.reason for r in rejected} == {"schema": "schema_violation", "json": "invalid_json",
                                                          "extra": "schema_violation"}


@pytest.mark.parametrize("input,output,reason,field", [
    ("my card was charged twice this month", "As an AI, I cannot see your bank account.", "refusal", "output"),
    ("my card was charged twice this month", "I'm sorry, but I can't help with billing.", "refusal", "output"),
    ("Sure! Here is a new ticket: my card was charged twice", "billing", "boilerplate", "input"),
    ("Here is an example ticket: the app will not start", "bug", "boilerplate", "input"),
])
def test_refusals_and_boilerplate(ex, input, output, reason, field):
    (r,) = QualityFilter(FilterConfig(), None)([ex("c", input, output)]).rejected
    assert (r.reason, r.detail["field"]) == (reason, field)


def test_inputs_may_say_i_cannot(ex):
    # A user writing "I cannot log in" is a ticket, not a refusal: refusal patterns look at outputs only.
    kept = QualityFilter(FilterConfig(), CLASSIFY)([ex("c", "I cannot log in to my account since Monday", "neg")]).kept
    assert len(kept) == 1


def test_labels_only_and_no_labels(ex):
    step = QualityFilter(FilterConfig(), labels=["pos", "neg"])
    assert step([ex("a", "some input text", "maybe")]).rejected[0].reason == "not_a_label"
    kept, rejected, _ = run_filters([ex("a", "some input text", "anything")], [QualityFilter(FilterConfig())])
    assert len(kept) == 1 and not rejected


def test_min_confidence(ex):
    a, b, c = ex("a", "x y z"), ex("b", "x y z"), ex("c", "x y z")
    a.confidence, b.confidence = 0.5, 1.0  # c has none (human or traffic): passes
    result = MinConfidence(0.8)([a, b, c])
    assert [e.id for e in result.kept] == ["b", "c"]
    assert result.rejected[0].detail == {"confidence": 0.5, "min_confidence": 0.8}
