"""QLoRA mechanics on a tiny random Gemma 3: real bitsandbytes nf4, real trl SFTTrainer."""

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

import pytest

from core.skills import SkillError, load_skill
from tests.trainers.conftest import train_cfg as _cfg


def test_qlora_trains_an_adapter_with_record_metrics_and_plot(skill, tiny_model_path, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainers.qlora import train_adapter

    res = train_adapter(tiny_model_path, skill.config, skill.seeds[:24], skill.seeds[24:28], tmp_path / "run")
    assert res.quantization == "nf4" and res.steps == 3 and res.device == "cpu"
    assert res.best_eval_loss is not None and math.isfinite(res.best_eval_loss)
    adapter = Path(res.adapter_dir)
    assert (adapter / "adapter_model.safetensors").is_file()
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(Path(tiny_model_path).resolve())

    record = json.loads((tmp_path / "run" / "train_record.json").read_text())
    assert record["quantization"] == "nf4" and record["device"] == "cpu" and record["compute_dtype"] == "float32"
    assert set(record["versions"]) >= {"torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"}
    assert all(record["versions"][k] for k in ("torch", "transformers", "peft", "trl", "bitsandbytes"))
    assert record["config"]["lora"]["r"] == 4 and record["base_model"]["revision"]
    assert len(record["dataset"]["train_hash"]) == 64 and record["dataset"]["train_examples"] == 24

    metrics = json.loads((tmp_path / "run" / "train_metrics.json").read_text())
    assert [s["step"] for s in metrics["steps"]] == [1, 2, 3]
    assert [e["step"] for e in metrics["eval"]] == [3]
    assert metrics["tokens_per_s"] > 0 and metrics["train_tokens"] > 24 * 5 and metrics["wall_s"] > 0
    assert metrics["peak_memory"]["rss_peak_mb"] > 100
    assert (tmp_path / "run" / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model = PeftModel.from_pretrained(base, str(adapter))
    assert torch.isfinite(model(torch.tensor([[1, 5, 9]])).logits).all()


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


def test_same_data_and_config_give_the_same_loss_curve(skill, tiny_model_path, tmp_path):
    from trainers.qlora import train_adapter

    cfg = _cfg(skill, max_steps=4, eval_steps=2)
    a = train_adapter(tiny_model_path, cfg, skill.seeds[:16], skill.seeds[40:48], tmp_path / "a")
    b = train_adapter(tiny_model_path, cfg, skill.seeds[:16], skill.seeds[40:48], tmp_path / "b")
    la = [(h["step"], h.get("loss"), h.get("eval_loss")) for h in a.log_history if "loss" in h or "eval_loss" in h]
    lb = [(h["step"], h.get("loss"), h.get("eval_loss")) for h in b.log_history if "loss" in h or "eval_loss" in h]
    assert len(la) == 6 and [x[0] for x in la] == [x[0] for x in lb]
    for (_, l1, e1), (_, l2, e2) in zip(la, lb):
        assert (l1 or e1) == pytest.approx(l2 or e2, rel=1e-5)
    ra = json.loads(Path(a.record_path).read_text())
    rb = json.loads(Path(b.record_path).read_text())
    assert ra["dataset"] == rb["dataset"] and ra["deterministic_algorithms"] is True
    # A different seed changes the curve: the check above can fail.
    c = train_adapter(tiny_model_path, _cfg(skill, max_steps=4, eval_steps=2, seed=7), skill.seeds[:16],
                      skill.seeds[40:48], tmp_path / "c")
    assert [h["loss"] for h in c.log_history if "loss" in h] != pytest.approx([x[1] for x in la if x[1]], rel=1e-5)


def test_falls_back_to_plain_lora_where_bitsandbytes_cannot_quantize(skill, tiny_model_path, tmp_path, monkeypatch,
                                                                     caplog):
    import trainers.qlora as q

    def broken(device, dtype):  # fault injection: what a machine without 4-bit kernels raises
        raise RuntimeError("no 4-bit kernel for this device")

    monkeypatch.setattr(q, "_PROBE", {})
    monkeypatch.setattr(q, "_quantize_tiny_linear", broken)
    with caplog.at_level(logging.WARNING, logger="distill.trainers.qlora"):
        res = q.train_adapter(tiny_model_path, _cfg(skill, max_steps=2), skill.seeds[:8], [], tmp_path / "run")
    assert res.quantization == "none (fallback: RuntimeError: no 4-bit kernel for this device)"
    assert "training plain LoRA instead of QLoRA" in caplog.text
    assert any("plain LoRA" in n for n in res.notes)
    record = json.loads(Path(res.record_path).read_text())
    assert record["quantization"] == res.quantization
    assert (Path(res.adapter_dir) / "adapter_model.safetensors").is_file() and res.steps == 2


def test_probe_reports_that_4bit_works_here():
    import torch

    import trainers.qlora as q

    q._PROBE.pop("cpu", None)
    assert q.probe_4bit("cpu", torch.float32) is None


def test_early_stopping_keeps_the_best_checkpoint(skill, tiny_model_path, tmp_path):
    from trainers.qlora import train_adapter

    # Validation answers that contradict the training answers: the better the adapter fits
    # training, the worse the eval loss gets, so early stopping must fire.
    train = [dataclasses.replace(e, output="billing") for e in skill.seeds[:24]]
    val = [dataclasses.replace(e, output="bug") for e in skill.seeds[24:32]]
    cfg = _cfg(skill, max_steps=30, eval_steps=1, early_stopping_patience=2, learning_rate=1e-2, batch_size=4,
               checkpoint_selection="eval_loss")
    res = train_adapter(tiny_model_path, cfg, train, val, tmp_path / "run")
    evals = [h["eval_loss"] for h in res.log_history if "eval_loss" in h]
    assert res.stopped_early and res.steps < 30
    assert res.best_eval_loss == pytest.approx(min(evals))
    assert evals[-1] > min(evals) and evals[-2] > min(evals)  # patience 2: two evaluations without improvement
    metrics = json.loads(Path(res.metrics_path).read_text())
    assert metrics["best_checkpoint"] == f"checkpoint-{evals.index(min(evals)) + 1}"
    # Only the adapter's checkpoint and the last (to resume) stay behind.
    kept = {p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*")}
    assert kept == {metrics["best_checkpoint"], f"checkpoint-{res.steps}"}


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    return x.keys() == y.keys() and all(bool((x[k] == y[k]).all()) for k in x)


def test_last_checkpoint_selection_trains_the_whole_schedule(skill, tiny_model_path, tmp_path):
    from trainers.qlora import train_adapter

    # The same contradicting validation set that makes eval_loss stop early: with `last` it must not.
    train = [dataclasses.replace(e, output="billing") for e in skill.seeds[:24]]
    val = [dataclasses.replace(e, output="bug") for e in skill.seeds[24:32]]
    cfg = _cfg(skill, max_steps=8, eval_steps=1, early_stopping_patience=2, learning_rate=1e-2, batch_size=4,
               checkpoint_selection="last")
    res = train_adapter(tiny_model_path, cfg, train, val, tmp_path / "run")
    evals = [h["eval_loss"] for h in res.log_history if "eval_loss" in h]
    assert not res.stopped_early and res.steps == 8 and len(evals) == 8
    assert evals[-1] > min(evals)  # selection by loss would have chosen an earlier one
    assert res.best_eval_loss == pytest.approx(evals[-1])
    metrics = json.loads(Path(res.metrics_path).read_text())
    assert metrics["best_checkpoint"] is None and metrics["checkpoint_selection"] == "last"
    assert _same_weights(Path(res.adapter_dir), tmp_path / "run" / "checkpoints" / "checkpoint-8")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-8"]


def test_token_accuracy_selection_keeps_the_most_accurate_checkpoint(skill, tiny_model_path, tmp_path):
    from trainers.qlora import train_adapter

    train = skill.seeds[:32]
    val = skill.seeds[32:44]
    cfg = _cfg(skill, max_steps=6, eval_steps=1, early_stopping_patience=0, learning_rate=5e-3, batch_size=4,
               checkpoint_selection="token_accuracy")
    res = train_adapter(tiny_model_path, cfg, train, val, tmp_path / "run")
    acc = [h["eval_mean_token_accuracy"] for h in res.log_history if "eval_mean_token_accuracy" in h]
    assert len(acc) == 6 and all(0.0 <= a <= 1.0 for a in acc)
    best = acc.index(max(acc)) + 1  # ties keep the earlier checkpoint
    loss = [h["eval_loss"] for h in res.log_history if "eval_loss" in h]
    assert loss.index(min(loss)) + 1 != best  # selection by loss would keep another checkpoint here
    metrics = json.loads(Path(res.metrics_path).read_text())
    assert metrics["best_checkpoint"] == f"checkpoint-{best}" and metrics["best_metric"] == pytest.approx(max(acc))
    assert [e["eval_mean_token_accuracy"] for e in metrics["eval"]] == pytest.approx(acc)
    assert _same_weights(Path(res.adapter_dir), tmp_path / "run" / "checkpoints" / f"checkpoint-{best}")
    kept = {p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*")}
    assert kept == {f"checkpoint-{best}", "checkpoint-6"}


def test_checkpoint_tolerance_keeps_a_later_checkpoint_near_the_lowest_loss(skill, tiny_model_path, tmp_path):
    from trainers.qlora import select_checkpoint, train_adapter

    # The contradicting validation set: loss falls, then rises. A tolerance as wide as the whole
    # curve makes the last checkpoint the adapter; the weights must be that checkpoint's.
    train = [dataclasses.replace(e, output="billing") for e in skill.seeds[:24]]
    val = [dataclasses.replace(e, output="bug") for e in skill.seeds[24:32]]
    cfg = _cfg(skill, max_steps=8, eval_steps=1, early_stopping_patience=0, learning_rate=1e-2, batch_size=4,
               checkpoint_selection="eval_loss", checkpoint_tolerance=10.0)
    res = train_adapter(tiny_model_path, cfg, train, val, tmp_path / "run")
    metrics = json.loads(Path(res.metrics_path).read_text())
    loss = [e["eval_loss"] for e in metrics["eval"]]
    assert loss.index(min(loss)) + 1 != 8  # plain eval_loss would keep an earlier one
    assert select_checkpoint(metrics["eval"], list(range(1, 9)), "eval_loss", 10.0) == 8
    assert metrics["best_checkpoint"] == "checkpoint-8" and res.best_eval_loss == pytest.approx(loss[-1])
    assert _same_weights(Path(res.adapter_dir), tmp_path / "run" / "checkpoints" / "checkpoint-8")
    assert any("checkpoint-8 within 10.0" in n for n in res.notes)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*")] == ["checkpoint-8"]


def test_keep_checkpoints_leaves_every_evaluated_checkpoint(skill, tiny_model_path, tmp_path):
    from trainers.qlora import train_adapter

    cfg = _cfg(skill, max_steps=4, eval_steps=1, early_stopping_patience=0, batch_size=4, keep_checkpoints=True)
    res = train_adapter(tiny_model_path, cfg, skill.seeds[:16], skill.seeds[16:24], tmp_path / "run")
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert kept == [f"checkpoint-{i}" for i in range(1, 5)] and res.steps == 4


def test_chat_template_is_refused_for_a_base_model_without_one(skill, tiny_model_path, tmp_path):
    from trainers.qlora import TrainError, train_adapter

    with pytest.raises(TrainError, match="student.train.prompt_format.*no chat template"):
        train_adapter(tiny_model_path, _cfg(skill, prompt_format="chat_template"), skill.seeds[:8], [], tmp_path / "r")


def test_chat_template_trains_with_the_tokenizers_template(skill, tiny_model_path, tmp_path):
    from transformers import AutoTokenizer

    from trainers.qlora import to_prompt_completion, train_adapter

    model = tmp_path / "chat-model"
    shutil.copytree(tiny_model_path, model)
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = ("{% for m in messages %}<bos>{{ m['role'] }}: {{ m['content'] }}<eos>{% endfor %}"
                         "{% if add_generation_prompt %}<bos>assistant: {% endif %}")
    tok.save_pretrained(model)
    cfg = _cfg(skill, prompt_format="chat_template", max_steps=2)
    rec = to_prompt_completion(cfg, skill.seeds[:1])[0]
    assert rec["completion"] == [{"role": "assistant", "content": skill.seeds[0].output}]
    res = train_adapter(str(model), cfg, skill.seeds[:8], [], tmp_path / "run")
    assert res.steps == 2 and math.isfinite(res.final_train_loss)


def test_stale_checkpoints_from_other_data_are_not_resumed(skill, tiny_model_path, tmp_path):
    from trainers.qlora import train_adapter

    cfg = _cfg(skill, max_steps=2, eval_steps=1)
    train_adapter(tiny_model_path, cfg, skill.seeds[:8], [], tmp_path / "run")
    res = train_adapter(tiny_model_path, cfg, skill.seeds[8:16], [], tmp_path / "run")
    assert res.resumed_from is None and any("starting fresh" in n for n in res.notes)
    assert [h["step"] for h in res.log_history if "loss" in h] == [1, 2]


@pytest.mark.parametrize("cuda,bf16,flash,attn,expected", [
    (False, False, False, "auto", ("cpu", "float32", "eager")),
    (False, False, True, "sdpa", ("cpu", "float32", "sdpa")),
    (True, True, False, "auto", ("cuda", "bfloat16", "sdpa")),
    (True, True, True, "auto", ("cuda", "bfloat16", "flash_attention_2")),
    (True, False, True, "auto", ("cuda", "float32", "sdpa")),  # pre-Ampere: no bf16, flash-attn needs it
    (True, True, True, "eager", ("cuda", "bfloat16", "eager")),
])
def test_device_dtype_and_attention_choice(cuda, bf16, flash, attn, expected):
    from trainers.qlora import choose_device

    plan = choose_device(cuda, bf16, flash, attn)
    assert (plan.device, plan.compute_dtype, plan.attn_implementation) == expected
    assert plan.bf16 == (expected[1] == "bfloat16")


def test_impossible_attention_choices_name_the_key():
    from trainers.qlora import TrainError, choose_device

    with pytest.raises(TrainError, match="student.train.attn_implementation"):
        choose_device(False, False, True, "flash_attention_2")
    with pytest.raises(TrainError, match="flash-attn"):
        choose_device(True, True, False, "flash_attention_2")


def test_save_steps_must_be_a_multiple_of_eval_steps(skill_root):
    import yaml

    path = skill_root / "ticket-triage" / "skill.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["student"]["train"].update(eval_steps=4, save_steps=6)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SkillError, match=r"save_steps \(6\) must be a multiple of student.train.eval_steps \(4\)"):
        load_skill("ticket-triage", root=skill_root)


def test_checkpoint_tolerance_without_eval_loss_selection_is_refused(skill_root):
    import yaml

    path = skill_root / "ticket-triage" / "skill.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["student"]["train"].update(checkpoint_selection="last", checkpoint_tolerance=0.02)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SkillError, match=r"checkpoint_tolerance \(0.02\) applies to checkpoint_selection eval_loss only"):
        load_skill("ticket-triage", root=skill_root)
    raw["student"]["train"].update(checkpoint_tolerance=-0.1, checkpoint_selection="eval_loss")
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SkillError, match="checkpoint_tolerance"):
        load_skill("ticket-triage", root=skill_root)


# --- issue 16, item 16: resume only onto the same base ----------------------------------------------


def _replace_weights_keeping_size_and_mtime(folder: Path) -> None:
    """New weights behind the same path: same shapes, same file size, same mtime (rsync -a, cp -p)."""
    import os

    import torch
    from safetensors.torch import load_file, save_file

    f = folder / "model.safetensors"
    st = f.stat()
    tensors = load_file(str(f))
    torch.manual_seed(123)
    save_file({k: v + torch.randn_like(v) * 0.5 for k, v in tensors.items()}, str(f), metadata={"format": "pt"})
    assert f.stat().st_size == st.st_size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_new_weights_behind_the_same_path_start_fresh(skill, tiny_model_path, tmp_path):
    from trainers.base_model import weights_fingerprint
    from trainers.qlora import train_adapter

    base = tmp_path / "base"
    shutil.copytree(tiny_model_path, base)
    cfg = _cfg(skill, max_steps=2, eval_steps=1)
    train_adapter(str(base), cfg, skill.seeds[:8], [], tmp_path / "run")
    same = train_adapter(str(base), cfg, skill.seeds[:8], [], tmp_path / "run")
    assert same.resumed_from == "checkpoint-2"  # same data, config and base: the finished run is resumed
    before = weights_fingerprint(str(base))
    _replace_weights_keeping_size_and_mtime(base)
    assert weights_fingerprint(str(base)) != before
    res = train_adapter(str(base), cfg, skill.seeds[:8], [], tmp_path / "run")
    assert res.resumed_from is None and any("starting fresh" in n for n in res.notes)
    assert [h["step"] for h in res.log_history if "loss" in h] == [1, 2]


def test_weights_fingerprint_of_a_hub_id_not_cached_names_the_id():
    from trainers.base_model import weights_fingerprint

    assert weights_fingerprint("no-such-org/no-such-model-xyz") == "id:no-such-org/no-such-model-xyz"
