"""Local transformers backend: batched generation on whatever device is present.

The one decoding path of the project: the teacher, the student in the eval gates, the
registry's consumer API (`registry.predict`) and the gateway all complete prompts with
`LocalModel.complete`. A student is one base with one or more unmerged LoRA adapters
(PEFT multi-adapter, `set_adapter` per batch), so the answers the gates measured are the
answers that are served. With `confidence=True`, each greedy completion also carries the
mean log-probability of its answer tokens, read from the generation's own scores (no
second pass; see `LocalModel.complete`).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

TOP_P = 0.95  # nucleus sampling for every sampled completion (teacher inputs, self-consistency samples)


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (newline or EOS) or "length"
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # wall time of the batch it was in, divided by the batch size
    # Mean natural-log probability of the answer's tokens (the text before the stop newline, as
    # the tokenizer splits it alone: eval_gates.routing's definition); None when not asked, for
    # an empty answer, or when sampling.
    confidence: float | None = None
    # How the confidence was read: "scores" (the decode's own scores) or "forced" (a teacher-forced
    # second pass, only where the generated tokens differ from the answer text's own tokens).
    confidence_source: str | None = None
    token_logprobs: list[float] | None = field(default=None, repr=False)  # per answer token
    # Every candidate routing confidence (eval_gates.routing.SIGNALS -> value); `confidence` is mean_logprob.
    signals: dict[str, float | None] | None = field(default=None, repr=False)


def teacher_forced_logprobs(model, tokenizer, prompts: Sequence[str], answers: Sequence[str], batch_size: int = 16,
                            device=None, per_token: bool = False) -> list:
    """Mean log-probability per answer token given its prompt (None for an empty answer): one
    teacher-forced forward pass of prompt + answer. The prompt is tokenized as the tokenizer does
    it (with its special tokens), the answer alone without special tokens; the stop newline is not
    part of the answer. Returns one float (natural log, <= 0) or None per (prompt, answer); with
    `per_token`, the list of the answer tokens' log-probabilities instead of their mean."""
    import torch

    device = device or next(model.parameters()).device
    pairs = []
    for prompt, answer in zip(prompts, answers):
        p_ids = tokenizer(prompt)["input_ids"]
        a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] if answer else []
        pairs.append((p_ids, a_ids))
    out: list[float | None] = [None] * len(pairs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for b in range(0, len(order), batch_size):
        idx = [i for i in order[b : b + batch_size] if pairs[i][1]]
        if not idx:
            continue
        seqs = [pairs[i][0] + pairs[i][1] for i in idx]
        width = max(len(s) for s in seqs)
        keep = max(len(pairs[i][1]) for i in idx) + 1
        # Left padding puts every answer at the end, so the LM head runs on the last `keep` positions
        # only (not the whole prompt: with a 262k vocabulary that was most of the time); explicit
        # position ids make the padded rows compute exactly what an unpadded row would.
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, width - len(s) :] = torch.tensor(s)
            mask[row, width - len(s) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                           logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        for row, i in enumerate(idx):
            a = pairs[i][1]
            # Answer token t is predicted at kept position keep - len(a) - 1 + t.
            pos = torch.arange(keep - len(a) - 1, keep - 1, device=logp.device)
            lps = logp[row, pos, torch.tensor(a, device=logp.device)]
            out[i] = [float(x) for x in lps] if per_token else float(lps.mean())
    return out


def answer_signals(lps: Sequence[float] | None, grammar_lps: Sequence[float] | None,
                   margins: Sequence[float | None] | None = None) -> dict[str, float | None]:
    """The candidate routing confidences of one answer (eval_gates.routing.SIGNALS) from its tokens'
    log-probabilities: the model's own (`lps`) and renormalised over what the grammar allowed
    (`grammar_lps`; equal to `lps` when decoding is free), and `margins` (per token, the greedy choice's
    log-probability margin over the runner-up; None for a forced token): `min_margin` is the least over the
    answer's choices (None when every token was forced or margins were not read: the generate() path).
    None where a list is empty or missing."""
    out: dict[str, float | None] = {}
    for prefix, xs in (("", lps), ("grammar_", grammar_lps)):
        out[f"mean_{prefix}logprob"] = sum(xs) / len(xs) if xs else None
        out[f"min_{prefix}logprob"] = min(xs) if xs else None
    ms = [m for m in (margins or []) if m is not None]
    out["min_margin"] = min(ms) if ms else None
    return out


def _answer_len(tok, ids: list[int]) -> int:
    """How many generated tokens make up the answer: those before the EOS or the token that writes the
    stop newline."""
    m = 0
    for t in range(len(ids)):
        if ids[t] == tok.eos_token_id or "\n" in tok.decode(ids[: t + 1], skip_special_tokens=True):
            break
        m = t + 1
    return m


class _ChosenLogprob:
    """A logits processor that records, per decoding step, the log-probability of the greedy
    choice (the argmax) of each row, from the float32 logits generate() decodes with. It changes
    nothing: greedy decoding picks the same argmax. steps: list of (batch,) float tensors.

    Under a grammar, `capture` (a processor placed before the grammar's mask) keeps the model's
    own log-probabilities, and this one (after the mask) records the model's log-probability of
    the token the masked argmax chose: the confidence stays the model's, not the grammar's."""

    def __init__(self):
        self.steps: list = []
        self.masked: list = []  # per step: the choice's log-probability renormalised over the allowed tokens
        self.chosen: list = []
        self._lp = None
        self.capture = _Capture(self)

    def __call__(self, input_ids, scores):
        import torch

        best = scores.argmax(dim=-1)
        s = scores.float()
        # log_softmax(s)[best] = s[best] - logsumexp(s): one reduction, no second [batch, vocab] tensor per step.
        masked = (s.gather(-1, best[:, None])[:, 0] - torch.logsumexp(s, dim=-1)).detach().cpu()
        if self._lp is not None:  # under a grammar: the unmasked distribution came from `capture`
            self.steps.append(self._lp.gather(-1, best[:, None])[:, 0].detach().cpu())
            self._lp = None
        else:
            self.steps.append(masked)
        self.masked.append(masked)
        self.chosen.append(best.detach().cpu())
        return scores

    def answer_steps(self, tok, ids: list[int], n: int) -> int:
        """How many generated tokens make up the answer: those before the EOS or the token that writes the
        stop newline (the answer text itself may tokenize differently)."""
        m = 0
        for t in range(min(n, len(self.steps))):
            if ids[t] == tok.eos_token_id or "\n" in tok.decode(ids[: t + 1], skip_special_tokens=True):
                break
            m = t + 1
        return m


class NucleusWarper:
    """Temperature, then nucleus (top-p) sampling's mask (Holtzman et al. 2020, "The Curious Case of
    Neural Text Degeneration"), as transformers' TemperatureLogitsWarper + TopPLogitsWarper compute
    it, without sorting the whole vocabulary each step.

    scores: (batch, vocab) logits; returns them divided by `temperature`, with every token outside
    the nucleus at -inf. transformers sorts all 262k of Gemma's tokens per row per step, which took
    42% of a sampled batch's time on a 2-core CPU (benchmarks/teacher_backends.py); here the nucleus
    is read off the `k` most probable tokens (topk), and a row whose top k hold less than `top_p` of
    the mass falls back to the full sort, so the kept set is the same (token ties and cumulative-sum
    rounding at the boundary aside). Applied where transformers applies its warpers: after every
    other processor (a grammar's mask included)."""

    def __init__(self, temperature: float, top_p: float, k: int = 1024):
        import math

        if not (math.isfinite(temperature) and temperature > 0) or not 0 < top_p <= 1 or not (
                isinstance(k, int) and k >= 1):
            raise ValueError(f"NucleusWarper: temperature {temperature} must be finite and > 0, top_p {top_p} in "
                             f"(0, 1], k {k} an int >= 1")
        self.temperature, self.top_p, self.k = temperature, top_p, k

    def __call__(self, input_ids, scores):
        import torch

        scores = scores / self.temperature
        if self.top_p >= 1.0:
            return scores
        k = min(self.k, scores.shape[-1])
        vals, idx = scores.topk(k, dim=-1)  # descending
        # the mass in float32 whatever the scores' dtype: bf16 cannot tell 0.95 from 0.949
        probs = (vals.float() - torch.logsumexp(scores.float(), dim=-1, keepdim=True)).exp()
        before = probs.cumsum(dim=-1) - probs  # mass strictly above each token
        # transformers removes a token when the mass at or below it is <= 1 - top_p, i.e. keeps it
        # while the mass above it is < top_p (so the most probable token, with none above, always stays).
        keep = before < self.top_p
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, idx, torch.where(keep, vals, torch.full_like(vals, float("-inf"))))
        short = (probs.sum(dim=-1) < self.top_p).nonzero().flatten()
        if len(short):  # the nucleus reaches past the top k: the full sort for those rows
            rows = scores[short]
            s, si = torch.sort(rows, descending=False)
            drop = s.softmax(dim=-1).cumsum(dim=-1) <= (1 - self.top_p)
            drop[..., -1:] = False
            out[short] = rows.masked_fill(drop.scatter(1, si, drop), float("-inf"))
        return out


