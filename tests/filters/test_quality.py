from core.skills import FilterConfig
from filters import QualityFilter, run_filters


def test_quality_reasons(ex):
    cfg = FilterConfig(min_input_words=3, max_input_words=6)
    cands = [
        ex("ok", "a perfectly fine input", "pos"),
        ex("short", "too short!", "pos"),
        ex("long", "one two three four five six seven", "pos"),
        ex("none", "output is missing here", None),
        ex("empty", "output is blank here", "   "),
        ex("bad", "label is not allowed", "maybe"),
    ]
    kept, rejected, stats = run_filters(cands, [QualityFilter(cfg, ["pos", "neg"])])
    assert [e.id for e in kept] == ["ok"]
    reasons = {r.example.id: r.reason for r in rejected}
    assert reasons == {"short": "too_short", "long": "too_long", "none": "missing_output",
                       "empty": "missing_output", "bad": "invalid_label"}
    assert all(r.stage == "quality" for r in rejected)
    assert stats["stages"]["quality"]["reasons"] == {"too_short": 1, "too_long": 1, "missing_output": 2,
                                                     "invalid_label": 1}


def test_no_labels_means_any_output(ex):
    kept, rejected, _ = run_filters([ex("a", "some input text", "anything")], [QualityFilter(FilterConfig(), None)])
    assert len(kept) == 1 and not rejected
