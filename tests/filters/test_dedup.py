from core.skills import FilterConfig
from filters import ExactDedup, NearDedup, run_filters

SENT = ("the new phone arrived two days late but the battery lasts all week "
        "and the screen is bright enough outdoors")  # 20 words


def test_exact_dup_within_batch_and_against_reference(ex):
    ref = [ex("seed1", "The food was great!", "pos")]
    cands = [
        ex("c1", "the food was GREAT", "pos"),          # same input and output as the reference
        ex("c2", "Service was slow, sadly.", "neg"),
        ex("c3", "service   was slow sadly", "pos"),    # c2's input with another answer
        ex("c4", "Something else entirely.", "neg"),
    ]
    kept, rejected, stats = run_filters(cands, [ExactDedup(ref)])
    assert [e.id for e in kept] == ["c2", "c4"]  # first copy wins
    got = {r.example.id: (r.stage, r.reason, r.detail["matched_id"], r.detail["match"]) for r in rejected}
    assert got == {"c1": ("exact_dedup", "exact_duplicate", "seed1", "input_output"),
                   "c3": ("exact_dedup", "exact_duplicate", "c2", "input")}
    assert stats["stages"]["exact_dedup"]["reasons"] == {"exact_duplicate": 2}


def test_input_output_mode_keeps_other_answers_to_the_same_input(ex):
    cands = [ex("a", "Write a haiku about rain", "soft rain on tin roofs"),
             ex("b", "write a haiku about rain!", "grey clouds drift slowly"),
             ex("c", "Write a haiku about rain.", "Soft rain, on tin roofs")]
    kept, rejected, _ = run_filters(cands, [ExactDedup.from_config([], FilterConfig(exact_dedup="input_output"))])
    assert [e.id for e in kept] == ["a", "b"]
    assert rejected[0].detail == {"matched_id": "a", "match": "input_output"}


def test_exact_dedup_calls_are_independent(ex):
    step = ExactDedup([])
    assert len(step([ex("a", "same text here")]).kept) == 1
    assert len(step([ex("b", "same text here")]).kept) == 1


def test_near_dup_one_word_changed(ex):
    # One word of 20 changed, second to last: true shingle Jaccard 0.8, clear of 0.7.
    changed = SENT.replace("bright enough", "bright even")
    ref = [ex("seed", SENT)]
    cands = [
        ex("near_ref", changed),
        ex("fresh", "my cat refuses to eat the cheap food and keeps knocking the bowl off the kitchen counter"),
        ex("near_fresh", "my cat refuses to eat the cheap food and keeps knocking the bowl off the kitchen table"),
        ex("other", "customer support answered within minutes and replaced the broken charger for free"),
    ]
    step = NearDedup.in_memory(ref, FilterConfig(near_dup_threshold=0.7, num_perm=128, shingle=3))
    kept, rejected, stats = run_filters(cands, [step])
    assert [e.id for e in kept] == ["fresh", "other"]
    got = {r.example.id: (r.detail["matched_id"], r.detail["matched_in"]) for r in rejected}
    assert got == {"near_ref": ("seed", "seeds"), "near_fresh": ("fresh", "run")}
    assert all(r.reason == "near_duplicate" and 0.7 <= r.detail["jaccard"] <= 1.0 for r in rejected)
    assert stats["stages"]["near_dedup"]["reasons"] == {"near_duplicate": 2}


def test_near_dedup_short_texts_and_high_threshold(ex):
    # Texts shorter than the shingle are one shingle; threshold 1.0 still works (only identical sets match).
    step = NearDedup.in_memory([ex("s", "great")], FilterConfig(near_dup_threshold=1.0, num_perm=16, shingle=3))
    result = step([ex("a", "Great!"), ex("b", "great stuff"), ex("c", "great stuff here today")])
    assert [e.id for e in result.kept] == ["b", "c"]
    assert result.rejected[0].detail == {"matched_id": "s", "matched_in": "seeds", "jaccard": 1.0}


def test_near_dedup_remembers_earlier_batches_of_the_same_run(ex):
    step = NearDedup.in_memory([], FilterConfig())
    assert len(step([ex("a", SENT)]).kept) == 1
    second = step([ex("b", SENT + "!")])
    assert not second.kept and second.rejected[0].detail["matched_id"] == "a"