class _Capture:
    """Keeps the step's unmasked log-probabilities for `_ChosenLogprob` (changes nothing)."""

    def __init__(self, owner: _ChosenLogprob):
        self.owner = owner

    def __call__(self, input_ids, scores):
        import torch

        self.owner._lp = torch.log_softmax(scores.float(), dim=-1)
        return scores


def _sampler(temperature: float, top_p: float, seed: int, device):
    """A `greedy_batch` sample callable: float32 logits [rows, vocab] (forbidden tokens at -inf) -> one token id
    per row, drawn from the temperature-scaled nucleus (NucleusWarper) with its own seeded torch.Generator, so a
    batch draws the same tokens for the same seed whatever else the process samples."""
    import torch

    warp = NucleusWarper(temperature, top_p)
    gen = torch.Generator(device=device).manual_seed(seed)

    def sample(logits):
        # shifted so the top logit is 0 (softmax and the nucleus do not change): a tiny temperature then sends the
        # rest to -inf instead of overflowing every logit to inf (NaN probabilities)
        probs = torch.softmax(warp(None, logits - logits.amax(dim=-1, keepdim=True)), dim=-1)
        return torch.multinomial(probs, 1, generator=gen)[:, 0]

    return sample


def _dense(t):
    """`t` with row-major strides (a copy only where its strides are not: a slice's stale stride on a size-1 dim
    counts as contiguous to torch but sends matmul down a path that copies the other operand)."""
    import torch

    if not isinstance(t, torch.Tensor):
        return t
    want, acc = [], 1
    for n in reversed(t.shape):
        want.append(acc)
        acc *= n
    return t if tuple(reversed(want)) == t.stride() else t.clone(memory_format=torch.contiguous_format)


