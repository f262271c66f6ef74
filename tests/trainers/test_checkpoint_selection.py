"""The checkpoint selection rules as a pure function of the validation records (no model)."""

from __future__ import annotations

from trainers.qlora import select_checkpoint

# The shape of the fresh-clone demo that published 0.53: the lowest loss early, a near tie at the end.
EVALS = [{"step": 16, "eval_loss": 0.66, "eval_mean_token_accuracy": 0.81},
         {"step": 34, "eval_loss": 0.398, "eval_mean_token_accuracy": 0.88},
         {"step": 50, "eval_loss": 0.45, "eval_mean_token_accuracy": 0.88},
         {"step": 66, "eval_loss": 0.406, "eval_mean_token_accuracy": 0.87}]
STEPS = [16, 34, 50, 66]


def test_eval_loss_takes_the_lowest_and_tolerance_the_latest_near_it():
    assert select_checkpoint(EVALS, STEPS, "eval_loss") == 34
    assert select_checkpoint(EVALS, STEPS, "eval_loss", tolerance=0.005) == 34  # 0.008 apart: not within
    assert select_checkpoint(EVALS, STEPS, "eval_loss", tolerance=0.01) == 66
    assert select_checkpoint(EVALS, STEPS, "eval_loss", tolerance=0.06) == 66  # 50 is within too, 66 is later
    assert select_checkpoint(EVALS, STEPS, "eval_loss", tolerance=1.0) == 66


def test_ties_keep_the_earlier_checkpoint_like_the_trainer():
    tied = [{"step": 1, "eval_loss": 0.5, "eval_mean_token_accuracy": 0.9},
            {"step": 2, "eval_loss": 0.5, "eval_mean_token_accuracy": 0.9}]
    assert select_checkpoint(tied, [1, 2], "eval_loss") == 1
    assert select_checkpoint(tied, [1, 2], "token_accuracy") == 1
    assert select_checkpoint(tied, [1, 2], "eval_loss", tolerance=0.001) == 2  # a tie is within any tolerance


def test_token_accuracy_and_last():
    assert select_checkpoint(EVALS, STEPS, "token_accuracy") == 34
    assert select_checkpoint(EVALS, STEPS, "last") == 66
    assert select_checkpoint([], [3, 9], "last") == 9


def test_only_steps_with_a_checkpoint_can_be_chosen():
    # save_steps a multiple of eval_steps: the lowest loss may have no checkpoint to load.
    assert select_checkpoint(EVALS, [50, 66], "eval_loss") == 66
    assert select_checkpoint(EVALS, [50], "eval_loss", tolerance=0.01) == 50
    assert select_checkpoint(EVALS, [], "eval_loss") is None
    assert select_checkpoint(EVALS, [7], "eval_loss") is None
    assert select_checkpoint([{"step": 7, "eval_loss": 0.3}], [7], "token_accuracy") is None
