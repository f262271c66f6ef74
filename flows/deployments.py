"""Scheduled deployments: one per skill (cron and parameters from its skill.yaml) plus
`refresh-all`, which runs every skill in turn.

`distill serve` serves them from one local process; `prefect.yaml` declares the same
deployments for `prefect deploy` onto work pools. A test checks that the two agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

from core.skills import SkillError, list_skills, load_config, seeds_root
from flows.pipeline import RunParams, distill_skill

# One run per skill at a time; a run scheduled while one is going waits its turn instead of
# being dropped (ENQUEUE). The flow also holds a per-skill file lock, for manual runs.
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
REFRESH_ALL_CRON = "0 2 * * *"  # nightly, before the per-skill schedules of the examples


@flow(name="refresh-all", log_prints=True)
def refresh_all(profile: str = "default", stage_pool: str | None = None) -> dict:
    """Run the pipeline for every skill, one after another; one skill failing does not stop the rest."""
    log = get_run_logger()
    results: dict[str, dict] = {}
    for name in list_skills():
        try:
            s = distill_skill(RunParams(skill=name, profile=profile, stage_pool=stage_pool))
            results[name] = {"ok": True, "promoted": s["decision"]["promote"], "run_id": s["run_id"]}
        except Exception as e:  # recorded and reported; the next skill still runs
            log.error("skill %s failed: %s", name, e)
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    failed = [k for k, v in results.items() if not v["ok"]]
    if failed:
        raise RuntimeError(f"refresh-all: {len(failed)} skill(s) failed: {', '.join(failed)} ({results})")
    return results


def skill_deployment_specs(root: Path | None = None, problems: list[str] | None = None) -> list[dict]:
    """What each deployment is: name, cron, time zone, parameters (read from the skill files). A
    skill whose file does not load is left out and named in `problems` (the others are served)."""
    root = root or seeds_root()
    specs = []
    for name in list_skills(root):
        try:
            cfg = load_config(root / name)
        except SkillError as e:
            if problems is None:
                raise
            problems.append(f"skill {name} is not served: {e}")
            continue
        specs.append({"name": name, "flow": "distill-skill", "cron": cfg.schedule.cron,
                      "timezone": cfg.schedule.timezone, "parameters": {"params": {"skill": name}},
                      "drift": drift_trigger_spec(name, cfg.drift)})
    specs.append({"name": "refresh-all", "flow": "refresh-all", "cron": REFRESH_ALL_CRON, "parameters": {}})
    return specs


def drift_trigger_spec(skill: str, drift) -> dict | None:
    """The deployment trigger that runs `skill` on its drift event (gateway/drift.py): the event name, the
    skill's resource id and `within` (drift.cooldown_minutes in seconds: Prefect ignores the skill's further
    events that long after a run started). None when drift.enabled is false. prefect.yaml declares the same."""
    from gateway.drift import EVENT, resource_id

    if not drift.enabled:
        return None
    return {"type": "event", "enabled": True, "expect": [EVENT], "match": {"prefect.resource.id": resource_id(skill)},
            "posture": "Reactive", "threshold": 1, "within": int(round(drift.cooldown_minutes * 60))}


def train_evaluate_specs(root: Path | None = None) -> list[dict]:
    """One train-evaluate deployment per skill (no schedule: a distill-skill run with stage_pool starts it)."""
    return [{"name": name, "flow": "train-evaluate", "cron": None, "parameters": {}}
            for name in list_skills(root or seeds_root())]


def build_deployments(root: Path | None = None, stage_pool: str | None = None,
                      train_evaluate_only: bool = False, problems: list[str] | None = None) -> list:
    """The scheduled deployments; `stage_pool`: their runs hand train + evaluate to train-evaluate/<skill>.
    `train_evaluate_only`: instead, the train-evaluate deployments (served on the training machine)."""
    from flows.stages import train_evaluate

    if train_evaluate_only:
        return [train_evaluate.to_deployment(name=spec["name"], tags=["distill", "train-evaluate", spec["name"]],
                                             description=f"Training and evaluation for {spec['name']} (GPU)")
                for spec in train_evaluate_specs(root)]
    out = []
    for spec in skill_deployment_specs(root, problems):
        fl = distill_skill if spec["flow"] == "distill-skill" else refresh_all
        params = spec["parameters"]
        if stage_pool and spec["flow"] == "distill-skill":
            params = {"params": {**params["params"], "stage_pool": stage_pool}}
        elif stage_pool:
            params = {**params, "stage_pool": stage_pool}
        schedule = {}
        if spec["cron"] and spec.get("timezone"):
            from prefect.schedules import Cron

            schedule = {"schedule": Cron(spec["cron"], timezone=spec["timezone"])}
        elif spec["cron"]:
            schedule = {"cron": spec["cron"]}
        triggers = []
        if spec.get("drift"):
            from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

            t = {k: v for k, v in spec["drift"].items() if k != "type"}
            triggers = [DeploymentEventTrigger.model_validate({**t, "name": f"{spec['name']} drift",
                                                               "parameters": params})]
        out.append(fl.to_deployment(
            name=spec["name"], **schedule, parameters=params, concurrency_limit=ONE_AT_A_TIME, triggers=triggers,
            tags=["distill", spec["name"]], description=f"Distillation pipeline: {spec['name']}"))
    return out


def serve(limit: int | None = 1, teacher_slots: int | None = None, stage_pool: str | None = None,
          train_evaluate_only: bool = False) -> None:
    """Serve every deployment from this process (blocks). `limit`: flow runs at once on this machine.
    `stage_pool` / `train_evaluate_only`: see build_deployments.

    First creates the global `teacher-expansion` concurrency limit when the API has none
    (flows/limits.py; `teacher_slots` given: sets it to that), so scheduled runs share it."""
    from prefect import serve as prefect_serve

    from flows.limits import TEACHER_EXPANSION_LIMIT, ensure_teacher_limit

    if not train_evaluate_only:  # the training machine never runs teacher expansion
        slots = ensure_teacher_limit(teacher_slots)
        print(f"global concurrency limit {TEACHER_EXPANSION_LIMIT!r}: {slots} teacher expansion(s) at once "
              f"across all runs (change: prefect gcl update {TEACHER_EXPANSION_LIMIT} --limit N)", flush=True)
    problems: list[str] = []
    deployments = build_deployments(stage_pool=stage_pool, train_evaluate_only=train_evaluate_only, problems=problems)
    for p in problems:  # one bad skill file must not stop the others from being served
        print(f"warning: {p}", file=sys.stderr, flush=True)
    prefect_serve(*deployments, limit=limit)