def pick_inference_dtype(device: str, cuda_bf16: bool, cpu_fast_bf16: bool) -> str:
    """"bfloat16" where the hardware has it, else "float32"; never "float16": Gemma 3's activations
    overflow float16's range (inf/NaN logits), as the trainer's choose_device also knows.

    device: "cuda" or "cpu"; cuda_bf16: torch.cuda.is_bf16_supported(); cpu_fast_bf16: the CPU has
    AVX512-BF16/AMX (bf16 prefill measured 3.4x, decoding 1.4x faster than float32 there)."""
    if device == "cuda":
        return "bfloat16" if cuda_bf16 else "float32"
    return "bfloat16" if cpu_fast_bf16 else "float32"


def inference_dtype(device: str):
    """The torch dtype of pick_inference_dtype for this machine: bf16 where the hardware has it
    (generation reads every weight per token, so half the bytes is faster), float32 elsewhere.
    DISTILL_INFERENCE_DTYPE=float32|bfloat16 overrides the rule (auto: the rule); the tests pin float32, so
    paths that must agree (greedy and generate(), gate and gateway) are compared without bf16's rounding,
    which differs with the batch's shape. ValueError for another value."""
    import os

    import torch

    forced = os.environ.get("DISTILL_INFERENCE_DTYPE", "auto").strip().lower()
    if forced in ("float32", "bfloat16"):
        return getattr(torch, forced)
    if forced != "auto":
        raise ValueError(f"DISTILL_INFERENCE_DTYPE={forced!r}: use auto, float32 or bfloat16")
    cuda_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    fast_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return getattr(torch, pick_inference_dtype(device, cuda_bf16, fast_bf16))


