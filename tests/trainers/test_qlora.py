"""QLoRA mechanics on a tiny random Gemma 3: real bitsandbytes nf4, real trl SFTTrainer."""

import math
from pathlib import Path

import pytest

from core.skills import load_skill


@pytest.fixture()
def skill(skill_root):
    return load_skill("ticket-triage", profile="tiny", root=skill_root)


def test_qlora_trains_an_adapter_that_peft_loads(skill, tiny_model_path, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainers.qlora import train_adapter

    res = train_adapter(tiny_model_path, skill.config, skill.seeds[:24], skill.seeds[24:28], tmp_path / "run")
    assert res.quantization == "nf4" and res.steps == 3
    assert res.best_eval_loss is not None and math.isfinite(res.best_eval_loss)
    adapter = Path(res.adapter_dir)
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert (tmp_path / "run" / "train_result.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model = PeftModel.from_pretrained(base, str(adapter))
    out = model(torch.tensor([[1, 5, 9]])).logits
    assert torch.isfinite(out).all()


def test_answer_only_scoring_gives_the_same_loss(tiny_model_path):
    """The CPU patch (LM head only where labels are) must not change the loss."""
    import torch
    import trl.trainer.utils as tu
    from transformers import AutoModelForCausalLM

    from trainers.qlora import _score_only_answer_positions

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    ids = torch.randint(4, 200, (2, 12))
    labels = ids.clone()
    labels[:, :9] = -100
    _score_only_answer_positions()
    tu.add_fused_lm_head(model)
    compact = model(input_ids=ids, labels=labels, fused_lm_head=True).loss
    full = model(input_ids=ids, labels=labels).loss  # the model's own full-logit loss
    assert torch.allclose(compact, full, atol=1e-5)


def test_training_is_reproducible(skill, tiny_model_path, tmp_path):
    from trainers.qlora import train_adapter

    a = train_adapter(tiny_model_path, skill.config, skill.seeds[:16], [], tmp_path / "a")
    b = train_adapter(tiny_model_path, skill.config, skill.seeds[:16], [], tmp_path / "b")
    la = [h["loss"] for h in a.log_history if "loss" in h]
    lb = [h["loss"] for h in b.log_history if "loss" in h]
    assert la and la == pytest.approx(lb, rel=1e-4)
