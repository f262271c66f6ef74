"""GPU work pool hand-off: a run with `stage_pool` set sends training and evaluation to the deployment
train-evaluate/<skill>, served by another process (standing in for the GPU machine's worker) against
a real Prefect server, waits for it, and publishes from what that flow run wrote to the run folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.flows.conftest import REPO, child_env, stop_group, wait_for


def test_training_and_evaluation_run_as_the_train_evaluate_deployment(skill_root, use_api, tmp_path):
    import httpx

    from flows.pipeline import RunParams, distill_skill
    from flows.stages import RESULT_FILE, StageHandOffError, _check_deployment
    from registry import Registry

    api = use_api
    log = tmp_path / "gpu-serve.log"
    # The "GPU machine": same work dir and skills (env), polls the server every 2 s instead of 10.
    gpu = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--train-evaluate-only"], cwd=REPO,
                           env=child_env(tmp_path / "gpu-prefect-home", PREFECT_API_URL=api,
                                         PREFECT_RUNNER_POLL_FREQUENCY="2"),
                           stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for("distill serve --train-evaluate-only registering its deployments",
                 lambda: httpx.get(f"{api}/deployments/name/train-evaluate/ticket-triage", timeout=5).status_code
                 == 200, 120, [(gpu, log)])
        # No such deployment: a clear error naming it and the fixes, before anything is started.
        with pytest.raises(StageHandOffError, match="no deployment 'train-evaluate/nope'.*--train-evaluate-only"):
            _check_deployment("train-evaluate/nope", "gpu-pool")

        s = distill_skill(RunParams(skill="ticket-triage", profile="tiny", run_id="handoff", stage_pool="gpu-pool"))
        run_dir = Path(s["run_dir"])
        assert (run_dir / RESULT_FILE).is_file()
        assert s["training"]["steps"] == 3 and s["evaluation"]["candidate"]["eval"]["n"] == 10
        assert s["decision"]["promote"] is True and Registry().aliases("ticket-triage") == {"production": 1}
        assert Path(s["published"]["path"]).is_dir()

        # The train-evaluate flow run exists on the server, completed, for this run folder, started by the main run.
        runs = httpx.post(f"{api}/flow_runs/filter", json={"flows": {"name": {"any_": ["train-evaluate"]}}},
                          timeout=10).json()
        assert len(runs) == 1, runs
        te = runs[0]
        assert te["state"]["type"] == "COMPLETED" and te["parameters"]["params"]["run_id"] == "handoff"
        assert te["parent_task_run_id"], "run_deployment links it to the main run"
        # Training and evaluation ran there: their task runs belong to the train-evaluate flow run only.
        tasks = httpx.post(f"{api}/task_runs/filter", json={"task_runs": {"name": {"like_": "train"}}},
                           timeout=10).json()
        names = {t["name"].rsplit("-", 1)[0]: t["flow_run_id"] for t in tasks if t["name"].startswith("train-")}
        assert names.get("train") == te["id"], tasks
    finally:
        stop_group(gpu)
