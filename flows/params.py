"""The flow's parameters (validated at the flow boundary) and the models a run resolved."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field, field_validator

from core.records import write_json
from core.workdir import check_run_id, run_dir as run_folder


class RunParams(BaseModel):
    """Parameters of one pipeline run (validated at the flow boundary)."""

    skill: str = Field(description="Skill folder name under seeds/.", pattern=r"^[A-Za-z0-9_-]+$")
    profile: str = Field("default", description="Named overrides from the skill file (e.g. smoke).")
    seed: int | None = Field(None, ge=0, le=2**31 - 1,
                             description="Seed for the teacher's sampling and shots; a fresh one per run when "
                                         "empty (recorded in params.json), so scheduled runs find new inputs.")
    run_id: str | None = Field(None, description="Run folder name; new timestamped id when empty.")
    stage_pool: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                                   description="Work pool for training and evaluation (e.g. gpu-pool): when set, the "
                                               "run hands both stages to the deployment train-evaluate/<skill> on "
                                               "that pool and waits for it; empty: they run in this process.")

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str | None) -> str | None:
        return None if v is None else check_run_id(v)


@dataclass
class Models:
    teacher: str
    student: str
    student_revision: str


def start_run(params: RunParams, skill: str) -> tuple[RunParams, str, Path]:
    """(params with a seed, run id, run folder, created, with params.json). Re-running a run id (after a crash) reuses its seed,
    so the cached teacher answers and the training checkpoints match; a new run draws a fresh seed so it
    finds new inputs."""
    run_id = params.run_id or time.strftime("%Y%m%d-%H%M%S")
    run_dir = run_folder(skill, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    if params.seed is None:
        earlier = run_dir / "params.json"
        seed = json.loads(earlier.read_text()).get("seed") if earlier.is_file() else None
        params = params.model_copy(update={"seed": seed if seed is not None else random.SystemRandom().randrange(2**31)})
    write_json(run_dir / "params.json", params.model_dump())
    return params, run_id, run_dir
