"""The training the resume test interrupts: shared by the test and its child process."""

from pathlib import Path

from core.skills import load_skill

STEPS, EVERY = 8, 2  # checkpoint and evaluate every 2 of 8 steps


def config_and_data(root: Path):
    skill = load_skill("ticket-triage", profile="tiny", root=root)
    cfg = skill.config.model_copy(deep=True)
    tc = cfg.student.train
    tc.max_steps, tc.eval_steps, tc.batch_size, tc.early_stopping_patience = STEPS, EVERY, 4, 0
    return cfg, skill.seeds[:32], skill.seeds[32:40]
