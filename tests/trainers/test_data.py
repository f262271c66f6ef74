from core.records import Example
from trainers.data import build_training_pool


def ex(i, source, out="billing"):
    return Example(id=f"{source}-{i}", skill="t", input=f"text {source} {i}", output=out, source=source)


def test_student_outputs_never_reach_training():
    seeds = [ex(i, "human") for i in range(20)]
    accepted = [ex(i, "teacher") for i in range(30)] + [ex(i, "student") for i in range(5)]
    pool = build_training_pool(seeds, accepted, human_share=0.3)
    assert pool.dropped_student == 5
    assert not [e for e in pool.train + pool.val if e.source == "student"]


def test_humans_keep_their_share_and_val_is_disjoint():
    seeds = [ex(i, "human") for i in range(10)]
    accepted = [ex(i, "teacher") for i in range(90)]
    pool = build_training_pool(seeds, accepted, human_share=0.4, val_fraction=0.1, seed=1)
    humans = sum(e.source == "human" for e in pool.train)
    assert humans / len(pool.train) >= 0.4 - 1e-9
    assert pool.val and not {e.id for e in pool.val} & {e.id for e in pool.train}
    assert {e.source for e in pool.val} == {"human", "teacher"}


def test_pool_is_reproducible():
    seeds = [ex(i, "human") for i in range(12)]
    accepted = [ex(i, "teacher") for i in range(12)]
    a = build_training_pool(seeds, accepted, 0.3, seed=3)
    b = build_training_pool(seeds, accepted, 0.3, seed=3)
    assert [e.id for e in a.train] == [e.id for e in b.train]
