"""Local transformers backend: batched generation on whatever device is present.

Used for the teacher and, with a LoRA adapter loaded, for the student in the eval
gates, so both are measured with the same decoding code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" (newline or EOS) or "length"
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # wall time of the batch it was in, divided by the batch size


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
    (generation reads every weight per token, so half the bytes is faster), float32 elsewhere."""
    import torch

    cuda_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    fast_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return getattr(torch, pick_inference_dtype(device, cuda_bf16, fast_bf16))


class LocalModel:
    """A causal LM (optionally with a LoRA adapter) that completes prompts in batches."""

    def __init__(self, model_path: str, adapter_path: str | None = None, name: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM

        from trainers.base_model import load_tokenizer

        self.name = name or (f"{model_path}+{adapter_path}" if adapter_path else model_path)
        self.model_path, self.adapter_path = model_path, adapter_path
        self.tokenizer = load_tokenizer(model_path)  # adapters do not change the vocabulary
        self.tokenizer.padding_side = "left"  # decoder-only batches pad on the left
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = inference_dtype(self.device)
        # Adapters are merged in float32, then the merged model is cast once.
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32 if adapter_path else dtype)
        if adapter_path:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter_path).merge_and_unload()  # faster decoding
        self.model = model.to(device=self.device, dtype=dtype).eval()
        out = self.model.get_output_embeddings()
        if out is not None:
            # generate() hands the LM head a strided slice (the last position); on CPU a bf16
            # linear on a non-contiguous input took 39 s instead of 0.14 s (torch 2.13).
            out.register_forward_pre_hook(lambda mod, args: tuple(a.contiguous() for a in args))

    def complete(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        batch_size: int = 16,
        seed: int = 0,
        stop_at_newline: bool = True,
        progress: Callable[[int], None] | None = None,
    ) -> list[Completion]:
        """Complete each prompt; greedy when temperature is 0. Deterministic for a seed."""
        import torch

        tok = self.tokenizer
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
                gen_kwargs.update(temperature=temperature, top_p=0.95, top_k=0)
                torch.manual_seed((seed * 100_003 + b) % 2**63)  # run seeds go up to 2**31: keep it in int64
            else:
                gen_kwargs.update(temperature=None, top_p=None, top_k=None)
            if stop_at_newline:
                gen_kwargs.update(stop_strings=["\n"], tokenizer=tok)
            t0 = time.time()
            with torch.inference_mode():
                gen = self.model.generate(**enc, **gen_kwargs)
            dt = (time.time() - t0) / len(idx)
            new = gen[:, enc["input_ids"].shape[1] :]
            for row, i in enumerate(idx):
                ids = new[row].tolist()
                n = len(ids)
                while n and ids[n - 1] == tok.pad_token_id:
                    n -= 1
                text = tok.decode(ids[:n], skip_special_tokens=True)
                stopped = n < max_new_tokens or "\n" in text or (n and ids[n - 1] == tok.eos_token_id)
                if stop_at_newline:
                    text = text.split("\n")[0]
                results[i] = Completion(
                    text=text,
                    finish_reason="stop" if stopped else "length",
                    prompt_tokens=int(enc["attention_mask"][row].sum()),
                    completion_tokens=n,
                    seconds=dt,
                )
            if progress:
                progress(len(idx))
        return [results[i] for i in range(len(prompts))]

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
            groups.setdefault((r.max_tokens, r.temperature, "\n" in r.stop), []).append(i)
        for (max_tokens, temperature, newline), idx in groups.items():
            seed = requests[idx[0]].seed
            prompts = [requests[i].prompt_text() for i in idx]
            # Rows of one batch sample independently, so n samples of one prompt differ.
            comps = self.model.complete(prompts, max_new_tokens=max_tokens, temperature=temperature,
                                        batch_size=len(prompts), seed=seed, stop_at_newline=newline)
            for i, c in zip(idx, comps):
                out[i] = c
        return out  # type: ignore[return-value]
