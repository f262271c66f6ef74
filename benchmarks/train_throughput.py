"""Training throughput and peak memory: QLoRA nf4 vs plain LoRA (vs full fine-tuning on the tiny model).

Every mode trains the same steps on the same batches (the ticket-triage seeds, same seed)
through `trainers.qlora.train_adapter`, each in its own process so that peak memory is that
mode's alone (ru_maxrss on CPU, torch.cuda.max_memory_allocated on GPU). Plain LoRA is the
baseline measured in the same run. Prints one JSON line last.

    python benchmarks/train_throughput.py [--quick] [--model PATH|tiny] [--steps N] [--batch-size B]

--model defaults to the bundled Gemma 3 270M when it is already converted under the work dir
(.distill/models/gemma-3-270m; nothing is converted here) and --quick is not given, else to a
tiny random Gemma 3 built on the spot. Full fine-tuning runs for the tiny model only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, emit, setup

from tests.tiny_models import build_tiny_model  # the tests' 2-layer random Gemma 3

MODES = {"qlora_nf4": ("lora", "nf4"), "lora": ("lora", "none"), "full_ft": ("full", "none")}


def one_mode(args) -> None:
    """Child process: train one mode, print its figures as JSON."""
    setup()
    from core.skills import load_skill
    from trainers.qlora import train_adapter

    method, quant = MODES[args.one]
    skill = load_skill(args.skill)
    cfg = skill.config.model_copy(deep=True)
    cfg.student.quantization = quant
    tc = cfg.student.train
    tc.max_steps, tc.batch_size, tc.grad_accum = args.steps, args.batch_size, 1
    with tempfile.TemporaryDirectory() as d:
        res = train_adapter(args.model, cfg, skill.seeds, [], Path(d), method=method, base_model=args.model)
        metrics = json.loads(Path(res.metrics_path).read_text())
    mem = metrics["peak_memory"]
    print(json.dumps({"mode": args.one, "quantization": res.quantization, "device": res.device,
                      "compute_dtype": res.compute_dtype, "attn": res.attn_implementation,
                      "tokens_per_s": metrics["tokens_per_s"], "train_tokens": metrics["train_tokens"],
                      "s_per_step": round(metrics["train_runtime_s"] / max(1, res.steps), 3),
                      "peak_rss_mb": mem["rss_peak_mb"], "cuda_max_allocated_mb": mem.get("cuda_max_allocated_mb"),
                      "losses": [round(s["loss"], 4) for s in metrics["steps"]]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="few steps, small batches (under a minute on the tiny model)")
    ap.add_argument("--model", default=None, help="model folder or hub id; 'tiny' for a tiny random Gemma 3")
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--one", choices=list(MODES), help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    if args.one:
        return one_mode(args)
    setup()
    from core.skills import load_skill
    from core.workdir import models_dir

    bundled = models_dir() / "gemma-3-270m"
    tmp = tempfile.TemporaryDirectory()
    # --quick uses the tiny model unless --model is given: a 270M step takes ~10 s on a small CPU.
    use_bundled = args.model is None and not args.quick and (bundled / "CONVERTED_FROM").is_file()
    if args.model in (None, "tiny") and not use_bundled:
        skill = load_skill(args.skill)
        corpus = [f"{e.input}\n{e.output}\n" for e in skill.seeds + skill.eval_set]
        model, name, tiny = str(build_tiny_model(Path(tmp.name) / "tiny", corpus)), "tiny-random-gemma3", True
    else:
        model = args.model or str(bundled)
        name, tiny = ("bundled:gemma-3-270m" if model == str(bundled) else model), False
    steps = args.steps or ((4 if args.quick else 30) if tiny else (2 if args.quick else 6))
    bs = args.batch_size or (4 if args.quick else 8)
    modes = ["qlora_nf4", "lora"] + (["full_ft"] if tiny else [])
    results = {}
    t0 = time.time()
    for mode in modes:
        cmd = [sys.executable, __file__, "--one", mode, "--model", model, "--skill", args.skill,
               "--steps", str(steps), "--batch-size", str(bs)]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ})
        if out.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{mode}: {results[mode]}", file=sys.stderr)
    tmp.cleanup()
    q, lo = results["qlora_nf4"], results["lora"]
    mem = "cuda_max_allocated_mb" if q["device"] == "cuda" else "peak_rss_mb"
    emit({
        "benchmark": "train_throughput", "quick": args.quick, "model": name, "device": q["device"],
        "compute_dtype": q["compute_dtype"], "attn": q["attn"], "steps": steps, "batch_size": bs,
        "quantization": q["quantization"],
        # Same keys for every model: full fine-tuning is measured on the tiny model only (None otherwise).
        **{f"{m}_tokens_per_s": results.get(m, {}).get("tokens_per_s") for m in MODES},
        **{f"{m}_s_per_step": results.get(m, {}).get("s_per_step") for m in MODES},
        **{f"{m}_peak_mb": results.get(m, {}).get(mem) for m in MODES},
        "peak_memory_kind": mem,
        "qlora_vs_lora_speed": round(q["tokens_per_s"] / lo["tokens_per_s"], 3),
        "qlora_vs_lora_memory": round(q[mem] / lo[mem], 3),
        "train_tokens": q["train_tokens"], "wall_s": round(time.time() - t0, 1),
    })


if __name__ == "__main__":
    main()