class LocalModel:
    """A causal LM, optionally with LoRA adapters (unmerged, PEFT multi-adapter), that completes
    prompts in batches. `adapter_path` loads one adapter named "default" and makes it the one
    `complete` uses unless told otherwise; `add_adapter` loads more on the same base weights.
    Thread-safe: one generate() at a time per model (the active adapter is per model)."""

    DEFAULT_ADAPTER = "default"

    def __init__(self, model_path: str, adapter_path: str | None = None, name: str | None = None,
                 safetensors_only: bool = False):
        import torch
        from transformers import AutoModelForCausalLM

        from trainers.base_model import load_tokenizer

        self.name = name or (f"{model_path}+{adapter_path}" if adapter_path else model_path)
        self.model_path, self.adapter_path = model_path, adapter_path
        self.safetensors_only = safetensors_only
        self.tokenizer = load_tokenizer(model_path)  # adapters do not change the vocabulary
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = inference_dtype(self.device)
        kw = {"use_safetensors": True} if safetensors_only else {}
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.dtype, **kw)
        self.model = model.to(device=self.device).eval()
        out = self.model.get_output_embeddings()
        if out is not None:
            # generate() hands the LM head a strided slice (the last position); on CPU a bf16
            # linear on a non-contiguous input took 39 s instead of 0.14 s (torch 2.13). A slice that
            # torch calls contiguous can still carry a stale stride on a size-1 dim ([1, 1, 640] with
            # strides (1920, 640, 1)): bf16 matmul then copies the whole 262k x 640 head per call (0.8 s of
            # a 0.9 s single-prompt prefill, measured with an adapter loaded): clone to dense strides.
            out.register_forward_pre_hook(lambda mod, args: tuple(_dense(a) for a in args))
        self.adapters: dict[str, str] = {}  # adapter name -> folder
        self.default_adapter: str | None = None
        self.lock = threading.RLock()
        # Keys and values of shared prompt prefixes (a skill's instruction), per adapter: greedy decoding
        # prefills only each prompt's own suffix (teachers.greedy.PrefixCache). None turns it off.
        from teachers.greedy import PrefixCache

        self.prefixes: PrefixCache | None = PrefixCache()
        if adapter_path:
            self.add_adapter(self.DEFAULT_ADAPTER, adapter_path)
            self.default_adapter = self.DEFAULT_ADAPTER

    def add_adapter(self, name: str, path: str) -> None:
        """Load the LoRA adapter in folder `path` on this base under `name` (unmerged; the base
        weights are shared). Raises ValueError when `name` is already loaded."""
        from peft import PeftModel

        with self.lock:
            if name in self.adapters:
                raise ValueError(f"adapter {name!r} is already loaded")
            kw = {"use_safetensors": True} if self.safetensors_only else {}
            if not isinstance(self.model, PeftModel):
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name, **kw).eval()
            else:
                self.model.load_adapter(str(path), adapter_name=name, **kw)
                self.model.eval()
            self.adapters[name] = str(path)
            if self.prefixes is not None:
                self.prefixes.drop(name)  # a name loaded again may hold other weights

    def remove_adapter(self, name: str) -> None:
        """Unload adapter `name` (a no-op when it is not loaded); the base stays."""
        with self.lock:
            if name not in self.adapters:
                return
            if len(self.adapters) > 1:
                if self.model.active_adapter == name:
                    self.model.set_adapter(next(a for a in self.adapters if a != name))
                self.model.delete_adapter(name)
            else:
                # PEFT cannot delete its only adapter, and loading onto a name it still holds mixes old and new
                # weights: take the LoRA layers out (nothing merged) and wrap the base afresh at the next load.
                self.model = self.model.unload().eval()
            del self.adapters[name]
            if self.prefixes is not None:
                self.prefixes.drop(name)
            if self.default_adapter == name:
                self.default_adapter = None

    def grammar_compiler(self):
        """The xgrammar compiler for this model's tokenizer (made once; compiled grammars cached)."""
        with self.lock:
            if getattr(self, "_grammar_compiler", None) is None:
                from teachers.constrained import GrammarCompiler

                vocab = self.model.get_output_embeddings().weight.shape[0]
                self._grammar_compiler = GrammarCompiler(self.tokenizer, vocab, [self.tokenizer.eos_token_id])
            return self._grammar_compiler

    def _use(self, adapter: str | None):
        """A context manager that runs the model with `adapter` active (None: the base alone)."""
        import contextlib

        if not self.adapters and adapter is None:
            return contextlib.nullcontext()
        if adapter is None:
            return self.model.disable_adapter()
        if adapter not in self.adapters:
            raise KeyError(f"adapter {adapter!r} is not loaded (loaded: {', '.join(self.adapters) or 'none'})")
        self.model.set_adapter(adapter)
        return contextlib.nullcontext()

    def complete(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        batch_size: int = 16,
        seed: int = 0,
        stop_at_newline: bool = True,
        progress: Callable[[int], None] | None = None,
        adapter: str | None = ...,  # type: ignore[assignment]
        confidence: bool = False,
        grammars: Sequence[dict | None] | None = None,
        own: bool = True,
        decoder: str = "greedy",
        adapters: Sequence[str | None] | None = None,
        caps: Sequence[int] | None = None,
    ) -> list[Completion]:
        """Complete each prompt; greedy when temperature is 0. Deterministic for a seed.

        Prompts are sorted by length and decoded `batch_size` at a time (less padding); the
        results come back in the prompts' order. `adapter`: a loaded adapter's name, None for the
        base alone; left out, the default adapter (`adapter_path`) or the base. With `confidence`
        (greedy only), each completion carries the mean log-probability of its answer tokens:
        read from the generation's own float32 scores when the generated tokens before the stop
        are exactly the answer text's own tokenization (the usual case), else computed for that
        row with one teacher-forced pass (`teacher_forced_logprobs`), so the value is always the
        routing profile's definition, the model's own probability even under a grammar.

        `grammars`: one grammar spec per prompt (core.tasks' `answer_grammar`; None: free) to
        decode under with xgrammar (teachers.constrained); None: no constraint at all.
        Completions go through `teachers.greedy.greedy_batch` (one prefill, then one forward per grammar
        choice, forced tokens jumped; a row that stops leaves the batch); sampled ones draw each token from
        temperature + nucleus (top-p `TOP_P`) probabilities with a torch.Generator seeded per batch. `own`
        (greedy, under a grammar): also compute the model's own log-probability of forced tokens; False
        when only a grammar-renormalised confidence is read (the gateway serving such a signal).
        `adapters`: one loaded adapter name (None: the base) per prompt, decoded in shared batches (PEFT
        mixed-adapter batches; `adapter` is then ignored); `caps`: one max_new_tokens per prompt
        (`max_new_tokens` is then ignored); both for decoder="greedy" only.
        `decoder="generate"`: through transformers' `generate()` instead (the reference the loop is tested and
        benchmarked against; sampled there with the same warper, but its own random stream).

        Raises KeyError for an adapter that is not loaded, constrained.GrammarError for a spec
        xgrammar cannot compile, ValueError when `grammars` and `prompts` differ in length."""
        import torch
        from transformers import LogitsProcessorList

        if adapter is ...:
            adapter = self.default_adapter
        if grammars is not None and len(grammars) != len(prompts):
            raise ValueError(f"grammars: {len(grammars)} specs for {len(prompts)} prompts")
        if grammars is not None and all(g is None for g in grammars):
            grammars = None
        tok = self.tokenizer
        if (adapters is not None or caps is not None) and decoder != "greedy":
            raise ValueError('complete: per-prompt adapters and caps are for decoder="greedy" only')
        for lst, what in ((adapters, "adapters"), (caps, "caps")):
            if lst is not None and len(lst) != len(prompts):
                raise ValueError(f"{what}: {len(lst)} for {len(prompts)} prompts")
        if decoder == "greedy":
            return self._complete_greedy(prompts, max_new_tokens, batch_size, stop_at_newline, progress, adapter,
                                         confidence and temperature <= 0, grammars, own, adapters, caps,
                                         temperature=temperature, seed=seed)
        greedy_conf = confidence and temperature <= 0
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: dict[int, Completion] = {}
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch = [prompts[i] for i in idx]
            enc = tok(batch, return_tensors="pt", padding=True).to(self.device)
            gen_kwargs = dict(
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                do_sample=temperature > 0,
            )
            if temperature > 0:
                # temperature and top-p 0.95 in our NucleusWarper (transformers' own sorts the whole vocabulary)
                gen_kwargs.update(temperature=1.0, top_p=1.0, top_k=0)
                torch.manual_seed((seed * 100_003 + b) % 2**63)  # run seeds go up to 2**31: keep it in int64
            else:
                gen_kwargs.update(temperature=None, top_p=None, top_k=None)
            if stop_at_newline:
                gen_kwargs["stopping_criteria"] = self._newline_stop()
            recorder = _ChosenLogprob() if greedy_conf else None
            processors: list = [recorder] if recorder is not None else []
            if grammars is not None:
                mask = self.grammar_compiler().processor([grammars[i] for i in idx])
                processors = [recorder.capture, mask, recorder] if recorder is not None else [mask]
            if temperature > 0:
                processors.append(NucleusWarper(temperature, TOP_P))  # last, where transformers puts its warpers
            if processors:
                gen_kwargs["logits_processor"] = LogitsProcessorList(processors)
            with self.lock:
                t0 = time.time()
                with torch.inference_mode(), self._use(adapter):
                    gen = self.model.generate(**enc, **gen_kwargs)
                dt = (time.time() - t0) / len(idx)
                new = gen[:, enc["input_ids"].shape[1] :]
                redo: list[tuple[int, str, str]] = []  # (prompt index, prompt, answer) for a teacher-forced pass
                for row, i in enumerate(idx):
                    ids = new[row].tolist()
                    n = len(ids)
                    while n and ids[n - 1] == tok.pad_token_id:
                        n -= 1
                    text = tok.decode(ids[:n], skip_special_tokens=True)
                    stopped = n < max_new_tokens or "\n" in text or (n and ids[n - 1] == tok.eos_token_id)
                    if stop_at_newline:
                        text = text.split("\n")[0]
                    c = Completion(
                        text=text,
                        finish_reason="stop" if stopped else "length",
                        prompt_tokens=int(enc["attention_mask"][row].sum()),
                        completion_tokens=n,
                        seconds=dt,
                    )
                    if recorder is not None and text:
                        a_ids = tok(text, add_special_tokens=False)["input_ids"]
                        if a_ids and ids[: len(a_ids)] == a_ids and len(a_ids) <= len(recorder.steps):
                            lps = [float(recorder.steps[t][row]) for t in range(len(a_ids))]
                            glps = [float(recorder.masked[t][row]) for t in range(len(a_ids))]
                            c.token_logprobs, c.confidence, c.confidence_source = lps, sum(lps) / len(lps), "scores"
                            c.signals = answer_signals(lps, glps)
                        else:
                            m = recorder.answer_steps(tok, ids, n)
                            c.signals = answer_signals(None, [float(recorder.masked[t][row]) for t in range(m)])
                            redo.append((i, batch[row], text))
                    results[i] = c
                self._rescore(results, redo, lambda i: adapter, grammars is not None, batch_size)
            if progress:
                progress(len(idx))
        return [results[i] for i in range(len(prompts))]

    def _newline_stop(self):
        """transformers' stop-at-newline criterion, built once per model: `generate(stop_strings=...)` rebuilds
        its table over the whole vocabulary on every call (seconds for Gemma's 262k tokens)."""
        if getattr(self, "_stop", None) is None:
            from transformers import StoppingCriteriaList, StopStringCriteria

            self._stop = StoppingCriteriaList([StopStringCriteria(self.tokenizer, ["\n"])])
        return self._stop

    def _complete_greedy(self, prompts, max_new_tokens, batch_size, stop_at_newline, progress, adapter, confidence,
                         grammars, own, adapters=None, caps=None, temperature: float = 0.0,
                         seed: int = 0) -> list[Completion]:
        """`complete` with decoder="greedy" (see there), by teachers.greedy.greedy_batch; temperature > 0 samples."""
        import contextlib

        import torch

        from teachers.greedy import greedy_batch

        tok = self.tokenizer
        names = None
        if adapters is not None:
            for a in set(adapters) - {None}:
                if a not in self.adapters:
                    raise KeyError(f"adapter {a!r} is not loaded (loaded: {', '.join(self.adapters) or 'none'})")
            if self.adapters:  # a plain model (no adapter loaded): every row is the base, nothing to pass
                names = [a if a is not None else "__base__" for a in adapters]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: dict[int, Completion] = {}
        vocab = self.model.get_output_embeddings().weight.shape[0]
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            batch = [prompts[i] for i in idx]
            p_ids = tok(batch)["input_ids"]
            matchers = None
            if grammars is not None:
                matchers = self.grammar_compiler().matchers([grammars[i] for i in idx])
            # One adapter in this chunk: set it (PEFT's per-row adapter_names path measured ~40% slower on CPU).
            row_adapters = [adapters[i] for i in idx] if adapters is not None else [adapter] * len(idx)
            one = len(set(row_adapters)) == 1
            sample = None
            if temperature > 0:
                # run seeds go up to 2**31: keep the batch's seed in int64
                sample = _sampler(temperature, TOP_P, (seed * 100_003 + b) % 2**63, self.device)
            with self.lock:
                t0 = time.time()
                prefix = self._prefix(row_adapters, p_ids)
                use = self._use(row_adapters[0]) if one else contextlib.nullcontext()
                with torch.inference_mode(), use:
                    rows = greedy_batch(self.model, tok, p_ids, [caps[i] for i in idx] if caps else max_new_tokens,
                                        matchers=matchers, bitmask_vocab=vocab, stop_at_newline=stop_at_newline,
                                        own=own or not grammars, device=self.device,
                                        adapter_names=[names[i] for i in idx] if names is not None and not one
                                        else None, prefix=prefix, sample=sample)
                dt = (time.time() - t0) / len(idx)
                redo: list[tuple[int, str, str]] = []
                for row_i, (i, row) in enumerate(zip(idx, rows)):
                    ids = row.ids
                    n = len(ids)
                    text = tok.decode(ids, skip_special_tokens=True)
                    if stop_at_newline:
                        text = text.split("\n")[0]
                    c = Completion(text=text, finish_reason=row.finish or "length", prompt_tokens=len(p_ids[row_i]),
                                   completion_tokens=n, seconds=dt)
                    if confidence and text:
                        a_ids = tok(text, add_special_tokens=False)["input_ids"]
                        if a_ids and ids[: len(a_ids)] == a_ids:
                            lps = row.lps[: len(a_ids)]
                            glps, margins = row.glps[: len(a_ids)], row.margins[: len(a_ids)]
                            if all(x is not None for x in lps):
                                c.token_logprobs, c.confidence, c.confidence_source = lps, sum(lps) / len(lps), "scores"
                                c.signals = answer_signals(lps, glps, margins)
                            else:  # own log-probabilities of forced tokens were not asked for
                                c.confidence_source = "scores"
                                c.signals = answer_signals(None, glps, margins)
                        else:
                            m = _answer_len(tok, ids)
                            c.signals = answer_signals(None, row.glps[:m], row.margins[:m])
                            if own or not grammars:  # the model's own log-probabilities are asked for: re-score
                                redo.append((i, batch[row_i], text))
                    results[i] = c
                self._rescore(results, redo, lambda i: adapters[i] if adapters is not None else adapter,
                              grammars is not None, batch_size)
            if progress:
                progress(len(idx))
        return [results[i] for i in range(len(prompts))]

    def _prefix(self, row_adapters: list, p_ids: list) -> tuple | None:
        """`greedy_batch`'s prefix for a chunk (the shared prompt prefix's keys and values, computed once per
        adapter and kept), or None: cache off, nothing shared, or prompts reaching a sliding attention window
        (its layers keep only the window's last keys, so a cached prefix would not be the whole past)."""
        import torch

        from teachers.greedy import prefix_kv

        if self.prefixes is None:
            return None
        window = getattr(getattr(self.model, "config", None), "sliding_window", None)
        if window and max(len(p) for p in p_ids) >= int(window) - 1:
            return None
        plen = self.prefixes.plan(row_adapters, p_ids)
        if not plen:
            return None

        def compute(a, ids):
            with torch.inference_mode(), self._use(a):
                return prefix_kv(self.model, ids, self.device)

        try:
            return self.prefixes.batch(row_adapters, p_ids, plen, compute)
        except Exception as e:  # a cache layout prefix_kv does not know (e.g. linear-attention layers): go without
            import logging

            logging.getLogger("distill").warning("%s: prefix cache off (%s: %s); every prompt is prefilled whole",
                                                 self.name, type(e).__name__, str(e)[:200])
            self.prefixes = None
            return None

    def _rescore(self, results: dict, redo: list, adapter_of: Callable, constrained: bool, batch_size: int) -> None:
        """The model's own answer log-probabilities by one teacher-forced pass per adapter, for the completions
        whose generated tokens differ from their text's own tokens. redo: (prompt index, prompt, answer);
        adapter_of(prompt index) -> adapter name. The renormalised signals and the margin stay the decode's own."""
        import torch

        groups: dict = {}
        for r in redo:
            groups.setdefault(adapter_of(r[0]), []).append(r)
        for a, rs in groups.items():
            with torch.inference_mode(), self._use(a):
                forced = teacher_forced_logprobs(self.model, self.tokenizer, [p for _, p, _ in rs], [x for _, _, x in rs],
                                                 batch_size=batch_size, device=self.device, per_token=True)
            for (i, _, _), lps in zip(rs, forced):
                c = results[i]
                c.token_logprobs = lps
                c.confidence, c.confidence_source = (sum(lps) / len(lps) if lps else None), "forced"
                got = answer_signals(lps, None if constrained else lps)  # free decoding: nothing renormalised
                got.update({k: v for k, v in (c.signals or {}).items()
                            if "grammar" in k and constrained or k == "min_margin"})
                c.signals = got

    def score(self, prompt: str, options: Sequence[str]) -> Completion:
        """The log-likelihood of each option after the prompt (text: {"option": logprob} as JSON).
        One forward pass over the prompt; options longer than one token continue from its KV
        cache in one small batch, so scoring costs about one prefill however many options."""
        import json

        import torch

        tok = self.tokenizer
        t0 = time.time()
        p_ids = tok(prompt)["input_ids"]
        conts = []
        for o in options:
            full = tok(prompt + o)["input_ids"]
            # The prompt's tokens are a prefix of prompt+option when the option starts a new word
            # (" billing" after "Team:"); otherwise the option is tokenized alone.
            conts.append(full[len(p_ids):] if full[: len(p_ids)] == p_ids and len(full) > len(p_ids)
                         else tok(o, add_special_tokens=False)["input_ids"])
        with torch.inference_mode():
            first = self.model(input_ids=torch.tensor([p_ids], device=self.device), use_cache=True, logits_to_keep=1)
            lp0 = torch.log_softmax(first.logits[0, -1].float(), -1)
            scores = [float(lp0[c[0]]) for c in conts]
            multi = [i for i, c in enumerate(conts) if len(c) > 1]
            if multi:
                n, p_len = len(multi), len(p_ids)
                t_len = max(len(conts[i]) - 1 for i in multi)
                cache = first.past_key_values
                cache.batch_repeat_interleave(n)
                ids = torch.full((n, t_len), tok.pad_token_id, dtype=torch.long)
                for r, i in enumerate(multi):
                    ids[r, : len(conts[i]) - 1] = torch.tensor(conts[i][:-1])
                # Right padding is harmless: a causal model's earlier positions never see it.
                pos = torch.arange(p_len, p_len + t_len).unsqueeze(0).expand(n, t_len)
                out = self.model(input_ids=ids.to(self.device), past_key_values=cache,
                                 attention_mask=torch.ones(n, p_len + t_len, dtype=torch.long, device=self.device),
                                 position_ids=pos.to(self.device), cache_position=pos[0].to(self.device))
                lp = torch.log_softmax(out.logits.float(), -1)
                for r, i in enumerate(multi):
                    scores[i] += float(sum(lp[r, j, conts[i][j + 1]] for j in range(len(conts[i]) - 1)))
        return Completion(text=json.dumps(dict(zip(options, scores))), finish_reason="scored",
                          prompt_tokens=len(p_ids), completion_tokens=0, seconds=time.time() - t0)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])


