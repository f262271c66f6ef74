"""Soft-label distillation of a classification student inside trl's SFTTrainer.

Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural
Network"): a teacher-labelled example trains the student's label distribution towards the
teacher's (`meta.label_probs`, calibrated label log-likelihoods) with T^2 * KL(p_T || q_T), both
softened by temperature T, instead of (`soft`) or beside (`mixed`) cross-entropy on its one label.

The student's label distribution is read where its answer starts: the logits of each label's first
answer token at the last prompt position (a verbalizer; labels must start with distinct tokens),
taken from the backbone's last hidden state times the LM head's rows for those K tokens, so no
full-vocabulary projection is added. Human seeds, and examples without label_probs, keep their
hard label. Everything else is trl's: its collator, its completion-only loss, its loop.
"""

from __future__ import annotations

from typing import Any, Sequence

from core.prompting import format_completion
from core.records import Example

SOFT_KEY = "soft_targets"


def label_token_ids(cfg, tokenizer) -> list[int]:
    """The first answer token of each of cfg.labels as trained (`format_completion`), in label order.
    Raises ValueError naming the labels when two share their first token (their distribution
    cannot be read at one position)."""
    first: dict[int, str] = {}
    out = []
    chat = cfg.student.train.prompt_format == "chat_template"  # the assistant turn holds the bare label
    for lab in cfg.labels:
        text = format_completion(cfg, lab)
        ids = tokenizer(text.strip() if chat else text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"label {lab!r} tokenizes to nothing")
        if ids[0] in first:
            raise ValueError(f"student.train.distillation: labels {first[ids[0]]!r} and {lab!r} start with the same "
                             f"token ({tokenizer.convert_ids_to_tokens(ids[0])!r}), so the student's label distribution "
                             "cannot be read at one position; rename one or set student.train.distillation: hard")
        first[ids[0]] = lab
        out.append(ids[0])
    return out


def soft_target(cfg, example: Example) -> list[float]:
    """The teacher's distribution over cfg.labels for one example (sums to 1), or all zeros where
    the example trains on its hard label (human, no label_probs, distillation hard)."""
    zeros = [0.0] * len(cfg.labels)
    if cfg.student.train.distillation == "hard" or example.source == "human":
        return zeros
    probs = (example.meta or {}).get("label_probs")
    if not isinstance(probs, dict):
        return zeros
    vec = []
    for lab in cfg.labels:
        v = probs.get(lab, 0.0)
        vec.append(float(v) if isinstance(v, (int, float)) and v == v and 0.0 <= v < float("inf") else 0.0)
    total = sum(vec)
    return [v / total for v in vec] if total > 0 else zeros


def kd_loss(student_logits, teacher_probs, temperature: float):
    """Per-row T^2 * KL(p_T || q_T): student logits (B, K), teacher probabilities (B, K) (rows sum
    to 1), both softened by T (the teacher's as p^(1/T) renormalised). Returns a (B,) tensor."""
    import torch

    t = float(temperature)
    log_p = torch.log(teacher_probs.float().clamp(min=1e-8)) / t
    log_p = log_p - torch.logsumexp(log_p, dim=-1, keepdim=True)
    log_q = torch.log_softmax(student_logits.float() / t, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1) * t * t


class SoftLabelCollator:
    """Wraps trl's collator: takes each record's soft_targets off before it, then adds them (B, K)
    and `answer_pos` (B,), the index of each row's first answer token. In `soft` mode the answer
    tokens of soft rows are masked out of the hard loss (-100)."""

    def __init__(self, inner, mode: str):
        self.inner, self.mode = inner, mode

    def __call__(self, examples: Sequence[dict[str, Any]]):
        import torch

        soft = [list(ex.get(SOFT_KEY) or []) for ex in examples]
        batch = self.inner([{k: v for k, v in ex.items() if k != SOFT_KEY} for ex in examples])
        labels = batch["labels"]
        answer = labels != -100
        batch["answer_pos"] = answer.float().argmax(dim=-1)  # first answer token (the prompt is never empty)
        k = max((len(s) for s in soft), default=0)
        t = torch.tensor([s if len(s) == k else [0.0] * k for s in soft], dtype=torch.float32)
        if self.mode == "soft" and k:
            has = t.sum(-1) > 0
            labels[has] = -100
        batch[SOFT_KEY] = t
        return batch


def make_trainer_class():
    """An SFTTrainer subclass whose compute_loss adds the soft loss (import of trl deferred)."""
    from trl import SFTTrainer

    class SoftLabelSFTTrainer(SFTTrainer):
        """trl's SFTTrainer plus the soft loss on rows with soft targets. `label_ids`: each label's
        first token; `mode`: soft | mixed; `alpha`: the soft weight in mixed; `temperature`: T."""

        def __init__(self, *args, label_ids: list[int], mode: str, alpha: float, temperature: float, **kw):
            super().__init__(*args, **kw)
            self.label_ids, self.mode, self.alpha, self.temperature = label_ids, mode, alpha, temperature
            self.data_collator = SoftLabelCollator(self.data_collator, mode)
            self.soft_log: list[float] = []

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if SOFT_KEY not in self._signature_columns:
                self._signature_columns = list(self._signature_columns) + [SOFT_KEY]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            soft, pos = inputs.pop(SOFT_KEY, None), inputs.pop("answer_pos", None)
            if soft is None or pos is None or not bool((soft.sum(-1) > 0).any()):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            base = getattr(base, "module", base)
            captured: dict[str, Any] = {}
            hook = base.base_model.register_forward_hook(
                lambda mod, args, out: captured.__setitem__("h", out.last_hidden_state))
            try:
                got = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                           num_items_in_batch=num_items_in_batch)
            finally:
                hook.remove()
            loss, outputs = got if return_outputs else (got, None)
            has = soft.sum(-1) > 0
            rows = torch.nonzero(has).flatten()
            h = captured["h"][rows, pos[rows] - 1]  # the last prompt position predicts the first answer token
            head = base.get_output_embeddings()
            z = h.float() @ head.weight[self.label_ids].float().T
            cap = getattr(base.config.get_text_config(), "final_logit_softcapping", None)
            if cap:
                z = torch.tanh(z / cap) * cap
            kd = kd_loss(z, soft[rows].to(z.device), self.temperature).mean()
            if num_items_in_batch is not None:  # trl leaves the accumulation average to the loss
                kd = kd / max(1, getattr(self, "current_gradient_accumulation_steps", 1))
            self.soft_log.append(float(kd.detach()))
            loss = (1 - self.alpha) * loss + self.alpha * kd if self.mode == "mixed" else loss + kd
            return (loss, outputs) if return_outputs else loss

    return SoftLabelSFTTrainer
