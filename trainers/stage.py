"""The `train` stage of the pipeline as a plain function (the Prefect task is a thin wrapper)."""

from __future__ import annotations

from pathlib import Path

from core.records import Example, hash_examples, write_examples
from core.skills import Skill
from trainers.data import build_training_pool
from trainers.qlora import ProgressFn, train_adapter


def train_skill(skill: Skill, student_path: str, run_dir: Path, accepted: list[Example],
                progress: ProgressFn | None = None) -> dict:
    """Fresh adapter on seeds + the whole accepted pool; writes train.jsonl, val.jsonl and train/.

    Re-running on the same run folder with the same data resumes from the last checkpoint.
    Returns the dict the flow passes on: pool summary, TrainResult (without the step log),
    dataset hash, and where the run record, metrics and loss curve are.
    """
    tc = skill.config.student.train
    pool = build_training_pool(skill.seeds, accepted, human_share=tc.human_share, val_fraction=tc.val_fraction,
                               seed=tc.seed)
    write_examples(run_dir / "train.jsonl", pool.train)
    write_examples(run_dir / "val.jsonl", pool.val)
    result = train_adapter(student_path, skill.config, pool.train, pool.val, run_dir / "train", progress=progress)
    return {"pool": pool.summary(), "result": {k: v for k, v in result.to_dict().items() if k != "log_history"},
            "dataset_hash": hash_examples(pool.train), "record": result.record_path, "metrics": result.metrics_path,
            "loss_curve": result.plot_path}
