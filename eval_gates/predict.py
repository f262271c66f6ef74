"""Run a model (base, or base + adapter) over inputs and parse its answers."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from core.prompting import format_prompt, parse_output, render_prompt
from core.skills import SkillConfig
from core.tasks import answer_grammar_for, get_task


@dataclass
class Predictions:
    preds: list[str | None]
    raw: list[str]
    prompt_tokens: list[int]
    seconds: list[float]
    # Mean answer-token log-probability of each answer, from the decode itself (routing's definition).
    confidences: list[float | None] | None = None
    finish_reasons: list[str] | None = None
    completion_tokens: list[int] | None = None  # tokens each answer generated (for tokens/s)
    # Every candidate confidence of each answer (eval_gates.routing.SIGNALS -> value); `confidences` is
    # the one the decode was asked for (its `signal`).
    signals: list[dict | None] | None = None

    def latency(self) -> dict:
        if not self.seconds:
            return {"p50_s": None, "p95_s": None}
        q = statistics.quantiles(self.seconds, n=20, method="inclusive") if len(self.seconds) > 1 else self.seconds * 19
        return {"p50_s": round(statistics.median(self.seconds), 4), "p95_s": round(q[18], 4)}

    def mean_prompt_tokens(self) -> float:
        return round(sum(self.prompt_tokens) / len(self.prompt_tokens), 1) if self.prompt_tokens else 0.0


def answer_tokens(cfg: SkillConfig) -> int:
    """Longest generated answer: gates.max_new_tokens, else the task type's default (a label is a few
    tokens; a one-line JSON object or text needs more) raised to hold the longest answer the grammar
    allows (core/answer_cap.py: a label of 12 tokens is never cut at 8)."""
    from core.answer_cap import default_cap

    if cfg.gates.max_new_tokens:
        return cfg.gates.max_new_tokens
    return default_cap(cfg, get_task(cfg).answer_tokens)


# Prompts per generate() call: the batch size the eval gates measure with, and registry.predict uses.
DECODE_BATCH = 16


def answer_grammars(cfg: SkillConfig, n: int, inputs: Sequence[str] | None = None) -> list[dict | None] | None:
    """The grammar spec each of n answers is decoded under (core.tasks.answer_grammar_for), or None
    when decoding is free. A type whose grammar depends on the request (function calls: its tools)
    needs `inputs` (raises ValueError without them)."""
    if not cfg.decoding.constrained:
        return None
    if not get_task(cfg).grammar_needs_input:
        g = answer_grammar_for(cfg, None)
        return None if g is None else [g] * n
    if inputs is None or len(inputs) != n:
        raise ValueError(f"decoding.constrained: {cfg.task} answers are constrained per request, so decode() "
                         "needs the inputs beside the prompts")
    return [answer_grammar_for(cfg, x) for x in inputs]


def decode(model, cfg: SkillConfig, prompts: Sequence[str], max_new_tokens: int | None = None,
           batch_size: int = DECODE_BATCH, progress: Callable[[int], None] | None = None,
           inputs: Sequence[str] | None = None, signal: str = "mean_logprob", own: bool = True, **kw) -> Predictions:
    """The one decoding path for a skill's answers (eval gates, registry.predict, the gateway):
    greedy `model.complete` with confidences from the generation's scores, under the skill's answer
    grammar when `decoding.constrained` (xgrammar; `inputs`, the raw inputs the prompts were made
    from, are needed where the grammar is per request), parsed with the skill's task. `model`: a
    teachers.local.LocalModel (or anything with the same `complete`); `kw` goes to `complete`
    (e.g. `adapter=`). `signal`: which of eval_gates.routing.SIGNALS `confidences` holds (routing.json's
    `signal`; every candidate is in `signals`). `own=False` (only with a grammar-renormalised `signal`) skips
    the model's own log-probabilities of grammar-forced tokens: the served answer needs no forward over them.
    Returns Predictions in the prompts' order."""
    grammars = answer_grammars(cfg, len(prompts), inputs)
    if grammars is not None:
        kw["grammars"] = grammars
    completions = model.complete(list(prompts), max_new_tokens=max_new_tokens or answer_tokens(cfg), temperature=0.0,
                                 batch_size=batch_size, progress=progress, confidence=True, own=own, **kw)

    def chosen(c):
        sig = getattr(c, "signals", None)
        if signal == "mean_logprob" or sig is None:
            return getattr(c, "confidence", None) if signal == "mean_logprob" else None
        return sig.get(signal)

    return Predictions(
        preds=[parse_output(cfg, c.text) for c in completions],
        raw=[c.text for c in completions],
        prompt_tokens=[c.prompt_tokens for c in completions],
        seconds=[c.seconds for c in completions],
        confidences=[chosen(c) for c in completions],
        signals=[getattr(c, "signals", None) for c in completions],
        finish_reasons=[c.finish_reason for c in completions],
        completion_tokens=[c.completion_tokens for c in completions],
    )


def predict(model, cfg: SkillConfig, inputs: Sequence[str], shots: Sequence[tuple[str, str]] = (),
            batch_size: int = DECODE_BATCH, progress: Callable[[int], None] | None = None) -> Predictions:
    """Greedy answers to the skill's prompt (zero-shot unless shots are given), through `decode`. Without
    shots the prompt is `render_prompt`'s: the text training used (the chat template when the skill trains with it)."""
    tok = getattr(model, "tokenizer", None)
    prompts = [format_prompt(cfg, x, shots) if shots else render_prompt(cfg, x, tok) for x in inputs]
    return decode(model, cfg, prompts, batch_size=batch_size, progress=progress, inputs=inputs)
