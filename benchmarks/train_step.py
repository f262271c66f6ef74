"""QLoRA step time on the real student: answer-only LM-head scoring vs trl's CPU default.

Both are measured in the same run on the same batches (the machine is shared and noisy:
compare the ratio, not the absolute times). Prints one JSON line last.

    python benchmarks/train_step.py [--quick] [--skill ticket-triage]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from _common import emit, setup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 steps of batch 4 (under a minute once the model is cached)")
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    setup()
    from core.skills import load_skill
    from trainers.base_model import resolve_model
    from trainers.qlora import train_adapter

    steps, bs = (2, 4) if args.quick else (args.steps, args.batch_size)
    skill = load_skill(args.skill)
    model = resolve_model(skill.config.student.base_model)
    results = {}
    for mode in ("full_vocab_all_positions", "answer_only"):
        cfg = skill.config.model_copy(deep=True)
        cfg.student.train.max_steps, cfg.student.train.batch_size = steps, bs
        cfg.student.train.answer_only_logits = mode == "answer_only"
        with tempfile.TemporaryDirectory() as d:
            t0 = time.time()
            res = train_adapter(model, cfg, skill.seeds, [], d)
            rt = next(h["train_runtime"] for h in res.log_history if "train_runtime" in h)
            losses = [round(h["loss"], 4) for h in res.log_history if "loss" in h]
        results[mode] = {"s_per_step": round(rt / steps, 2), "wall_s": round(time.time() - t0, 1), "losses": losses,
                         "quantization": res.quantization}
    base, fast = results["full_vocab_all_positions"], results["answer_only"]
    emit({"benchmark": "train_step", "quick": args.quick, "steps": steps, "batch_size": bs,
          "model": skill.config.student.base_model, "quantization": fast["quantization"],
          "baseline_s_per_step": base["s_per_step"], "answer_only_s_per_step": fast["s_per_step"],
          "speedup": round(base["s_per_step"] / fast["s_per_step"], 2),
          "baseline_losses": base["losses"], "answer_only_losses": fast["losses"]})


if __name__ == "__main__":
    main()
