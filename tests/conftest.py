"""Shared fixtures: an isolated work dir, a tiny random Gemma 3 built in the session
(no downloads), a skill folder pointing at it, and one Prefect test harness."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.tiny_models import build_tiny_model

REPO = Path(__file__).resolve().parents[1]
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="distill-tests-"))

# Set before prefect / transformers are imported by any test module.
os.environ["DISTILL_HOME"] = str(_SESSION_HOME / "work")
os.environ["PREFECT_HOME"] = str(_SESSION_HOME / "prefect")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# float32 inference whatever the CPU: tests that compare two decode paths (greedy and generate(), gate and gateway,
# with and without the prefix cache) must not meet bf16's shape-dependent rounding on a machine that has bf16.
os.environ["DISTILL_INFERENCE_DTYPE"] = "float32"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    import json

    corpus = []
    for name in ("seeds.jsonl", "eval.jsonl"):
        for line in (REPO / "seeds" / "ticket-triage" / name).read_text().splitlines():
            obj = json.loads(line)
            corpus.append(f"Ticket: {obj['input']}\nTeam: {obj['output']}\n")
    return str(build_tiny_model(_SESSION_HOME / "tiny-gemma", corpus))


TINY_PROFILE = """
profiles:
  tiny:
    expansion: {target_examples: 6}
    teacher: {few_shot: 4, style_shots: 3, batch_size: 8, max_new_tokens: 12, calibration_shot_sets: 1}
    audit: {floor: null, folds: 3}
    student: {quantization: nf4, lora: {r: 4, alpha: 8}, train: {max_steps: 3, batch_size: 8, eval_steps: 3}}
    gates: {eval_limit: 10, replay: {sample: 6, min_agreement: 0.0, max_invalid_rate: 1.0},
            floor: {accuracy: 0.0}, margin: 1.0}
  tiny_readmit:
    expansion: {target_examples: 6}
    teacher: {few_shot: 4, style_shots: 3, batch_size: 8, max_new_tokens: 12, calibration_shot_sets: 1}
    audit: {floor: null, folds: 3}
    student: {quantization: nf4, lora: {r: 4, alpha: 8},
              train: {max_steps: 3, batch_size: 8, eval_steps: 3, readmit_held: true}}
    gates: {eval_limit: 10, min_paired_items: 1, replay: {sample: 6, min_agreement: 0.0, max_invalid_rate: 1.0},
            floor: {accuracy: 0.0}, margin: 1.0}
  tiny_strict:
    expansion: {target_examples: 4}
    teacher: {few_shot: 4, style_shots: 3, batch_size: 8, max_new_tokens: 12, calibration_shot_sets: 1}
    audit: {floor: null, folds: 3}
    student: {quantization: nf4, lora: {r: 4, alpha: 8}, train: {max_steps: 2, batch_size: 8, eval_steps: 2}}
    gates: {eval_limit: 10, replay: {sample: 6}, floor: {accuracy: 1.01}}
"""


@pytest.fixture()
def skill_root(tmp_path, tiny_model_path, monkeypatch) -> Path:
    """A copy of seeds/ whose ticket-triage skill uses the tiny model as teacher and student."""
    import yaml

    root = tmp_path / "seeds"
    shutil.copytree(REPO / "seeds", root)
    path = root / "ticket-triage" / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["teacher"]["model"] = tiny_model_path
    cfg["student"]["base_model"] = tiny_model_path
    cfg.update(yaml.safe_load(TINY_PROFILE))
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(root))
    work = tmp_path / "work"
    monkeypatch.setenv("DISTILL_HOME", str(work))
    monkeypatch.delenv("DISTILL_REGISTRY", raising=False)
    return root


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
