"""The training pool: human seeds plus accepted teacher data, mixed, with a validation split."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from core.records import Example


@dataclass
class TrainingPool:
    train: list[Example]  # one epoch: the trainer visits every item once per epoch, in a fresh order
    val: list[Example]
    dropped_student: int  # examples refused by the collapse guard
    human_share: float  # share of human examples in `train` (so in every full epoch) after mixing

    def summary(self) -> dict:
        by_source: dict[str, int] = {}
        for e in self.train:
            by_source[e.source] = by_source.get(e.source, 0) + 1
        return {"train": len(self.train), "val": len(self.val), "train_by_source": by_source,
                "human_share": round(self.human_share, 3), "dropped_student_outputs": self.dropped_student}


def cap_pool(pool: list[Example], new: list[Example], cap: int | None, rule: str = "newest",
             seed: int = 0) -> tuple[list[Example], dict]:
    """What a run trains on besides the seeds: its `new` examples and at most `cap` of the earlier `pool`.

    rule "newest": the newest by created_at (ties: later in the pool), so the data follows the latest
    teacher, filters and traffic; "uniform": a uniform sample without replacement (seeded by `seed`),
    so every earlier run keeps its share. Pool order is kept. Returns (examples, report).
    Raises ValueError for another rule. benchmarks/pool_cap.py measures both against no cap.
    """
    if rule not in ("newest", "uniform"):
        raise ValueError(f"pool sampling rule {rule!r}: expected newest or uniform")
    if cap is None or len(pool) <= cap:
        return pool + new, {"pool": len(pool), "pool_used": len(pool), "cap": cap, "rule": rule}
    if rule == "uniform":
        keep = sorted(random.Random(seed).sample(range(len(pool)), cap))
    else:
        from core.records import instant_key

        order = sorted(range(len(pool)), key=lambda i: (instant_key(pool[i].created_at), i))  # instants
        keep = sorted(order[-cap:])
    return [pool[i] for i in keep] + new, {"pool": len(pool), "pool_used": cap, "cap": cap, "rule": rule}


def build_training_pool(seeds: list[Example], accepted: list[Example], human_share: float,
                        val_fraction: float = 0.1, seed: int = 0) -> TrainingPool:
    """Mix the whole accepted pool with the seeds for a fresh adapter.

    Why a fresh adapter on the whole pool: each run trains a new adapter from the base on
    everything accepted so far, not on top of the last adapter, so teacher errors and
    drift do not compound run over run, and any run can be reproduced from its data alone.

    Why no student outputs: a model trained on its own samples loses the tails of the
    distribution run after run (model collapse), so `source == "student"` is refused here
    whatever upstream did.

    Why a human floor: human seeds are the only ground truth. When teacher data outnumbers
    them, they are repeated so that they make up at least `human_share` of the returned
    list. That list is one epoch: the trainer's samplers (random or group-by-length) visit
    every item exactly once per epoch, so the floor holds in every full epoch, not only
    on average (tests/trainers/test_data.py checks the trainer's own sampler).
    `human_share == 1` trains on human examples only.
    """
    rng = random.Random(seed)
    clean = [e for e in seeds + accepted if e.source != "student" and e.output is not None]
    dropped = sum(e.source == "student" for e in seeds + accepted)
    human = [e for e in clean if e.source == "human"]
    other = [e for e in clean if e.source != "human"]
    rng.shuffle(human)
    rng.shuffle(other)
    # Validation comes from the pool (never from the eval set), in proportion to each source,
    # so eval loss measures the same mix the adapter is trained on.
    n_val_h = max(1, round(len(human) * val_fraction)) if len(human) >= 10 and val_fraction > 0 else 0
    n_val_o = round(len(other) * val_fraction) if len(other) >= 10 else 0
    val = human[:n_val_h] + other[:n_val_o]
    human, other = human[n_val_h:], other[n_val_o:]
    if human_share >= 1:
        other = []
    train_h = list(human)
    if other and human and human_share > 0:
        # Smallest count of human items h with h / (h + len(other)) >= human_share.
        need = math.ceil(human_share * len(other) / (1 - human_share))
        while len(train_h) < need:
            train_h += human[: need - len(train_h)]
    train = train_h + other
    rng.shuffle(train)
    share = len(train_h) / len(train) if train else 0.0
    return TrainingPool(train=train, val=val, dropped_student=dropped, human_share=share)
