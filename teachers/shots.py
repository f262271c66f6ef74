"""Which seeds a labeling prompt shows: random (balanced over labels) or the most similar ones.

`similar` ranks the pool by BM25 (rank-bm25) against the input being labeled and, for
classification, takes the best seeds of every label in turn, so a prompt never shows only
the label its neighbours happen to share (that would hand the teacher its answer and skew
the label distribution). The most similar shot comes last, next to the input.

Cost: per-item shots make every prompt different, so a server's prompt-prefix cache cannot
help; the audit reports teacher time per option for that reason.
"""

from __future__ import annotations

import random
import re
from typing import Literal

from core.records import Example
from core.skills import SkillConfig
from core.tasks import get_task

ShotMode = Literal["random", "similar"]
_WORD = re.compile(r"\w+", re.UNICODE)


def _by_label(seeds: list[Example]) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = {}
    for s in seeds:
        groups.setdefault(s.output or "", []).append(s)
    return groups


def balanced_shots(seeds: list[Example], k: int, rng: random.Random) -> list[Example]:
    """k seeds spread evenly over the labels, in random order."""
    groups = {lab: rng.sample(xs, len(xs)) for lab, xs in _by_label(seeds).items()}
    shots: list[Example] = []
    while len(shots) < min(k, len(seeds)):
        for lab in sorted(groups):
            if groups[lab] and len(shots) < k:
                shots.append(groups[lab].pop())
    rng.shuffle(shots)
    return shots


def similarity_text(cfg: SkillConfig, input: str) -> str:
    """What similarity is measured on: the task type's matching text (a function call's request)."""
    return get_task(cfg).match_text(input)


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class ShotPicker:
    """Shots for one input from a fixed pool of seeds (in the audit: the other folds only)."""

    def __init__(self, cfg: SkillConfig, pool: list[Example], k: int, mode: ShotMode, seed: int = 0):
        if mode not in ("random", "similar"):
            raise ValueError(f"shot mode must be 'random' or 'similar', got {mode!r}")
        self.cfg, self.pool, self.k, self.mode = cfg, list(pool), k, mode
        self.one_label = get_task(cfg).one_label  # shots balanced over the labels
        self.seed = seed
        self.bm25 = None
        if mode == "similar" and self.pool:
            from rank_bm25 import BM25Okapi

            # An empty document would make BM25's average length 0; a placeholder token keeps it defined.
            self.bm25 = BM25Okapi([tokens(similarity_text(cfg, s.input)) or ["<empty>"] for s in self.pool])

    def pick(self, input: str) -> list[Example]:
        """The shots for `input`: a function of (pool, k, mode, seed, input) only, never of the order inputs
        are asked in, so the gateway's escalate lane shows the teacher exactly the shots the pipeline labelled
        and was measured with (and a resumed run rebuilds the same prompts)."""
        if self.k <= 0 or not self.pool:
            return []
        # bytes seeds hash with SHA-512 in `random`: stable across processes (no PYTHONHASHSEED); surrogatepass
        # so any str (a lone surrogate included) has bytes.
        rng = random.Random(f"{self.seed + 1}\x1f".encode() + input.encode("utf-8", "surrogatepass"))
        if self.mode == "random":
            if self.one_label:
                return balanced_shots(self.pool, self.k, rng)
            return rng.sample(self.pool, min(self.k, len(self.pool)))
        scores = self.bm25.get_scores(tokens(similarity_text(self.cfg, input)))
        # Ties (no shared words) fall back to the pool order, shuffled per input for variety.
        jitter = {id(s): rng.random() for s in self.pool}
        ranked = sorted(range(len(self.pool)), key=lambda i: (-scores[i], jitter[id(self.pool[i])]))
        ranked = [i for i in ranked if self.pool[i].input != input]  # never the input itself
        if self.one_label:
            per_label: dict[str, list[int]] = {}
            for i in ranked:
                per_label.setdefault(self.pool[i].output or "", []).append(i)
            chosen: list[int] = []
            depth = 0
            while len(chosen) < min(self.k, len(ranked)):
                # Round d takes each label's d-th best seed, best labels first.
                row = [idx[depth] for idx in per_label.values() if depth < len(idx)]
                if not row:
                    break
                row.sort(key=lambda i: -scores[i])
                chosen += row[: self.k - len(chosen)]
                depth += 1
        else:
            chosen = ranked[: self.k]
        chosen.sort(key=lambda i: scores[i])  # most similar last, next to the input
        return [self.pool[i] for i in chosen]
