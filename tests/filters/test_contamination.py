from core.skills import FilterConfig
from filters import Contamination

LONG_EVAL = ("after the update the app crashes every time i open the camera and the support team "
             "keeps sending me the same useless troubleshooting steps")  # 24 words
SHORT_EVAL = "the hotel room smelled of smoke and mold everywhere"   # 9 words
TINY_EVAL = "not worth it"                                           # 3 words


def make_step(ex, **kw):
    evals = {"eval": [ex("e_long", LONG_EVAL), ex("e_short", SHORT_EVAL), ex("e_tiny", TINY_EVAL)],
             "holdout": [ex("h1", "shipping was fast and the box arrived in perfect condition with a note")]}
    return Contamination.from_config(evals, FilterConfig(**kw))


def test_copied_13_word_span_is_caught(ex):
    span = " ".join(LONG_EVAL.split()[5:18])  # 13 words from the middle
    result = make_step(ex)([ex("c", f"Honestly, {span}. Never buying again!")])
    assert not result.kept
    (r,) = result.rejected
    assert (r.stage, r.reason) == ("contamination", "eval_ngram_overlap")
    assert r.detail["eval_set"] == "eval" and r.detail["eval_id"] == "e_long"
    assert r.detail["ngram"] == span and r.detail["n"] == 13


def test_short_eval_item_inside_longer_candidate_is_caught(ex):
    cand = "We left after one night because The hotel room smelled of smoke, and mold everywhere; awful trip."
    (r,) = make_step(ex)([ex("c", cand)]).rejected
    assert r.reason == "eval_ngram_overlap"
    assert (r.detail["eval_id"], r.detail["n"]) == ("e_short", 9)


def test_near_copy_of_eval_item_is_caught(ex):
    # Last word changed, so no 13-gram of the holdout item survives; shingle Jaccard stays high.
    cand = "Shipping was fast and the box arrived in perfect condition with a card"
    (r,) = make_step(ex)([ex("c", cand)]).rejected
    assert r.reason == "eval_near_duplicate"
    assert (r.detail["eval_set"], r.detail["eval_id"]) == ("holdout", "h1")
    assert r.detail["jaccard"] >= 0.7


def test_tiny_eval_item_matches_only_as_whole_text(ex):
    step = make_step(ex)
    result = step([ex("whole", "Not worth it!"), ex("inside", "the price is fine but honestly not worth it for me")])
    assert [e.id for e in result.kept] == ["inside"]
    assert result.rejected[0].detail["eval_id"] == "e_tiny"


def test_clean_candidates_pass(ex):
    clean = [
        ex("a", "the camera takes sharp photos in low light and the battery is decent"),
        ex("b", "our hotel room was spotless and the staff were friendly at check in"),
        ex("c", "delivery took three weeks and nobody answered my emails about it"),
    ]
    result = make_step(ex)(clean)
    assert result.kept == clean and not result.rejected
