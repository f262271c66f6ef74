"""The tiny ticket-triage skill the trainer tests train on, and a config copy with training overrides."""

import pytest

from core.skills import load_skill


@pytest.fixture()
def skill(skill_root):
    return load_skill("ticket-triage", profile="tiny", root=skill_root)


def train_cfg(skill, **train):
    """A deep copy of the skill's config with student.train keys overridden."""
    cfg = skill.config.model_copy(deep=True)
    for k, v in train.items():
        setattr(cfg.student.train, k, v)
    return cfg
