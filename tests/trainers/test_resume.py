"""A real interruption: SIGKILL a training process once a checkpoint exists, re-run it on the
same output folder, and check it resumed and ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainers.resume_setup import EVERY, STEPS, config_and_data

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("train_child.py")


def _child(skill_root, model, out, pause):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(CHILD), str(skill_root), model, str(out), str(pause)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_killed_run_resumes_from_its_last_checkpoint(skill_root, tiny_model_path, tmp_path):
    import torch
    from safetensors.torch import load_file

    from trainers.qlora import train_adapter

    out = tmp_path / "killed"
    kill_after = 2 * EVERY + 1  # step 5 is running: checkpoint-4 is complete, checkpoint-6 not started
    proc = _child(skill_root, tiny_model_path, out, pause=1.0)
    deadline = time.time() + 240
    progress = out / "progress.txt"
    while time.time() < deadline and proc.poll() is None:
        if progress.is_file() and progress.read_text().strip() and int(progress.read_text()) >= kill_after:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the child ended before it could be killed: {proc.communicate()[1][-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "adapter").exists()
    assert (out / "checkpoints" / f"checkpoint-{2 * EVERY}").is_dir()

    rerun = _child(skill_root, tiny_model_path, out, pause=0.0)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stderr[-3000:]
    resumed = json.loads(stdout.strip().splitlines()[-1])
    assert resumed["resumed_from"] == f"checkpoint-{2 * EVERY}"
    assert resumed["steps_run_here"][0] == 2 * EVERY + 1 and resumed["steps"] == STEPS  # continued, not restarted
    logged = [h["step"] for h in resumed["log_history"] if "loss" in h]
    assert logged == list(range(1, STEPS + 1))

    cfg, train, val = config_and_data(skill_root)
    whole = train_adapter(tiny_model_path, cfg, train, val, tmp_path / "whole")
    assert whole.resumed_from is None
    assert resumed["best_eval_loss"] == pytest.approx(whole.best_eval_loss, rel=1e-5)
    evals_r = [h["eval_loss"] for h in resumed["log_history"] if "eval_loss" in h]
    evals_w = [h["eval_loss"] for h in whole.log_history if "eval_loss" in h]
    assert evals_r == pytest.approx(evals_w, rel=1e-5)
    a = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(Path(whole.adapter_dir) / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
