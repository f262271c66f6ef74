"""The training pool: human seeds plus accepted teacher data, mixed, with a validation split."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from core.records import Example


@dataclass
class TrainingPool:
    train: list[Example]
    val: list[Example]
    dropped_student: int  # examples refused by the collapse guard
    human_share: float  # share of human examples in `train` after mixing

    def summary(self) -> dict:
        by_source: dict[str, int] = {}
        for e in self.train:
            by_source[e.source] = by_source.get(e.source, 0) + 1
        return {"train": len(self.train), "val": len(self.val), "train_by_source": by_source,
                "human_share": round(self.human_share, 3), "dropped_student_outputs": self.dropped_student}


def build_training_pool(seeds: list[Example], accepted: list[Example], human_share: float,
                        val_fraction: float = 0.1, seed: int = 0) -> TrainingPool:
    """Mix the whole accepted pool with the seeds for a fresh adapter.

    Why: each run trains a new adapter from the base on everything accepted so far, not
    on top of the last adapter, so errors do not compound run over run. The student's
    own outputs never enter training (model collapse: a model trained on its own
    samples loses the tails of the distribution), so `source == "student"` is refused
    here whatever upstream did. Human seeds are the only ground truth; when teacher
    data outnumbers them, they are repeated so that they keep at least `human_share`
    of every epoch and the teacher's bias cannot drown them.
    """
    rng = random.Random(seed)
    clean = [e for e in seeds + accepted if e.source != "student" and e.output is not None]
    dropped = len(seeds) + len(accepted) - len(clean)
    human = [e for e in clean if e.source == "human"]
    other = [e for e in clean if e.source != "human"]
    rng.shuffle(human)
    rng.shuffle(other)
    # Validation comes from the pool (never from the eval set), in proportion to each source.
    n_val_h = max(1, round(len(human) * val_fraction)) if len(human) >= 10 else 0
    n_val_o = round(len(other) * val_fraction) if len(other) >= 10 else 0
    val = human[:n_val_h] + other[:n_val_o]
    human, other = human[n_val_h:], other[n_val_o:]
    train_h = list(human)
    if other and human and human_share > 0:
        need = math.ceil(human_share * len(other) / (1 - human_share)) if human_share < 1 else len(human)
        while len(train_h) < need:
            train_h += human[: need - len(train_h)]
    train = train_h + other
    rng.shuffle(train)
    share = len(train_h) / len(train) if train else 0.0
    return TrainingPool(train=train, val=val, dropped_student=dropped, human_share=share)
