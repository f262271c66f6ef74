"""Nothing is dropped or cut without a trace at max_length (issue 15, item 11): every trained row's
answer tokens decode to exactly the formatted answer plus the end token; an input is cut only when
the whole answer still fits, else the example is dropped as too_long and counted; an all-too-long
pool stops with an error naming student.train.max_length."""

from __future__ import annotations

import pytest

from core.records import Example
from core.skills import load_skill
from trainers.base_model import load_tokenizer
from trainers.qlora import TrainError, fit_to_max_length, sequence_tokens, to_prompt_completion, train_adapter

LONG = " ".join(f"word{i}" for i in range(400))


def _ex(i, inp, out="billing"):
    return Example(id=f"x{i}", skill="ticket-triage", input=inp, output=out, source="human")


def test_fit_cuts_the_input_side_only_and_drops_what_cannot_fit(skill_root, tiny_model_path):
    cfg = load_skill("ticket-triage", profile="tiny", root=skill_root).config
    tok = load_tokenizer(tiny_model_path)
    short = _ex(0, "I was charged twice this month")
    long = _ex(1, "I was charged twice " + LONG)
    fitted = fit_to_max_length(cfg, tok, [short, long], 96)
    assert [e.id for e in fitted.examples] == ["x0", "x1"] and fitted.input_truncated == ["x1"]
    cut = fitted.examples[1]
    assert long.input.startswith(cut.input) and len(cut.input) < len(long.input) and cut.output == "billing"
    assert sequence_tokens(tok, to_prompt_completion(cfg, [cut])[0]) <= 96
    one_more = long.input.split()[: len(cut.input.split()) + 1]
    assert sequence_tokens(tok, to_prompt_completion(cfg, [_ex(1, " ".join(one_more))])[0]) > 96  # as much as fits
    # a prompt header longer than max_length leaves no room for the answer: dropped and counted
    none = fit_to_max_length(cfg, tok, [short, long], 8)
    assert none.examples == [] and [d["id"] for d in none.too_long] == ["x0", "x1"]
    assert none.report()["too_long"] == 2


def test_json_inputs_are_never_cut(tiny_model_path):
    from pathlib import Path

    tool_cfg = load_skill("tool-calling", root=Path(__file__).resolve().parents[2] / "seeds")
    tok = load_tokenizer(tiny_model_path)
    ex = tool_cfg.seeds[0]
    fitted = fit_to_max_length(tool_cfg.config, tok, [ex], 32)
    assert fitted.examples == [] and fitted.too_long[0]["id"] == ex.id


def test_trl_rows_hold_the_whole_answer_and_the_end_token(skill_root, tiny_model_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    cfg = load_skill("ticket-triage", profile="tiny", root=skill_root).config
    tok = load_tokenizer(tiny_model_path)
    examples = [_ex(0, "Refund please"), _ex(1, "App crashes " + LONG, "bug"), _ex(2, "Add dark mode " + LONG,
                                                                                "feature_request")]
    fitted = fit_to_max_length(cfg, tok, examples, 64)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
                         args=SFTConfig(output_dir="/tmp/unused", max_length=64, completion_only_loss=True,
                                        report_to=[], use_cpu=True),
                         train_dataset=Dataset.from_list(to_prompt_completion(cfg, fitted.examples)),
                         processing_class=tok)
    rows = list(trainer.train_dataset)
    assert len(rows) == 3  # nothing dropped silently
    for row, ex in zip(rows, fitted.examples):
        labels = [t for t in row["labels"] if t != -100]
        assert tok.decode(labels) == f" {ex.output}{tok.eos_token}"


def test_an_all_too_long_pool_names_the_key(skill_root, tiny_model_path, tmp_path):
    skill = load_skill("ticket-triage", profile="tiny", root=skill_root)
    cfg = skill.config.model_copy(deep=True)
    cfg.student.train.max_length = 16
    with pytest.raises(TrainError, match=r"student\.train\.max_length=16"):
        train_adapter(tiny_model_path, cfg, skill.seeds[:4], [], tmp_path / "out")


def test_the_filter_drops_exactly_what_the_trainer_cannot_fit(skill_root, tiny_model_path):
    from filters.quality import FitsMaxLength

    cfg = load_skill("ticket-triage", profile="tiny", root=skill_root).config.model_copy(deep=True)
    cfg.student.train.max_length = 64
    step = FitsMaxLength.for_student(cfg)
    tok = load_tokenizer(tiny_model_path)
    cands = [_ex(0, "Refund please"), _ex(1, "App crashes " + LONG), _ex(2, "x", "feature_request " + LONG)]
    out = step(cands)
    assert [e.id for e in out.kept] == ["x0", "x1"]  # x1 fits once the trainer cuts its input
    (rej,) = out.rejected
    assert rej.reason == "too_long" and rej.detail["key"] == "student.train.max_length"
    assert [e.id for e in fit_to_max_length(cfg, tok, cands, 64).examples] == ["x0", "x1"]  # the trainer agrees
