"""The work directory: everything a run produces lives here, never in git."""

from __future__ import annotations

import os
from pathlib import Path


def work_dir() -> Path:
    """$DISTILL_HOME, else ./.distill (models/, cache/, index/, runs/, registry/)."""
    return Path(os.environ.get("DISTILL_HOME", ".distill")).resolve()


def models_dir() -> Path:
    return work_dir() / "models"


def _skill(name: str) -> str:
    # A skill name becomes a folder name: refuse anything that could reach outside (../, /, ...).
    from core.skills import check_skill_name

    return check_skill_name(name)


def runs_dir(skill: str) -> Path:
    return work_dir() / "runs" / _skill(skill)


def pool_dir(skill: str) -> Path:
    """Every example a skill has ever accepted (the dedup reference and training pool)."""
    return work_dir() / "pool" / _skill(skill)


def index_dir(skill: str) -> Path:
    """The skill's persistent dedup index (MinHash signatures of every accepted example)."""
    return work_dir() / "index" / _skill(skill)


def registry_root() -> str:
    """$DISTILL_REGISTRY, else <work dir>/registry."""
    return os.environ.get("DISTILL_REGISTRY") or str(work_dir() / "registry")


def cache_dir() -> Path:
    """Durable caches that make a re-run free (teacher responses)."""
    return work_dir() / "cache"
