"""Deployments: prefect.yaml and `distill serve` agree with the skill files; one run per skill."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import yaml

from core.skills import list_skills, load_config
from flows.deployments import build_deployments, skill_deployment_specs
from flows.locks import SkillBusy, skill_lock

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_has_one_deployment_per_skill_with_its_cron():
    root = REPO / "seeds"
    all_declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    declared = {d["name"]: d for d in all_declared if d["entrypoint"] != "flows/stages.py:train_evaluate"}
    # Training + evaluation on the GPU pool: one train-evaluate deployment per skill, no schedule.
    gpu = {d["name"]: d for d in all_declared if d["entrypoint"] == "flows/stages.py:train_evaluate"}
    assert set(gpu) == set(list_skills(root))
    assert all(d["work_pool"]["name"] == "gpu-pool" and "schedules" not in d for d in gpu.values())
    for name in list_skills(root):
        assert name in declared, f"prefect.yaml lacks a deployment for skill {name}"
        d = declared[name]
        assert d["entrypoint"] == "flows/pipeline.py:distill_skill"
        assert d["parameters"] == {"params": {"skill": name}}
        assert d["schedules"] == [{"cron": load_config(root / name).schedule.cron}]
        assert d["concurrency_limit"]["limit"] == 1
    assert declared["refresh-all"]["entrypoint"] == "flows/deployments.py:refresh_all"
    assert set(declared) == set(list_skills(root)) | {"refresh-all"}


def test_served_deployments_match_the_skill_files():
    root = REPO / "seeds"
    specs = {s["name"]: s for s in skill_deployment_specs(root)}
    deps = {d.name: d for d in build_deployments(root)}
    assert set(deps) == set(specs) == set(list_skills(root)) | {"refresh-all"}
    tt = deps["ticket-triage"]
    assert tt.parameters == {"params": {"skill": "ticket-triage"}}
    assert tt.concurrency_limit == 1 and tt.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert [s.schedule.cron for s in tt.schedules] == [load_config(root / "ticket-triage").schedule.cron]
    # `distill serve --stage-pool gpu-pool`: the same deployments, handing training to train-evaluate/<skill>.
    handing = {d.name: d for d in build_deployments(root, stage_pool="gpu-pool")}
    assert handing["ticket-triage"].parameters == {"params": {"skill": "ticket-triage", "stage_pool": "gpu-pool"}}
    assert handing["refresh-all"].parameters == {"stage_pool": "gpu-pool"}
    # `distill serve --train-evaluate-only` (the GPU machine): one train-evaluate deployment per skill.
    te = build_deployments(root, train_evaluate_only=True)
    assert {d.name for d in te} == set(list_skills(root)) and {d.flow_name for d in te} == {"train-evaluate"}


def _hold(home: str, started, release) -> None:
    import os

    os.environ["DISTILL_HOME"] = home
    with skill_lock("ticket-triage"):
        started.set()
        release.wait(30)


def test_one_run_per_skill_and_a_dead_holder_frees_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path))
    ctx = mp.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold, args=(str(tmp_path), started, release))
    p.start()
    assert started.wait(60)
    with pytest.raises(SkillBusy, match="another run of skill 'ticket-triage' is in progress"):
        with skill_lock("ticket-triage"):
            pass
    with skill_lock("other-skill"):  # other skills are not blocked
        pass
    p.kill()  # a crashed run: the kernel drops its lock
    p.join(30)
    with skill_lock("ticket-triage"):
        pass


def _bad_schedule_root(tmp_path, cron: str, timezone: str | None = None) -> Path:
    import shutil

    root = tmp_path / "seeds"
    shutil.copytree(REPO / "seeds", root)
    path = root / "json-extraction" / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["schedule"] = {"cron": cron, **({"timezone": timezone} if timezone else {})}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


@pytest.mark.parametrize("cron, timezone, key", [("30 25 * * *", None, "schedule.cron"),
                                                 ("0 3 * * * *  junk", None, "schedule.cron"),
                                                 ("H 3 * * *", None, "schedule.cron"),  # hashed: Prefect refuses
                                                 ("0 3 * * *", "Mars/Olympus", "schedule.timezone")])
def test_a_bad_schedule_fails_distill_skills_and_serve_serves_the_others(tmp_path, monkeypatch, capsys, cron,
                                                                        timezone, key):
    from flows.cli import main

    root = _bad_schedule_root(tmp_path, cron, timezone)
    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(root))
    assert main(["skills"]) == 1
    out = capsys.readouterr()
    assert key in out.out + out.err
    problems: list[str] = []
    deps = {d.name for d in build_deployments(root, problems=problems)}
    assert deps == (set(list_skills(root)) - {"json-extraction"}) | {"refresh-all"}
    assert len(problems) == 1 and "json-extraction" in problems[0] and key in problems[0]


def test_a_schedule_time_zone_reaches_the_deployment(tmp_path):
    root = _bad_schedule_root(tmp_path, "0 3 * * *", "Europe/Oslo")
    (dep,) = [d for d in build_deployments(root) if d.name == "json-extraction"]
    assert [(s.schedule.cron, s.schedule.timezone) for s in dep.schedules] == [("0 3 * * *", "Europe/Oslo")]
