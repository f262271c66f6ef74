import json

import pytest

from core.skills import FilterConfig
from filters import FilterResult, default_steps, run_filters


def test_stats_match_rejected_and_nothing_is_lost(ex):
    cfg = FilterConfig()
    seeds = [ex("s1", "the soup was cold and the waiter ignored us all evening")]
    evals = {"eval": [ex("e1", "the hotel room smelled of smoke and mold everywhere")]}
    cands = [
        ex("ok1", "fresh bread, friendly staff and a lovely view of the harbour"),
        ex("short", "meh"),
        ex("bad_label", "the parking was impossible to find on a saturday", "unsure"),
        ex("seed_copy", "The soup was cold, and the waiter ignored us all evening!"),
        ex("leak", "honestly the hotel room smelled of smoke and mold everywhere we went"),
        ex("ok2", "the app is fast and the new dark mode is easy on the eyes at night"),
        ex("ok2_near", "the app is fast and the new dark mode is easy on the eyes at bedtime"),
        ex("ok2_copy", "The app is fast and the new dark mode is easy on the eyes at night."),
    ]
    kept, rejected, stats = run_filters(cands, default_steps(cfg, ["pos", "neg"], seeds, evals))

    assert len(kept) + len(rejected) == len(cands)
    assert {e.id for e in kept} | {r.example.id for r in rejected} == {e.id for e in cands}
    assert [e.id for e in kept] == ["ok1", "ok2"]
    assert {r.example.id: r.reason for r in rejected} == {
        "short": "too_short", "bad_label": "invalid_label", "seed_copy": "exact_duplicate",
        "ok2_copy": "exact_duplicate", "leak": "eval_ngram_overlap", "ok2_near": "near_duplicate"}

    # Stats agree with the rejected list, per (stage, reason).
    counted = {}
    for r in rejected:
        counted.setdefault(r.stage, {}).setdefault(r.reason, 0)
        counted[r.stage][r.reason] += 1
    assert {s: v["reasons"] for s, v in stats["stages"].items() if v["reasons"]} == counted
    assert (stats["candidates"], stats["kept"], stats["rejected"]) == (8, 2, 6)
    assert stats["stages"]["quality"]["in"] == 8 and stats["stages"]["near_dedup"]["kept"] == 2
    json.dumps(stats)  # JSON-able
    json.dumps([r.to_dict() for r in rejected])


def test_a_step_that_loses_examples_fails_loudly(ex):
    class Lossy:
        name = "lossy"

        def __call__(self, examples):
            return FilterResult(kept=examples[1:])

    with pytest.raises(RuntimeError, match="lossy"):
        run_filters([ex("a", "one two three"), ex("b", "four five six")], [Lossy()])
