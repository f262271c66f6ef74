"""The embedded teacher's two servers on the pipeline's own workload: new inputs (self_instruct)
and label scores (score, similar shots) for the same inputs, through llama.cpp's server (with and
without `logits_all`, which llama-cpp-python needs for any logprobs) and through transformers in
this CPU's inference dtype. Prints one JSON line last.

    python benchmarks/teacher_backends.py [--skill ticket-triage] [--n 16] [--only backends|sampler] [--quick]

Then the sampler: one batch of `--sampler-batch` (32) style prompts sampled for 56 tokens through
transformers' own temperature + top-p warpers (a sort of the whole vocabulary per row per step) and
through `teachers.local.NucleusWarper` (what the pipeline uses), the same torch seed: seconds each and
how many rows came out identical.

The same batch as the pipeline asks for it (stop at the first newline, at most 56 tokens) through both of
`LocalModel.complete`'s decoders: `generate()` (every row rides along to the longest row's end) and the greedy
loop with its seeded sampler (`teachers.greedy`, what the pipeline uses: a row that stops leaves the batch).

--quick: 2 inputs, a sampler batch of 4 x 8 tokens (same keys). The teacher's cache is off, so
every backend pays for its own requests; the same run seed for every backend, so each sees the same
prompts (transformers samples other inputs than llama.cpp: its scores are of its own inputs).
Seconds are wall time of the whole phase, server start and model load excluded.
"""

from __future__ import annotations

import argparse
import time

from _common import emit, setup


