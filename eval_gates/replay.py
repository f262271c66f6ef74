"""Live-traffic replay: read the skill's traffic log, sample requests reproducibly."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from core.records import DataError, Example, read_jsonl
from core.skills import SkillConfig


@dataclass
class TrafficRecord:
    id: str
    timestamp: str
    request: str
    reference: str
    reference_source: str  # "llm" (the large model's answer) or "human" (a person's correction)
    accepted: bool

    def as_example(self, skill: str) -> Example:
        return Example(id=self.id, skill=skill, input=self.request, output=self.reference, source="traffic",
                       meta={"accepted": self.accepted, "reference_source": self.reference_source})


def load_traffic(path: Path, cfg: SkillConfig) -> list[TrafficRecord]:
    if not path.is_file():
        raise DataError(f"{path}: missing traffic log for skill {cfg.name} (gates.replay.source)")
    out = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        for key in ("id", "timestamp", "request", "reference", "reference_source"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise DataError(f"{where}: '{key}' must be a non-empty string")
        if not isinstance(obj.get("accepted"), bool):
            raise DataError(f"{where}: 'accepted' must be true or false")
        if obj["reference_source"] not in ("llm", "human"):
            raise DataError(f"{where}: 'reference_source' must be 'llm' or 'human'")
        if cfg.task == "classification" and obj["reference"] not in cfg.labels:
            raise DataError(f"{where}: reference {obj['reference']!r} is not one of the labels {cfg.labels}")
        out.append(TrafficRecord(**{k: obj[k] for k in TrafficRecord.__dataclass_fields__}))
    return out


def replay_sample(records: list[TrafficRecord], n: int, seed: int = 0) -> list[TrafficRecord]:
    """The most recent accepted requests, n of them sampled reproducibly.

    Only accepted references (the large model's answer a person let stand, or a
    person's correction) count as ground truth; rejected answers are not.
    """
    accepted = sorted((r for r in records if r.accepted), key=lambda r: r.timestamp)
    if len(accepted) <= n:
        return accepted
    return sorted(random.Random(seed).sample(accepted, n), key=lambda r: r.timestamp)
