from filters import ExactDedup, NearDedup, run_filters

SENT = ("the new phone arrived two days late but the battery lasts all week "
        "and the screen is bright enough outdoors")  # 20 words


def test_exact_dup_within_batch_and_against_reference(ex):
    ref = [ex("seed1", "The food was great!")]
    cands = [
        ex("c1", "the food was GREAT"),          # same as the reference after normalizing
        ex("c2", "Service was slow, sadly."),
        ex("c3", "service   was slow sadly"),    # copy of c2
        ex("c4", "Something else entirely."),
    ]
    kept, rejected, _ = run_filters(cands, [ExactDedup(ref)])
    assert [e.id for e in kept] == ["c2", "c4"]  # first copy wins
    got = {r.example.id: (r.stage, r.reason, r.detail["matched_id"]) for r in rejected}
    assert got == {"c1": ("exact_dedup", "exact_duplicate", "seed1"),
                   "c3": ("exact_dedup", "exact_duplicate", "c2")}


def test_exact_dedup_calls_are_independent(ex):
    step = ExactDedup([])
    assert len(step([ex("a", "same text here")]).kept) == 1
    assert len(step([ex("b", "same text here")]).kept) == 1


def test_near_dup_one_word_changed(ex):
    # One word of 20 changed, second to last: true shingle Jaccard 0.8, clear of 0.7.
    # (A change mid-sentence gives 0.73, which MinHash noise can put either side of 0.7.)
    changed = SENT.replace("bright enough", "bright even")
    ref = [ex("seed", SENT)]
    cands = [
        ex("near_ref", changed),
        ex("fresh", "my cat refuses to eat the cheap food and keeps knocking the bowl off the kitchen counter"),
        ex("near_fresh", "my cat refuses to eat the cheap food and keeps knocking the bowl off the kitchen table"),
        ex("other", "customer support answered within minutes and replaced the broken charger for free"),
    ]
    step = NearDedup(ref, threshold=0.7, num_perm=128, shingle=3)
    kept, rejected, stats = run_filters(cands, [step])
    assert [e.id for e in kept] == ["fresh", "other"]
    got = {r.example.id: r.detail["matched_id"] for r in rejected}
    assert got == {"near_ref": "seed", "near_fresh": "fresh"}
    assert all(r.reason == "near_duplicate" and 0.7 <= r.detail["jaccard"] <= 1.0 for r in rejected)
    assert stats["stages"]["near_dedup"]["reasons"] == {"near_duplicate": 2}


def test_near_dedup_short_texts_and_high_threshold(ex):
    # Texts shorter than the shingle are one shingle; threshold 1.0 still works (only identical sets match).
    step = NearDedup([ex("s", "great")], threshold=1.0, num_perm=16, shingle=3)
    result = step([ex("a", "Great!"), ex("b", "great stuff"), ex("c", "great stuff here today")])
    assert [e.id for e in result.kept] == ["b", "c"]
    assert result.rejected[0].detail == {"matched_id": "s", "jaccard": 1.0}
