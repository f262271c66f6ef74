"""Training and evaluation on another work pool (GPU machines): the `train-evaluate` flow and the hand-off.

`distill_skill` with `RunParams.stage_pool` set does not train here: it writes the replay
hold-out into the run folder, starts the deployment `train-evaluate/<skill>` with
`run_deployment(..., timeout=None)`, waits, and reads what that flow run wrote back into the
same run folder (`train_evaluate.json`). Both sides must see the same work dir
(DISTILL_HOME: runs, pool, registry): a shared filesystem, or the same machine with a
`process` pool. The stage code is the same tasks (`train`, `evaluate`) as the in-process path.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field, field_validator

from core.records import Example, read_examples, write_examples, write_json
from core.skills import Skill, load_skill
from core.workdir import check_run_id, registry_root, run_dir as run_folder

FLOW_NAME = "train-evaluate"
GPU_POOL = "gpu-pool"  # the pool prefect.yaml puts train-evaluate on; docs/scale-out.md
REPLAY_FILE = "replay_holdout.jsonl"  # the main run's replay hold-out, for the remote evaluation
RESULT_FILE = "train_evaluate.json"  # what the remote flow hands back: {"training": ..., "evaluation": ...}


class StageHandOffError(RuntimeError):
    """The train-evaluate hand-off could not start, or its flow run did not complete."""


class StageParams(BaseModel):
    """Parameters of one train-evaluate run (validated at the flow boundary)."""

    skill: str = Field(description="Skill folder name under seeds/.", pattern=r"^[A-Za-z0-9_-]+$")
    profile: str = Field("default", description="Named overrides from the skill file (the main run's).")
    run_id: str = Field(description="Run folder (under the shared work dir) that the main run filled.")
    champion_version: int | None = Field(None, ge=1, description="Production version the main run compares "
                                                                 "against (read once, by the main run).")

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str) -> str:
        return check_run_id(v)


def deployment_name(skill: str) -> str:
    return f"{FLOW_NAME}/{skill}"


@flow(name=FLOW_NAME, flow_run_name="{params.skill}-{params.run_id}")
def train_evaluate(params: StageParams) -> dict:
    """Train and evaluate one run whose data stages ran elsewhere; writes train_evaluate.json in its run folder."""
    from flows.pipeline import evaluate, train
    from trainers.base_model import resolve_model

    skill = load_skill(params.skill, params.profile)
    run_dir = run_folder(skill.name, params.run_id)
    missing = [f for f in ("accepted.jsonl", REPLAY_FILE) if not (run_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: no {', '.join(missing)}; train-evaluate reads the run folder that the "
                                f"main run wrote, so both must share the work dir (DISTILL_HOME on a shared "
                                f"filesystem, or the same machine)")
    replay = read_examples(run_dir / REPLAY_FILE)
    student = resolve_model(skill.config.student.base_model)  # resolved on this (GPU) machine
    champion_dir = _champion_dir(skill.name, params.champion_version)
    get_run_logger().info("train-evaluate %s run %s (champion: %s)", skill.name, params.run_id,
                          params.champion_version or "none")
    training = train(skill, student, run_dir)
    evaluation = evaluate(skill, student, training["result"]["adapter_dir"], champion_dir, replay, run_dir=run_dir)
    write_json(run_dir / RESULT_FILE, {"training": training, "evaluation": evaluation})
    return {"run_dir": str(run_dir), "promote": evaluation["decision"]["promote"]}


def _champion_dir(skill: str, version: int | None) -> str | None:
    if version is None:
        return None
    from registry import Registry

    return str(Registry(registry_root()).resolve(skill, version=version))


def hand_off_train_evaluate(skill: Skill, profile: str, run_id: str, run_dir: Path, pool: str,
                            champion_version: int | None, replay_items: list[Example]) -> tuple[dict, dict]:
    """Run train + evaluate as the deployment train-evaluate/<skill> and wait; returns (training, evaluation)
    as the in-process tasks would. Raises StageHandOffError when the flow run does not complete."""
    from prefect.deployments import run_deployment

    name = deployment_name(skill.name)
    _check_deployment(name, pool)
    write_examples(run_dir / REPLAY_FILE, replay_items)
    (run_dir / RESULT_FILE).unlink(missing_ok=True)  # never read a result left by an earlier attempt
    logger = get_run_logger()
    logger.info("handing training and evaluation of %s run %s to %s (pool %s); waiting", skill.name, run_id, name,
                pool)
    params = StageParams(skill=skill.name, profile=profile, run_id=run_id, champion_version=champion_version)
    fr = run_deployment(name, parameters={"params": params.model_dump()}, timeout=None)
    state = fr.state
    if state is None or not state.is_completed():
        kind = state.type.value if state is not None else "unknown"
        raise StageHandOffError(f"{name}: flow run {fr.name} ({fr.id}) ended {kind}"
                                f"{': ' + state.message if state is not None and state.message else ''}; this run "
                                f"stops before publishing (see that flow run's logs in the Prefect UI)")
    result = run_dir / RESULT_FILE
    if not result.is_file():
        raise StageHandOffError(f"{name}: flow run {fr.name} completed but {result} does not exist: the worker of "
                                f"pool {pool} does not share this work dir (DISTILL_HOME)")
    out = json.loads(result.read_text())
    logger.info("%s completed (flow run %s)", name, fr.name)
    return out["training"], out["evaluation"]


def _check_deployment(name: str, pool: str) -> None:
    """The deployment exists; if it is bound to a work pool, that is `pool` (served deployments have none)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            dep = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise StageHandOffError(
                f"stage_pool={pool!r}: no deployment {name!r} on the Prefect API at hand. Deploy it "
                f"(`prefect --no-prompt deploy --name {name}` from prefect.yaml, with a worker: "
                f"`prefect worker start --pool {pool}`), or serve it on the training machine "
                f"(`distill serve --train-evaluate-only`) with PREFECT_API_URL set; or leave stage_pool empty "
                f"to train in this process") from None
    if dep.work_pool_name and dep.work_pool_name != pool:
        raise StageHandOffError(f"stage_pool={pool!r}, but deployment {name!r} runs on work pool "
                                f"{dep.work_pool_name!r}: set stage_pool to {dep.work_pool_name!r} or redeploy it "
                                f"on {pool!r}")
