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


def test_human_share_one_trains_on_humans_only_and_zero_adds_no_repeats():
    seeds = [ex(i, "human") for i in range(12)]
    accepted = [ex(i, "teacher") for i in range(40)]
    only = build_training_pool(seeds, accepted, human_share=1.0)
    assert only.train and {e.source for e in only.train} == {"human"}
    none = build_training_pool(seeds, accepted, human_share=0.0)
    assert len({e.id for e in none.train}) == len(none.train)  # no human repeated


def test_floor_holds_in_every_epoch_of_the_trainers_samplers():
    """The mixed list is one epoch; the samplers the trainer uses (group-by-length, random)
    visit each item once per epoch, so every epoch (not just the average) keeps the floor."""
    import torch
    from torch.utils.data import RandomSampler
    from transformers.trainer_pt_utils import LengthGroupedSampler

    seeds = [ex(i, "human") for i in range(11)]
    accepted = [ex(i, "teacher") for i in range(70)]
    pool = build_training_pool(seeds, accepted, human_share=0.35, val_fraction=0.1, seed=2)
    lengths = [len(e.input) for e in pool.train]
    for epoch in range(3):
        g = torch.Generator().manual_seed(epoch)
        for sampler in (LengthGroupedSampler(4, lengths=lengths, generator=g), RandomSampler(pool.train, generator=g)):
            order = list(sampler)
            assert sorted(order) == list(range(len(pool.train)))
            share = sum(pool.train[i].source == "human" for i in order) / len(order)
            assert share >= 0.35 - 1e-9


def test_pool_is_reproducible():
    seeds = [ex(i, "human") for i in range(12)]
    accepted = [ex(i, "teacher") for i in range(12)]
    a = build_training_pool(seeds, accepted, 0.3, seed=3)
    b = build_training_pool(seeds, accepted, 0.3, seed=3)
    assert [e.id for e in a.train] == [e.id for e in b.train]


def test_cap_pool_keeps_the_newest_pooled_examples_and_every_new_one():
    from core.records import Example
    from trainers.data import cap_pool

    def ex(i, ts):
        return Example(id=f"p{i}", skill="s", input=f"in {i}", output="x", source="teacher", created_at=ts)

    pool = [ex(0, "2026-11-01T00:00:00+00:00"), ex(1, "2026-11-03T00:00:00+00:00"), ex(2, "2026-11-02T00:00:00+00:00")]
    new = [ex(9, "2026-11-04T00:00:00+00:00")]
    got, rep = cap_pool(pool, new, 2)
    assert [e.id for e in got] == ["p1", "p2", "p9"] and rep == {"pool": 3, "pool_used": 2, "cap": 2, "rule": "newest"}
    got, rep = cap_pool(pool, new, None)
    assert len(got) == 4 and rep["pool_used"] == 3


def test_cap_pool_uniform_samples_every_batch_reproducibly_and_keeps_the_new_ones():
    import pytest

    from core.records import Example
    from trainers.data import cap_pool

    # four runs' batches of 50, oldest first; a cap of 100
    pool = [Example(id=f"r{r}-{i}", skill="s", input=f"in {r} {i}", output="x", source="teacher",
                    created_at=f"2026-11-0{r + 1}T00:00:00+00:00") for r in range(4) for i in range(50)]
    new = [Example(id="n0", skill="s", input="new", output="x", source="teacher", created_at="2026-11-09T00:00:00+00:00")]
    got, rep = cap_pool(pool, new, 100, "uniform", seed=3)
    assert rep == {"pool": 200, "pool_used": 100, "cap": 100, "rule": "uniform"} and got[-1].id == "n0"
    ids = [e.id for e in got[:-1]]
    assert len(set(ids)) == 100 and ids == [e.id for e in pool if e.id in set(ids)]  # distinct, pool order kept
    assert {i.split("-")[0] for i in ids} == {"r0", "r1", "r2", "r3"}  # the oldest runs keep a share
    assert [e.id for e in cap_pool(pool, new, 100, "uniform", seed=3)[0]] == [e.id for e in got]  # seeded
    assert [e.id for e in cap_pool(pool, new, 100, "uniform", seed=4)[0]] != [e.id for e in got]
    newest, _ = cap_pool(pool, new, 100, "newest")
    assert {e.id.split("-")[0] for e in newest[:-1]} == {"r2", "r3"}  # newest: the last two runs only
    with pytest.raises(ValueError, match="newest or uniform"):
        cap_pool(pool, new, 100, "oldest")