class LocalBackend:
    """`LocalModel` behind the backend interface of `teachers.base` (batched, synchronous)."""

    def __init__(self, model: "LocalModel", spec: str | None = None):
        self.model = model
        self.name = spec or model.name
        self.spec = spec or model.name

    def identity(self) -> dict:
        """What makes an answer differ: the model spec and the content of the weights behind it (a
        path or hub id names a place, not weights: new weights there must not reuse old answers)."""
        from trainers.base_model import weights_fingerprint

        ident = {"backend": "local", "model": self.spec, "weights": weights_fingerprint(self.model.model_path)}
        if self.model.adapter_path:
            ident["adapter"] = weights_fingerprint(self.model.adapter_path)
        return ident

    def complete_requests(self, requests) -> list[Completion]:
        """Requests that share decoding settings go through one batched `complete` call."""
        # Per-request seeds are not a grouping key (that would make every batch one row): a batch
        # samples from its first request's seed, so the same batch gives the same answers.
        out: list[Completion | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            if r.options is not None:  # scoring, not sampling
                out[i] = self.model.score(r.prompt_text(), r.options)
                continue
            groups.setdefault((r.max_tokens, r.temperature, "\n" in r.stop, r.grammar is not None), []).append(i)
        for (max_tokens, temperature, newline, constrained), idx in groups.items():
            seed = requests[idx[0]].seed
            prompts = [requests[i].prompt_text() for i in idx]
            grammars = [json.loads(requests[i].grammar) for i in idx] if constrained else None
            # Rows of one batch sample independently, so n samples of one prompt differ.
            comps = self.model.complete(prompts, max_new_tokens=max_tokens, temperature=temperature,
                                        batch_size=len(prompts), seed=seed, stop_at_newline=newline, grammars=grammars)
            for i, c in zip(idx, comps):
                out[i] = c
        return out  # type: ignore[return-value]
