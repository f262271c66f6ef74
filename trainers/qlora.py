"""QLoRA SFT of one skill's student: trl SFTTrainer + peft LoRA + bitsandbytes nf4.

No hand-written training loop: the recipe is SFTConfig + LoraConfig + BitsAndBytesConfig.
Loss is on the answer tokens only (prompt-completion records, trl's completion-only loss).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from core.prompting import format_completion, format_prompt
from core.records import Example, write_json
from core.skills import SkillConfig

log = logging.getLogger("distill." + __name__)  # shown by the CLI

ProgressFn = Callable[[int, int, dict], None]  # (step, total steps, latest logs)


@dataclass
class TrainResult:
    adapter_dir: str
    quantization: str  # "nf4" or "none" (plain LoRA where bitsandbytes cannot quantize)
    compute_dtype: str
    steps: int
    train_examples: int
    val_examples: int
    seconds: float
    best_eval_loss: float | None
    final_train_loss: float | None
    log_history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_prompt_completion(cfg: SkillConfig, examples: list[Example]) -> list[dict]:
    return [{"prompt": format_prompt(cfg, e.input), "completion": format_completion(cfg, e.output)} for e in examples]


def _quantization(cfg: SkillConfig, notes: list[str]):
    """nf4 with double quantization; None (plain LoRA) where bitsandbytes cannot run."""
    import torch

    if cfg.student.quantization == "none":
        notes.append("quantization disabled in the skill config: plain LoRA")
        return None, torch.float32
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except Exception as e:  # pragma: no cover - depends on the machine
        notes.append(f"bitsandbytes unavailable ({e}); trained plain LoRA instead of QLoRA")
        return None, torch.float32
    cuda = torch.cuda.is_available()
    # bf16 compute on GPUs that have it; on CPU float32 is faster (bf16 matmuls are slow on these CPUs).
    compute = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    return (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        ),
        compute,
    )


_ANSWER_ONLY = {"on": True}


def _score_only_answer_positions(on: bool = True) -> None:
    """Compute LM-head logits only where the loss is taken, on every device.

    trl's fused LM head already scores only labelled positions on GPUs, but on CPU it
    projects every position through the vocabulary (262k words for Gemma 3), which
    dominates a step. The answer is a few tokens of a ~60-token sequence, so scoring
    only those positions is about 5x faster on CPU with the same loss
    (tests/trainers/test_qlora.py checks the loss; benchmarks/train_step.py the speed).
    """
    import trl.trainer.utils as tu

    _ANSWER_ONLY["on"] = on
    if getattr(tu, "_distill_patched", False):
        return
    original = tu._use_triton
    tu._use_triton = lambda device: True if device.type == "cpu" and _ANSWER_ONLY["on"] else original(device)
    tu._distill_patched = True


class _Progress:
    def __init__(self, fn: ProgressFn | None):
        from transformers import TrainerCallback

        outer = fn

        class CB(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if outer:
                    outer(state.global_step, state.max_steps, dict(logs or {}))

            def on_step_end(self, args, state, control, **kw):
                if outer:
                    outer(state.global_step, state.max_steps, {})

        self.callback = CB()


def last_checkpoint(ckpt_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None


def train_adapter(
    model_path: str,
    cfg: SkillConfig,
    train: list[Example],
    val: list[Example],
    out_dir: Path,
    progress: ProgressFn | None = None,
    eval_steps: int | None = None,
) -> TrainResult:
    """Train a fresh LoRA adapter; resume from the last checkpoint in out_dir if there is one."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from trainers.base_model import load_tokenizer

    tc = cfg.student.train
    seed_everything(tc.seed)
    notes: list[str] = []
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    t0 = time.time()

    bnb, compute_dtype = _quantization(cfg, notes)
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        quantization_config=bnb,
        dtype=compute_dtype,
        device_map={"": 0} if torch.cuda.is_available() else None,
        attn_implementation="eager",  # Gemma 3 recommends eager attention for training
    )
    _score_only_answer_positions(tc.answer_only_logits)

    lora = LoraConfig(
        r=cfg.student.lora.r,
        lora_alpha=cfg.student.lora.alpha,
        lora_dropout=cfg.student.lora.dropout,
        target_modules=cfg.student.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    steps_per_epoch = max(1, -(-len(train) // (tc.batch_size * tc.grad_accum)))
    total = tc.max_steps if tc.max_steps > 0 else int(steps_per_epoch * tc.epochs + 0.999)
    # Evaluate (and checkpoint) about four times a run, at least once an epoch.
    eval_steps = eval_steps or tc.eval_steps or max(1, min(steps_per_epoch, -(-total // 4)))
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=tc.batch_size,
        per_device_eval_batch_size=tc.batch_size,
        gradient_accumulation_steps=tc.grad_accum,
        learning_rate=tc.learning_rate,
        num_train_epochs=tc.epochs,
        max_steps=tc.max_steps,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, total // 10),
        max_length=tc.max_length,
        packing=False,
        # Batches of similar length pad little: most of a CPU step is spent on padding otherwise.
        train_sampling_strategy="group_by_length",
        completion_only_loss=True,  # loss on the answer tokens only
        gradient_checkpointing=False,  # short sequences: recomputation costs more than it saves
        logging_steps=1,
        eval_strategy="steps" if val else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        load_best_model_at_end=bool(val),
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=tc.seed,
        data_seed=tc.seed,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=compute_dtype == torch.bfloat16,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(to_prompt_completion(cfg, train)),
        eval_dataset=Dataset.from_list(to_prompt_completion(cfg, val)) if val else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[_Progress(progress).callback],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # progress goes through `progress`, not print()
    resume = last_checkpoint(ckpt_dir)
    if resume:
        log.info("resuming training from %s", resume)
        notes.append(f"resumed from {Path(resume).name}")
    trainer.train(resume_from_checkpoint=resume)

    adapter_dir = out_dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))  # the base's tokenizer is unchanged: not copied
    history = [h for h in trainer.state.log_history]
    train_losses = [h["loss"] for h in history if "loss" in h]
    result = TrainResult(
        adapter_dir=str(adapter_dir),
        quantization="nf4" if bnb is not None else "none",
        compute_dtype=str(compute_dtype).replace("torch.", ""),
        steps=trainer.state.global_step,
        train_examples=len(train),
        val_examples=len(val),
        seconds=round(time.time() - t0, 1),
        best_eval_loss=trainer.state.best_metric,
        final_train_loss=train_losses[-1] if train_losses else None,
        log_history=history,
        notes=notes,
    )
    write_json(out_dir / "train_result.json", result.to_dict())
    return result
