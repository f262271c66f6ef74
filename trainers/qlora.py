"""QLoRA SFT of one skill's student: trl SFTTrainer + peft LoRA + bitsandbytes nf4.

No hand-written training loop: the recipe is SFTConfig + LoraConfig + BitsAndBytesConfig.
Loss is on the answer tokens only (prompt-completion records, trl's completion-only loss).

One call of `train_adapter` writes, under its output folder:

    checkpoints/         Trainer checkpoints (every save_steps) + fingerprint.json; a re-run on
                         the same folder resumes from the last one when data and config match
    adapter/             adapter_model.safetensors + adapter_config.json (the best checkpoint)
    train_record.json    what is needed to reproduce the run: versions, config, data hashes,
                         base model + revision, device, dtype, quantization
    train_metrics.json   loss and eval loss per step, tokens/s, wall time, peak memory
    loss_curve.png       the same curves, drawn
    train_result.json    the TrainResult summary (what the flow passes on)

`adapter_config.json` names the base model as configured (`student.base_model`): a hub id
or an absolute local path as-is, `bundled:gemma-3-270m` for the bundled model. Consumers
resolve any of them with `trainers.base_model.resolve_model(spec)`; `PeftModel.from_pretrained(
base, adapter_dir)` and vLLM `--lora-modules` ignore the field and use the base they are given.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import random
import resource
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

from core.prompting import format_completion, format_prompt
from core.records import Example, hash_examples, write_json
from core.skills import SkillConfig

log = logging.getLogger("distill." + __name__)  # shown by the CLI

ProgressFn = Callable[[int, int, dict], None]  # (step, total steps, latest logs)

LIBRARIES = ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets")


class TrainError(RuntimeError):
    """Training cannot start as configured; the message names the key and the fix."""


@dataclass
class TrainResult:
    adapter_dir: str
    quantization: str  # "nf4", "none (config)" or "none (fallback: <why bitsandbytes cannot quantize here>)"
    compute_dtype: str
    steps: int
    train_examples: int
    val_examples: int
    seconds: float
    best_eval_loss: float | None
    final_train_loss: float | None
    device: str = "cpu"
    attn_implementation: str = "eager"
    resumed_from: str | None = None  # checkpoint name when a killed run was resumed
    stopped_early: bool = False
    tokens_per_s: float | None = None
    record_path: str | None = None
    metrics_path: str | None = None
    plot_path: str | None = None
    log_history: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# --- device, dtype, attention ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePlan:
    device: Literal["cpu", "cuda"]
    compute_dtype: Literal["float32", "bfloat16"]
    attn_implementation: str

    @property
    def bf16(self) -> bool:
        return self.compute_dtype == "bfloat16"


def choose_device(cuda: bool, bf16_supported: bool, flash_attn_installed: bool, attn: str = "auto") -> DevicePlan:
    """Pick device, compute dtype and attention kernel from what the machine has.

    CUDA: bf16 where the GPU has it (Ampere and later), else float32 (Gemma 3 activations
    overflow in float16); flash_attention_2 when installed and bf16, else PyTorch sdpa.
    CPU: float32 (bf16 matmuls measured slower on these CPUs: 13.8 vs 9.8 s/step) and eager
    attention (what Gemma 3 recommends for training; sequences here are short).
    """
    if not cuda:
        if attn == "flash_attention_2":
            raise TrainError("student.train.attn_implementation: flash_attention_2 needs a CUDA GPU; "
                             "use auto, eager or sdpa on CPU")
        return DevicePlan("cpu", "float32", "eager" if attn == "auto" else attn)
    dtype = "bfloat16" if bf16_supported else "float32"
    if attn == "auto":
        attn = "flash_attention_2" if flash_attn_installed and dtype == "bfloat16" else "sdpa"
    elif attn == "flash_attention_2" and not (flash_attn_installed and dtype == "bfloat16"):
        raise TrainError("student.train.attn_implementation: flash_attention_2 needs the flash-attn package and a "
                         "bf16-capable GPU; use auto or sdpa")
    return DevicePlan("cuda", dtype, attn)


def detect_device(attn: str = "auto") -> DevicePlan:
    import torch

    cuda = torch.cuda.is_available()
    return choose_device(cuda, cuda and torch.cuda.is_bf16_supported(),
                         importlib.util.find_spec("flash_attn") is not None, attn)


# --- quantization ----------------------------------------------------------------------------------------------------

_PROBE: dict[str, str | None] = {}  # device -> None (4-bit works) or why not; probed once per process


def _quantize_tiny_linear(device: str, dtype) -> None:
    """Quantize a 64x64 Linear to nf4 (double quant) and run it: what QLoRA needs, in miniature."""
    import bitsandbytes as bnb
    import torch

    lin = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=dtype, quant_type="nf4", compress_statistics=True)
    lin.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4", compress_statistics=True)
    lin = lin.to(device)  # quantizes here
    out = lin(torch.randn(2, 64, dtype=dtype, device=device))
    if not torch.isfinite(out).all():
        raise RuntimeError("4-bit matmul returned non-finite values")


def probe_4bit(device: str, dtype) -> str | None:
    """None when bitsandbytes can quantize to nf4 on `device`, else the reason it cannot."""
    if device not in _PROBE:
        try:
            _quantize_tiny_linear(device, dtype)
            _PROBE[device] = None
        except Exception as e:  # any failure means: no 4-bit here, train plain LoRA
            _PROBE[device] = f"{type(e).__name__}: {e}".strip()[:300]
    return _PROBE[device]


def _quantization(cfg: SkillConfig, plan: DevicePlan, notes: list[str]):
    """(BitsAndBytesConfig or None, the quantization string for the record)."""
    import torch

    if cfg.student.quantization == "none":
        return None, "none (config)"
    dtype = getattr(torch, plan.compute_dtype)
    reason = probe_4bit(plan.device, dtype)
    if reason is not None:
        msg = f"bitsandbytes cannot quantize to 4-bit on {plan.device} ({reason}): training plain LoRA instead of QLoRA"
        log.warning(msg)
        notes.append(msg)
        return None, f"none (fallback: {reason})"
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype), "nf4"


# --- data ------------------------------------------------------------------------------------------------------------


def check_prompt_format(cfg: SkillConfig, tokenizer, model_spec: str) -> None:
    if cfg.student.train.prompt_format == "chat_template" and not getattr(tokenizer, "chat_template", None):
        raise TrainError(f"student.train.prompt_format is 'chat_template' but the base model {model_spec!r} has no "
                         "chat template (a base model, like the bundled Gemma 3 270M); set "
                         "student.train.prompt_format: skill_template, or use an instruction-tuned base model")


def to_prompt_completion(cfg: SkillConfig, examples: list[Example]) -> list[dict]:
    """trl prompt-completion records; conversational ones for `chat_template`.

    With the chat template the user turn is the skill's prompt and the assistant turn the
    bare answer: trl applies the tokenizer's template and still takes the loss on the
    answer only.
    """
    if cfg.student.train.prompt_format == "chat_template":
        return [{"prompt": [{"role": "user", "content": format_prompt(cfg, e.input)}],
                 "completion": [{"role": "assistant", "content": format_completion(cfg, e.output).strip()}]}
                for e in examples]
    return [{"prompt": format_prompt(cfg, e.input), "completion": format_completion(cfg, e.output)} for e in examples]


def sequence_tokens(tokenizer, record: dict) -> int:
    """Tokens of one trl prompt-completion record as trl's SFTTrainer builds it: prompt + completion
    + the EOS token for text records, the chat template over both turns for conversational ones."""
    if isinstance(record["prompt"], list):
        return len(tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=True))
    completion = record["completion"]
    if not completion.endswith(tokenizer.eos_token):
        completion += tokenizer.eos_token
    return len(tokenizer(record["prompt"] + completion)["input_ids"])


@dataclass
class Fitted:
    """Examples made to fit `student.train.max_length`, and what that cost."""

    examples: list[Example]
    input_truncated: list[str] = field(default_factory=list)  # ids whose input was cut (the answer is whole)
    too_long: list[dict] = field(default_factory=list)  # {"id", "tokens", "max_length"}: dropped

    def report(self) -> dict:
        return {"input_truncated": len(self.input_truncated), "too_long": len(self.too_long),
                "too_long_examples": self.too_long[:20]}


def fit_to_max_length(cfg: SkillConfig, tokenizer, examples: list[Example], max_length: int) -> Fitted:
    """Every example as trained holds its whole answer and the end token within `max_length` tokens.

    An example that is too long is cut on the input side only (the first words of a text input are
    kept, as many as fit), when its answer still fits whole; otherwise, and for JSON inputs (a
    function call's tools cannot be cut), it is dropped with reason `too_long`. trl would otherwise
    cut the answer (a broken JSON object without the end token) or drop the row silently."""
    from core.tasks import get_task

    task = get_task(cfg)
    out = Fitted([])
    for e in examples:
        n = sequence_tokens(tokenizer, to_prompt_completion(cfg, [e])[0])
        if n <= max_length:
            out.examples.append(e)
            continue
        words = e.input.split()
        fits = (lambda k: sequence_tokens(tokenizer, to_prompt_completion(cfg, [replace(e, input=" ".join(words[:k]))])[0])
                <= max_length)
        if task.json_input or not words or not fits(1):
            out.too_long.append({"id": e.id, "tokens": n, "max_length": max_length})
            continue
        lo, hi = 1, len(words) - 1  # the most words that fit: fits(lo) holds, fits(len(words)) does not
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        out.examples.append(replace(e, input=" ".join(words[:lo]), meta={**e.meta, "input_truncated_from_tokens": n}))
        out.input_truncated.append(e.id)
    return out


def data_fingerprint(cfg: SkillConfig, train: list[Example], val: list[Example], model_path: str, method: str) -> str:
    """Order-sensitive hash of everything that shapes the run: a checkpoint is resumed only when it matches."""
    h = hashlib.sha256()
    for part in (train, val):
        for e in part:
            h.update(json.dumps([e.id, e.input, e.output, e.source], ensure_ascii=False).encode())
        h.update(b"|")
    h.update(json.dumps(cfg.student.model_dump(), sort_keys=True, default=str).encode())
    h.update(json.dumps([cfg.name, cfg.instruction, cfg.input_name, cfg.output_name, cfg.labels]).encode())
    if cfg.student.train.distillation != "hard":  # the teacher's distributions are training targets too
        from trainers.soft_labels import soft_target

        h.update(json.dumps([soft_target(cfg, e) for e in train + val]).encode())
    # The base's weights, not only its path: new weights behind the same path start fresh.
    from trainers.base_model import weights_fingerprint

    h.update(f"{model_path}|{weights_fingerprint(model_path)}|{method}".encode())
    return h.hexdigest()


# --- speed patch (kept: 4.3x faster CPU steps) -----------------------------------------------------------------------

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


def _keep_4bit_base_intact(model) -> None:
    """Turn off bitsandbytes' CPU inference repacking for the frozen 4-bit base during training.

    On CPUs with AVX512-BF16, a Linear4bit in eval mode repacks its weights and flattens the
    double-quantized statistics; the next checkpoint save packs them back, not bit for bit.
    So each in-training evaluation nudged the frozen base, and a run resumed from a checkpoint
    (which re-quantizes the base from the original weights) drifted from an uninterrupted one.
    """
    import bitsandbytes as bnb

    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False


# --- reproducibility -------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Python, numpy and torch (CPU and every GPU) through transformers' set_seed."""
    from transformers import set_seed

    random.seed(seed)
    set_seed(seed)


@contextmanager
def _deterministic(plan: DevicePlan, full: bool):
    """Deterministic kernels where cheap (always on CPU; on CUDA when asked), restored afterwards
    because the flag is process-wide and evaluation runs in the same process."""
    import torch

    on = plan.device == "cpu" or full
    prev = torch.are_deterministic_algorithms_enabled()
    if on and plan.device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(on, warn_only=True)
    try:
        yield on
    finally:
        torch.use_deterministic_algorithms(prev)


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# --- callbacks, checkpoints, outputs ---------------------------------------------------------------------------------


def _callbacks(fn: ProgressFn | None):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if fn:
                fn(state.global_step, state.max_steps, dict(logs or {}))

        def on_step_end(self, args, state, control, **kw):
            if fn:
                fn(state.global_step, state.max_steps, {})

    return Progress()


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete checkpoint: a kill during a save leaves a folder without
    trainer_state.json (written last), which must not be resumed from."""
    if not ckpt_dir.is_dir():
        return None
    done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
            and p.name.split("-")[-1].isdigit()]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def _resume_point(ckpt_dir: Path, fingerprint: str, notes: list[str]) -> str | None:
    """The last checkpoint of an interrupted run of the same data and config, else None
    (stale checkpoints from different data or config are removed: a fresh adapter each run)."""
    marker = ckpt_dir / "fingerprint.json"
    previous = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
    if ckpt_dir.is_dir() and previous != fingerprint:
        if last_checkpoint(ckpt_dir):
            msg = "checkpoints in the output folder come from other data or config: starting fresh"
            log.warning(msg)
            notes.append(msg)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(marker, {"fingerprint": fingerprint})
    resume = last_checkpoint(ckpt_dir)
    if resume:
        log.info("resuming training from %s", resume)
        notes.append(f"resumed from {Path(resume).name}")
    return resume


def base_model_id(spec: str) -> str:
    """What adapter_config.json names as base (what AutoPeftModelForCausalLM and serving stacks load):
    a bundled model's upstream Hub id (google/gemma-3-270m), a Hub id as is, local paths made absolute.
    skill.json keeps the spec itself, which names the exact weights trained on."""
    from trainers.base_model import BUNDLED_UPSTREAM

    if spec in BUNDLED_UPSTREAM:
        return BUNDLED_UPSTREAM[spec]
    path = Path(spec).expanduser()
    return str(path.resolve()) if not spec.startswith("bundled:") and path.exists() else spec


def peak_memory(device: str) -> dict:
    """Peak RSS of this process (Linux ru_maxrss is in KiB) and, on GPU, peak allocated CUDA memory."""
    out = {"rss_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)}
    if device == "cuda":
        import torch

        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / (1 << 20), 1)
    return out


def training_metrics(history: list[dict]) -> tuple[list[dict], list[dict]]:
    steps = [{k: h[k] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm") if k in h}
             for h in history if "loss" in h]
    evals = [{k: h[k] for k in ("step", "epoch", "eval_loss", "eval_mean_token_accuracy") if k in h}
             for h in history if "eval_loss" in h]
    return steps, evals


def plot_loss_curve(steps: list[dict], evals: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], label="train loss", lw=1.2)
    if evals:
        ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], "o-", label="eval loss", lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# --- the recipe ------------------------------------------------------------------------------------------------------


def train_adapter(
    model_path: str,
    cfg: SkillConfig,
    train: list[Example],
    val: list[Example],
    out_dir: Path,
    progress: ProgressFn | None = None,
    eval_steps: int | None = None,
    base_model: str | None = None,
    method: Literal["lora", "full"] = "lora",
) -> TrainResult:
    """Train a fresh LoRA adapter on `train`, validating on `val`; resume from the last
    checkpoint in out_dir when it was left by an interrupted run of the same data and config.

    model_path: the resolved base model folder (or hub id); base_model: the id written into
    adapter_config.json (default: cfg.student.base_model). method "full" (full fine-tuning,
    no adapter, no quantization) exists for benchmarks/train_throughput.py only.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, EarlyStoppingCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from trainers.base_model import load_tokenizer, model_revision

    if not train:
        raise TrainError(f"skill {cfg.name}: the training pool is empty (no seeds or accepted examples)")
    tc = cfg.student.train
    t0 = time.time()
    notes: list[str] = []
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    plan = detect_device(tc.attn_implementation)
    tokenizer = load_tokenizer(model_path)
    check_prompt_format(cfg, tokenizer, base_model or cfg.student.base_model)
    if method == "full":
        bnb, quantization = None, "none (full fine-tuning)"
    else:
        bnb, quantization = _quantization(cfg, plan, notes)
    fitted_train = fit_to_max_length(cfg, tokenizer, train, tc.max_length)
    fitted_val = fit_to_max_length(cfg, tokenizer, val, tc.max_length)
    if not fitted_train.examples:
        shortest = min(x["tokens"] for x in fitted_train.too_long)
        raise TrainError(f"skill {cfg.name}: every one of the {len(train)} training examples is longer than "
                         f"student.train.max_length={tc.max_length} tokens with its whole answer (the shortest needs "
                         f"{shortest}); raise student.train.max_length")
    for what, f in (("training", fitted_train), ("validation", fitted_val)):
        if f.too_long or f.input_truncated:
            notes.append(f"{what}: {len(f.too_long)} example(s) dropped as too_long and {len(f.input_truncated)} "
                         f"cut on the input side to fit student.train.max_length={tc.max_length}")
    train, val = fitted_train.examples, fitted_val.examples
    soft = _soft_label_setup(cfg, tokenizer, train, val)
    if soft is not None:
        notes.append(f"distillation {tc.distillation}: {soft['soft_examples']} of {len(train)} training examples "
                     f"train on the teacher's label distribution (T={tc.distill_temperature}"
                     + (f", alpha={tc.distill_alpha})" if tc.distillation == "mixed" else ")"))
    fingerprint = data_fingerprint(cfg, train, val, model_path, method)
    resume = _resume_point(ckpt_dir, fingerprint, notes)
    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    seed_everything(tc.seed)
    with _deterministic(plan, tc.full_determinism) as deterministic:
        # Quantized weights are stored in 4 bits whatever `dtype`; the rest follows the compute dtype.
        # Full fine-tuning keeps float32 master weights (bf16 autocast on GPU).
        load_dtype = torch.float32 if method == "full" else getattr(torch, plan.compute_dtype)
        model = AutoModelForCausalLM.from_pretrained(
            model_path, quantization_config=bnb, dtype=load_dtype,
            device_map={"": 0} if plan.device == "cuda" else None, attn_implementation=plan.attn_implementation,
        )
        _score_only_answer_positions(tc.answer_only_logits)
        if bnb is not None:
            _keep_4bit_base_intact(model)
        lora = None if method == "full" else LoraConfig(
            r=cfg.student.lora.r, lora_alpha=cfg.student.lora.alpha, lora_dropout=cfg.student.lora.dropout,
            target_modules=cfg.student.lora.target_modules, task_type="CAUSAL_LM",
        )
        steps_per_epoch = max(1, -(-len(train) // (tc.batch_size * tc.grad_accum)))
        total = tc.max_steps if tc.max_steps > 0 else int(steps_per_epoch * tc.epochs + 0.999)
        # Evaluate about four times a run, at least once an epoch; checkpoint at every evaluation by default.
        eval_steps = eval_steps or tc.eval_steps or max(1, min(steps_per_epoch, -(-total // 4)))
        save_steps = tc.save_steps or eval_steps
        select = tc.checkpoint_selection
        if val and save_steps % eval_steps:
            raise TrainError(f"student.train.save_steps ({save_steps}) must be a multiple of the evaluation interval "
                             f"({eval_steps}) so the best checkpoint can be kept")
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
            packing=tc.packing,
            # Batches of similar length pad little: most of a CPU step is spent on padding otherwise.
            # Like the random sampler it visits every example once per epoch (the human floor holds per epoch).
            train_sampling_strategy="group_by_length" if not tc.packing else "random",
            completion_only_loss=True,  # loss on the answer tokens only
            gradient_checkpointing=False,  # short sequences: recomputation costs more than it saves
            logging_steps=1,
            include_num_input_tokens_seen="non_padding",  # for tokens/s
            eval_strategy="steps" if val else "no",
            eval_steps=eval_steps,
            save_strategy="steps",
            save_steps=save_steps,
            # The last (to resume) and the best (kept by load_best_model_at_end); a loss tolerance or
            # keep_checkpoints needs every evaluated one until the end (then pruned to the adapter's and the last).
            save_total_limit=None if tc.keep_checkpoints or tc.checkpoint_tolerance > 0 else 2,
            load_best_model_at_end=bool(val) and select != "last",
            metric_for_best_model=SELECTION_METRIC[select],
            greater_is_better=select == "token_accuracy",
            restore_callback_states_from_checkpoint=True,  # early-stopping patience survives a resume
            seed=tc.seed,
            data_seed=tc.seed,
            report_to=[],
            use_cpu=plan.device == "cpu",
            bf16=plan.bf16,
            dataloader_num_workers=0,
            disable_tqdm=True,
        )
        callbacks = [_callbacks(progress)]
        if val and tc.early_stopping_patience > 0 and select != "last":
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=tc.early_stopping_patience))
        trainer_cls, extra = SFTTrainer, {}
        train_records, val_records = to_prompt_completion(cfg, train), to_prompt_completion(cfg, val)
        if soft is not None:  # soft-label distillation: trl's trainer with a compute_loss of our own
            from trainers.soft_labels import SOFT_KEY, make_trainer_class, soft_target

            trainer_cls = make_trainer_class()
            extra = {"label_ids": soft["label_ids"], "mode": tc.distillation, "alpha": tc.distill_alpha,
                     "temperature": tc.distill_temperature}
            for recs, exs in ((train_records, train), (val_records, val)):
                for r, e in zip(recs, exs):
                    r[SOFT_KEY] = soft_target(cfg, e)
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(train_records),
            eval_dataset=Dataset.from_list(val_records) if val else None,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=callbacks,
            **extra,
        )
        trainer.remove_callback(PrinterCallback)  # progress goes through `progress`, not print()
        # trl casts LoRA weights to bf16 on a quantized base; keep them float32 (peft's own default,
        # AMP still computes in bf16 on GPU): peft reloads adapters as float32 on resume, so a resumed
        # run only continues the uninterrupted one exactly with float32 weights (and optimizer state);
        # on CPU bf16 matmuls are also slower.
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        tokens_before = _tokens_seen(resume)
        output = trainer.train(resume_from_checkpoint=resume)

    state = trainer.state
    history = list(state.log_history)
    steps, evals = training_metrics(history)
    chosen = state.best_model_checkpoint if val and select != "last" else None  # what load_best_model_at_end loaded
    if chosen and select == "eval_loss" and tc.checkpoint_tolerance > 0:
        done = [int(p.name.split("-")[-1]) for p in ckpt_dir.glob("checkpoint-*")
                if (p / "adapter_model.safetensors").is_file() and p.name.split("-")[-1].isdigit()]
        step = select_checkpoint(evals, done, "eval_loss", tc.checkpoint_tolerance)
        if step is not None and Path(chosen).name != f"checkpoint-{step}":
            notes.append(f"checkpoint-{step} within {tc.checkpoint_tolerance} of the lowest validation loss "
                         f"({Path(chosen).name}): the later one is the adapter")
            chosen = str(ckpt_dir / f"checkpoint-{step}")
            _load_adapter_weights(trainer.model, Path(chosen))
    if not tc.keep_checkpoints:
        _prune_checkpoints(ckpt_dir, keep={chosen, last_checkpoint(ckpt_dir)})
    adapter_dir = out_dir / ("model" if method == "full" else "adapter")
    base_id = base_model_id(base_model or cfg.student.base_model)
    if method == "lora":
        trainer.model.peft_config["default"].base_model_name_or_path = base_id
    trainer.model.save_pretrained(str(adapter_dir))  # the base's tokenizer is unchanged: not copied
    runtime = output.metrics.get("train_runtime") or (time.time() - t0)
    tokens = int(state.num_input_tokens_seen or 0) - tokens_before
    tokens_per_s = round(tokens / runtime, 1) if runtime and tokens > 0 else None
    stopped_early = state.global_step < state.max_steps
    if stopped_early:
        notes.append(f"early stopping after step {state.global_step} of {state.max_steps}")
    wall = round(time.time() - t0, 1)
    metrics = {
        "steps": steps, "eval": evals, "global_step": state.global_step, "max_steps": state.max_steps,
        "checkpoint_selection": select, "best_metric": state.best_metric,
        "best_eval_loss": _best_eval_loss(evals, chosen),
        "best_checkpoint": Path(chosen).name if chosen else None,
        "stopped_early": stopped_early,
        "resumed_from": Path(resume).name if resume else None,
        "train_tokens": tokens, "tokens_per_s": tokens_per_s, "train_runtime_s": round(runtime, 2), "wall_s": wall,
        "samples_per_s": output.metrics.get("train_samples_per_second"),
        "peak_memory": peak_memory(plan.device),
        "soft_loss": ([round(x, 5) for x in trainer.soft_log[-3:]] if hasattr(trainer, "soft_log") else None),
    }
    record = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "skill": cfg.name, "method": method,
        "base_model": {"id": base_id, "path": model_path, "revision": model_revision(model_path)},
        "device": plan.device, "device_name": _device_name(plan.device), "compute_dtype": plan.compute_dtype,
        "attn_implementation": plan.attn_implementation, "quantization": quantization,
        "deterministic_algorithms": deterministic, "seed": tc.seed,
        "config": cfg.student.model_dump(),
        "dataset": {"train_hash": hash_examples(train), "val_hash": hash_examples(val), "fingerprint": fingerprint,
                    "train_examples": len(train), "val_examples": len(val),
                    "max_length": {"train": fitted_train.report(), "val": fitted_val.report()}},
        "versions": library_versions(),
        "resumed_from": metrics["resumed_from"], "notes": notes,
    }
    record_path, metrics_path, plot_path = out_dir / "train_record.json", out_dir / "train_metrics.json", out_dir / "loss_curve.png"
    write_json(record_path, record)
    write_json(metrics_path, metrics)
    plot_loss_curve(steps, evals, plot_path, f"{cfg.name}: {method}, {quantization.split(' (')[0]}, {plan.device}")
    result = TrainResult(
        adapter_dir=str(adapter_dir), quantization=quantization, compute_dtype=plan.compute_dtype,
        steps=state.global_step, train_examples=len(train), val_examples=len(val), seconds=wall,
        best_eval_loss=metrics["best_eval_loss"], final_train_loss=steps[-1]["loss"] if steps else None,
        device=plan.device, attn_implementation=plan.attn_implementation, resumed_from=metrics["resumed_from"],
        stopped_early=stopped_early, tokens_per_s=tokens_per_s, record_path=str(record_path),
        metrics_path=str(metrics_path), plot_path=str(plot_path), log_history=history, notes=notes,
    )
    write_json(out_dir / "train_result.json", result.to_dict())
    return result


# student.train.checkpoint_selection -> the Trainer's metric_for_best_model (trl logs eval_mean_token_accuracy).
SELECTION_METRIC = {"eval_loss": "eval_loss", "token_accuracy": "eval_mean_token_accuracy", "last": "eval_loss"}


def select_checkpoint(evals: list[dict], steps: list[int], selection: str, tolerance: float = 0.0) -> int | None:
    """The optimizer step whose checkpoint becomes the adapter under a selection rule.

    evals: the validation records ({"step", "eval_loss", "eval_mean_token_accuracy"}, as in
    train_metrics.json); steps: the steps that have a checkpoint. selection "last": the last
    of steps; "eval_loss": the lowest validation loss (ties: the earlier), or with tolerance > 0
    the latest checkpoint whose loss is within tolerance (nats per answer token) of the lowest,
    so that noise on a small validation split does not undo later training; "token_accuracy":
    the highest validation token accuracy (ties: the earlier). None when steps is empty or, for
    a rule that reads the validation split, when no evaluated step has a checkpoint.
    """
    if not steps:
        return None
    if selection == "last":
        return max(steps)
    have = set(steps)
    ev = [e for e in evals if e.get("step") in have]
    if selection == "token_accuracy":
        ev = [e for e in ev if "eval_mean_token_accuracy" in e]
        return min(ev, key=lambda e: (-e["eval_mean_token_accuracy"], e["step"]))["step"] if ev else None
    ev = [e for e in ev if "eval_loss" in e]
    if not ev:
        return None
    best = min(ev, key=lambda e: (e["eval_loss"], e["step"]))
    if tolerance <= 0:
        return best["step"]
    return max(e["step"] for e in ev if e["eval_loss"] <= best["eval_loss"] + tolerance)


def _best_eval_loss(evals: list[dict], chosen: str | None) -> float | None:
    """The validation loss of the checkpoint that became the adapter (the last evaluation's when
    none was chosen: checkpoint_selection last); None without a validation split."""
    if not evals:
        return None
    step = int(Path(chosen).name.split("-")[-1]) if chosen else None
    at = [e for e in evals if e.get("step") == step]
    return at[-1]["eval_loss"] if at else evals[-1]["eval_loss"]


def _load_adapter_weights(model, checkpoint: Path) -> None:
    """Load a checkpoint's LoRA weights into the trained PeftModel (what load_best_model_at_end does)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter_model.safetensors")))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing:
        raise TrainError(f"{checkpoint}: adapter weights missing for {len(missing)} LoRA tensors (e.g. {missing[0]})")


def _soft_label_setup(cfg: SkillConfig, tokenizer, train: list[Example], val: list[Example]) -> dict | None:
    """None for hard labels; else {"label_ids", "soft_examples"} after checking that soft labels
    apply (a single-label type, no packing, distinct first label tokens). Raises TrainError."""
    from core.tasks import get_task
    from trainers.soft_labels import label_token_ids, soft_target

    tc = cfg.student.train
    if tc.distillation == "hard":
        return None
    if not get_task(cfg).one_label:
        raise TrainError(f"student.train.distillation: {tc.distillation!r} needs a single-label task (the teacher's "
                         f"label distribution); skill {cfg.name} is {cfg.task}: set it to hard")
    if tc.packing:
        raise TrainError("student.train.distillation soft/mixed reads each example's answer position: set "
                         "student.train.packing: false")
    try:
        ids = label_token_ids(cfg, tokenizer)
    except ValueError as e:
        raise TrainError(str(e)) from None
    n = sum(any(soft_target(cfg, e)) for e in train)
    return {"label_ids": ids, "soft_examples": n}


def _prune_checkpoints(ckpt_dir: Path, keep: set) -> None:
    """Remove the checkpoint folders of ckpt_dir not named in keep (paths as the Trainer gives them)."""
    names = {Path(k).name for k in keep if k}
    for p in ckpt_dir.glob("checkpoint-*"):
        if p.is_dir() and p.name not in names:
            shutil.rmtree(p, ignore_errors=True)


def _tokens_seen(checkpoint: str | None) -> int:
    if not checkpoint:
        return 0
    path = Path(checkpoint) / "trainer_state.json"
    return int(json.loads(path.read_text()).get("num_input_tokens_seen") or 0) if path.is_file() else 0


def _device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()