def _phase(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return round(time.perf_counter() - t0, 2), out


def sampler(skill, model_path: str, n: int, new_tokens: int) -> dict:
    """transformers' TemperatureLogitsWarper + TopPLogitsWarper against NucleusWarper on one batch."""
    import random

    import torch
    from transformers import LogitsProcessorList

    from teachers.local import TOP_P, LocalModel, NucleusWarper
    from teachers.strategies import style_prompt

    m = LocalModel(model_path, name="teacher")
    rng = random.Random(0)
    prompts = [style_prompt(skill, rng.sample(skill.seeds, skill.config.teacher.style_shots)) for _ in range(n)]
    enc = m.tokenizer(prompts, return_tensors="pt", padding=True)
    t = skill.config.teacher.temperature
    common = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=m.tokenizer.pad_token_id,
                  do_sample=True, top_k=0)
    outs, secs = {}, {}
    for name, kw in (("transformers_warpers", dict(temperature=t, top_p=TOP_P)),
                     ("nucleus_warper", dict(temperature=1.0, top_p=1.0,
                                             logits_processor=LogitsProcessorList([NucleusWarper(t, TOP_P)])))):
        torch.manual_seed(0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            outs[name] = m.model.generate(**enc, **common, **kw)
        secs[name] = round(time.perf_counter() - t0, 2)
    same = int((outs["transformers_warpers"] == outs["nucleus_warper"]).all(dim=1).sum())
    return {"prompts": n, "new_tokens": new_tokens, "seconds": secs, "identical_rows": same,
            "speedup": round(secs["transformers_warpers"] / secs["nucleus_warper"], 2)}


def sampled_paths(skill, model_path: str, n: int, new_tokens: int) -> dict:
    """One batch of `n` style prompts sampled as the pipeline asks (newline stop, `new_tokens` cap) through
    `complete(decoder="generate")` and `complete(decoder="greedy")` (the loop): seconds, tokens written, speedup."""
    import random

    from teachers.local import LocalModel
    from teachers.strategies import style_prompt

    m = LocalModel(model_path, name="teacher")
    rng = random.Random(1)
    prompts = [style_prompt(skill, rng.sample(skill.seeds, skill.config.teacher.style_shots)) for _ in range(n)]
    t = skill.config.teacher.temperature
    m.complete(prompts[:2], max_new_tokens=4, temperature=t, seed=0)  # warm-up (first-call allocations)
    out: dict = {"prompts": n, "max_new_tokens": new_tokens, "seconds": {}, "tokens": {}}
    for name in ("generate", "greedy"):
        t0 = time.perf_counter()
        comps = m.complete(prompts, max_new_tokens=new_tokens, temperature=t, seed=3, batch_size=n, decoder=name)
        out["seconds"][name] = round(time.perf_counter() - t0, 2)
        out["tokens"][name] = sum(c.completion_tokens for c in comps)
        # the same distribution either way: what was written, not only how fast (mean words, distinct word bigrams)
        words = [c.text.split() for c in comps]
        grams = [tuple(w[i:i + 2]) for w in words for i in range(len(w) - 1)]
        out.setdefault("mean_words", {})[name] = round(sum(map(len, words)) / max(1, len(words)), 1)
        out.setdefault("distinct_bigrams", {})[name] = round(len(set(grams)) / max(1, len(grams)), 3)
    out["loop_speedup"] = round(out["seconds"]["generate"] / out["seconds"]["greedy"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--n", type=int, default=None, help="new inputs, then as many score requests (default 16)")
    ap.add_argument("--only", choices=["backends", "sampler"], default=None, help="one part only")
    ap.add_argument("--sampler-batch", type=int, default=32, help="prompts in the sampler comparison's batch")
    ap.add_argument("--quick", action="store_true", help="2 inputs, a sampler batch of 4 x 8 tokens")
    args = ap.parse_args()
    setup()
    from teachers import open_teacher
    from teachers.llama_server import llama_cpp_available
    from teachers.local import inference_dtype
    from teachers.strategies import score, self_instruct, shot_picker
    from core.skills import load_skill
    from trainers.base_model import resolve_model

    n = args.n or (2 if args.quick else 16)
    skill = load_skill(args.skill)
    base = skill.config.teacher.model_copy(update={"cache": False})
    path = resolve_model(base.model)
    picker = shot_picker(skill, "similar", seed=7)
    out: dict = {"benchmark": "teacher_backends", "quick": args.quick, "skill": skill.name, "n": n,
                 "inference_dtype": str(inference_dtype("cpu")).removeprefix("torch."), "rows": {}}
    rows = [("transformers", "transformers", True)] if args.only != "sampler" else []
    if rows and llama_cpp_available():
        rows = [("llama_cpp_logits_all", "llama_cpp", True), ("llama_cpp", "llama_cpp", False)] + rows
    elif rows:
        out["llama_cpp"] = "not installed"
    for name, server, scoring in rows:
        tcfg = base.model_copy(update={"local_server": server})
        with open_teacher(tcfg, path, scoring=scoring) as teacher:
            row: dict = {}
            row["new_inputs_s"], (kept, _) = _phase(lambda: self_instruct(skill, teacher, n, seed=7))
            row["kept"] = len(kept)
            if scoring and kept:
                row["scores_s"], (answered, _) = _phase(lambda: score(skill, teacher, kept, seed=7, picker=picker))
                row["scored"] = len(answered)
                row["s_per_score"] = round(row["scores_s"] / len(kept), 3)
            row["s_per_input"] = round(row["new_inputs_s"] / max(1, len(kept)), 3)
        out["rows"][name] = row
        print(name, row, flush=True)
    r = out["rows"]
    if args.only != "backends":
        out["sampler"] = sampler(skill, path, 4 if args.quick else args.sampler_batch, 8 if args.quick else 56)
        print("sampler", out["sampler"], flush=True)
        out["sampled_paths"] = sampled_paths(skill, path, 4 if args.quick else args.sampler_batch,
                                             8 if args.quick else 56)
        print("sampled_paths", out["sampled_paths"], flush=True)
    if "llama_cpp" in r:
        out["logits_all_cost_new_inputs"] = round(r["llama_cpp_logits_all"]["s_per_input"] / r["llama_cpp"]["s_per_input"], 2)
        if "s_per_score" in r["llama_cpp_logits_all"] and "s_per_score" in r["transformers"]:
            out["scores_llama_cpp_over_transformers"] = round(
                r["llama_cpp_logits_all"]["s_per_score"] / r["transformers"]["s_per_score"], 2)
        out["new_inputs_llama_cpp_over_transformers"] = round(
            r["llama_cpp"]["s_per_input"] / r["transformers"]["s_per_input"], 2)
    emit(out)


if __name__ == "__main__":
    main()
