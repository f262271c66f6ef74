"""Soft-label distillation (student.train.distillation): the loss, the targets, and a real trl run on
the tiny model in which soft targets move the student's label distribution where hard labels do not."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tests.trainers.conftest import train_cfg as _cfg


def test_kd_loss_is_t_squared_kl_and_zero_when_the_student_agrees():
    import torch

    from trainers.soft_labels import kd_loss

    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert kd_loss(torch.log(p), p, 1.0).abs().max() < 1e-6
    assert kd_loss(torch.log(p), p, 3.0).abs().max() < 1e-6  # softening both sides the same way keeps them equal
    z = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    for t in (1.0, 2.0):
        pt = p ** (1 / t) / (p ** (1 / t)).sum(-1, keepdim=True)
        q = torch.softmax(z / t, -1)
        want = t * t * (pt * (pt.log() - q.log())).sum(-1)
        assert torch.allclose(kd_loss(z, p, t), want, atol=1e-5)
    assert (kd_loss(z, p, 2.0) > 0).all()


def test_soft_targets_only_for_teacher_examples_with_label_probs(skill):
    from trainers.soft_labels import soft_target

    cfg = _cfg(skill, distillation="soft")
    labs = cfg.labels
    teacher = dataclasses.replace(skill.seeds[0], source="teacher", output=labs[0],
                                  meta={"label_probs": {labs[0]: 0.6, labs[1]: 0.2, "not-a-label": 0.5}})
    vec = soft_target(cfg, teacher)
    assert vec[0] == pytest.approx(0.75) and vec[1] == pytest.approx(0.25) and sum(vec) == pytest.approx(1.0)
    assert not any(soft_target(cfg, dataclasses.replace(teacher, source="human")))  # seeds keep their label
    assert not any(soft_target(cfg, dataclasses.replace(teacher, meta={})))
    assert not any(soft_target(cfg, dataclasses.replace(teacher, meta={"label_probs": {labs[0]: float("nan")}})))
    assert not any(soft_target(_cfg(skill, distillation="hard"), teacher))


def test_labels_sharing_a_first_token_are_refused_by_name(skill, tiny_model_path):
    from trainers.base_model import load_tokenizer
    from trainers.soft_labels import label_token_ids

    tok = load_tokenizer(tiny_model_path)
    cfg = skill.config.model_copy(deep=True)
    assert len(set(label_token_ids(cfg, tok))) == len(cfg.labels)
    cfg.labels = ["billing", "billing_dispute"]
    with pytest.raises(ValueError, match="labels 'billing' and 'billing_dispute' start with the same token"):
        label_token_ids(cfg, tok)


def _label_probs(model_dir, cfg, examples):
    """The trained student's mean probability of each label at the answer position."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from core.prompting import format_prompt
    from trainers.base_model import load_tokenizer
    from trainers.soft_labels import label_token_ids

    tok = load_tokenizer(model_dir["base"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir["base"]), model_dir["adapter"]).eval()
    ids = label_token_ids(cfg, tok)
    out = torch.zeros(len(ids))
    with torch.inference_mode():
        for e in examples:
            logits = model(**tok(format_prompt(cfg, e.input), return_tensors="pt")).logits[0, -1]
            out += torch.softmax(logits[ids].float(), -1)
    return (out / len(examples)).tolist()


def test_soft_targets_move_the_students_distribution_where_hard_labels_do_not(skill, tiny_model_path, tmp_path):
    from trainers.qlora import train_adapter

    labs = skill.config.labels
    # Teacher examples whose hard label is labs[0] but whose teacher distribution puts 0.9 on labs[1].
    teach = [dataclasses.replace(e, id=f"t{i}", source="teacher", output=labs[0],
                                 meta={"label_probs": {labs[0]: 0.05, labs[1]: 0.9, labs[2]: 0.05}})
             for i, e in enumerate(skill.seeds[:24])]
    runs = {}
    for mode in ("hard", "soft", "mixed"):
        cfg = _cfg(skill, distillation=mode, max_steps=24, batch_size=8, eval_steps=24, learning_rate=3e-3,
                   distill_temperature=1.0)
        res = train_adapter(tiny_model_path, cfg, teach, [], tmp_path / mode)
        runs[mode] = _label_probs({"base": tiny_model_path, "adapter": res.adapter_dir}, cfg, teach[:8])
        if mode != "hard":
            assert any("distillation" in n for n in res.notes)
            assert res.log_history and all(math.isfinite(h.get("loss", 0.0)) for h in res.log_history)
    hard, soft, mixed = runs["hard"], runs["soft"], runs["mixed"]
    assert hard[0] > hard[1]  # hard labels teach labs[0]
    assert soft[1] > soft[0] and soft[1] > 0.4  # the teacher's distribution teaches labs[1]
    assert soft[1] > mixed[1] > hard[1]  # mixed lies between


def test_soft_labels_are_refused_where_they_cannot_apply(skill, tiny_model_path, tmp_path):
    from trainers.qlora import TrainError, train_adapter

    with pytest.raises(TrainError, match="packing"):
        train_adapter(tiny_model_path, _cfg(skill, distillation="soft", packing=True), skill.seeds[:8], [],
                      tmp_path / "p")
