"""The work directory: everything a run produces lives here, never in git."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from core.names import NameRule

# A run id becomes one folder name under runs/<skill>/: one safe path part.
RUN_ID_RULE = ("1-128 ASCII letters, digits, '_', '-' or '.', starting with a letter or digit "
               "(one folder name: no '/', no '..', not absolute)")
# The whole string (NameRule: fullmatch): "r1\n" is not a run id.
RUN_ID = NameRule(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", RUN_ID_RULE)


def work_dir() -> Path:
    """$DISTILL_HOME, else ./.distill (models/, cache/, index/, runs/, registry/)."""
    return Path(os.environ.get("DISTILL_HOME", ".distill")).resolve()


def traffic_url() -> str:
    """The traffic database the gateway writes and the pipeline reads by default: $DISTILL_TRAFFIC_URL (any
    SQLAlchemy URL, e.g. postgresql+psycopg://...), else sqlite:///<work dir>/traffic.db."""
    return os.environ.get("DISTILL_TRAFFIC_URL") or f"sqlite:///{work_dir() / 'traffic.db'}"


def traffic_table_name(skill: str) -> str:
    """The gateway's traffic table of `skill`: traffic_<skill> with '-' and '.' as '_' (traffic_ticket_triage)."""
    return "traffic_" + skill.replace("-", "_").replace(".", "_")


def models_dir() -> Path:
    return work_dir() / "models"


def _skill(name: str) -> str:
    # A skill name becomes a folder name: refuse anything that could reach outside (../, /, ...).
    from core.skills import check_skill_name

    return check_skill_name(name)


def runs_dir(skill: str) -> Path:
    return work_dir() / "runs" / _skill(skill)


def run_id_problem(run_id: Any) -> str | None:
    """Why `run_id` cannot name a run folder, or None."""
    return RUN_ID.problem("run id", run_id)


def check_run_id(run_id: Any) -> str:
    """`run_id` if it is one safe path part, else ValueError naming the rule."""
    problem = run_id_problem(run_id)
    if problem:
        raise ValueError(problem)
    return run_id


def run_dir(skill: str, run_id: str) -> Path:
    """<work dir>/runs/<skill>/<run id>; ValueError for a run id that is not one safe path part."""
    return runs_dir(skill) / check_run_id(run_id)


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
