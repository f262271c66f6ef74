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


def naive_overlap(cand_words, evals, ngram, min_ngram):
    """The definition, spelled out: (eval id, n) of the longest, earliest eval gram inside the candidate."""
    whole_max = min(ngram, min_ngram)
    best = None
    for eid, w in evals:
        k = ngram if len(w) >= ngram else len(w)
        if k < whole_max:
            if cand_words == w:
                best = best or (eid, k, 0)
            continue
        grams = {tuple(w[i:i + k]) for i in range(len(w) - k + 1)}
        for i in range(len(cand_words) - k + 1):
            if tuple(cand_words[i:i + k]) in grams:
                if best is None or (-k, i) < (-best[1], best[2]):
                    best = (eid, k, i)
                break
    return best and best[:2]


def test_batched_ngram_check_equals_the_definition(ex):
    import random

    from filters.normalize import words

    rng = random.Random(3)
    vocab = [f"v{i}" for i in range(40)]
    evals = [(f"e{i}", [rng.choice(vocab) for _ in range(rng.choice([3, 8, 10, 13, 20]))]) for i in range(40)]
    cands = []
    for i in range(300):
        w = [rng.choice(vocab) for _ in range(rng.choice([2, 3, 9, 30]))]
        if i % 3 == 0:  # plant a piece (or all) of an eval item
            eid, ew = rng.choice(evals)
            k = min(len(ew), 13)
            j = rng.randrange(len(ew) - k + 1)
            at = rng.randrange(len(w) + 1)
            w = w[:at] + ew[j:j + k] + w[at:] if len(ew) >= 8 else ew
        cands.append(ex(f"c{i}", " ".join(w)))
    cfg = FilterConfig(near_dup_threshold=1.0)
    step = Contamination({"eval": [ex(eid, " ".join(w)) for eid, w in evals]}, cfg)
    hits = step._ngram_hits([words(c.input) for c in cands])
    n_hits = 0
    for c, hit in zip(cands, hits):
        want = naive_overlap(words(c.input), evals, cfg.ngram, cfg.min_ngram)
        if want is None:
            assert hit is None
        else:
            n_hits += 1
            # Several eval items can share a gram; the first one in the set wins, as in the definition.
            assert hit is not None and hit["n"] == want[1]
            assert " ".join(dict(evals)[hit["eval_id"]]).find(hit["ngram"]) >= 0
    assert n_hits >= 100


def test_external_eval_sets_are_loaded_and_checked(ex, tmp_path):
    import json

    import pytest

    from core.skills import SkillConfig, SkillError
    from filters import load_external_eval_sets

    folder = tmp_path / "skill"
    (folder / "bench").mkdir(parents=True)
    rows = [{"id": "b1", "input": "the printer on floor three jams every single morning before nine"},
            {"id": "b2", "input": {"request": "book a table for two", "tools": []}, "output": {"name": "book"}}]
    (folder / "bench" / "mini.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = SkillConfig(name="t", task="classification", instruction="x", labels=["a", "b"],
                      filters={"external_eval_sets": ["bench/mini.jsonl"]})
    sets = load_external_eval_sets(cfg, folder)
    assert [e.id for e in sets["bench/mini.jsonl"]] == ["b1", "b2"]
    assert sets["bench/mini.jsonl"][1].input == '{"request":"book a table for two","tools":[]}'
    step = Contamination.from_config(sets, FilterConfig())
    (r,) = step([ex("c", "Again: the printer on floor three jams every single morning before nine!")]).rejected
    assert (r.detail["eval_set"], r.detail["eval_id"]) == ("bench/mini.jsonl", "b1")

    bad = SkillConfig(name="t", task="classification", instruction="x", labels=["a", "b"],
                      filters={"external_eval_sets": ["bench/mini.jsonl", "nope.jsonl", "bench/broken.jsonl"]})
    (folder / "bench" / "broken.jsonl").write_text('{"id": "z", "input": "fine"}\n{"id": "z", "input": "dup"}\n')
    with pytest.raises(SkillError) as err:
        load_external_eval_sets(bad, folder)
    msg = str(err.value)
    assert "filters.external_eval_sets[1]" in msg and "nope.jsonl does not exist" in msg
    assert "broken.jsonl:2" in msg


def test_near_copy_needs_exact_jaccard_confirmation(ex):
    # Half the shingles shared: LSH tuned for recall may propose it; the exact Jaccard (< 0.7) keeps it.
    base = "one two three four five six seven eight nine ten eleven twelve"
    cand = "one two three four five six seven alpha beta gamma delta epsilon"
    step = Contamination({"eval": [ex("e", base)]}, FilterConfig(ngram=13, min_ngram=13))
    assert step([ex("c", cand)]).kept
