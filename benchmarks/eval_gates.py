"""Eval gates: how often each promotion rule promotes a candidate of known true quality, and what
the evaluate stage costs on the real student. Prints one JSON line last.

    python benchmarks/eval_gates.py [--quick]

1. Decision quality (simulation, exact numbers for a seed): champion and candidate answer the same
   n frozen items; the candidate's true accuracy differs by delta. Promote rates of the paired rule
   (lower bound of the exact McNemar interval above -margin; `gates.ci_method: auto`) versus the
   baseline rule the gate used before (point difference within the margin).
2. Cost (real Gemma 3 270M + a LoRA adapter, ticket-triage): seconds of the whole evaluate stage
   (load, predictions, scoring, gates, routing confidences, reports) versus loading and predicting
   alone (the baseline: what the stage did before), and the routing forward pass on its own.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import emit, setup


def simulate(n: int, deltas: list[float], trials: int, margin: float, discord: float, seed: int = 0) -> dict:
    """Promote rates per true accuracy difference, for one margin."""
    import numpy as np

    from core.skills import GateConfig
    from eval_gates.gates import regression_gate

    rng = np.random.default_rng(seed)
    cfg = GateConfig(floor={"accuracy": 0.0}, margin=margin)
    out = {}
    for delta in deltas:
        paired = point = 0
        for _ in range(trials):
            # Discordant items: candidate-only wins with prob (discord + delta) / 2, champion-only (discord - delta) / 2.
            u = rng.random(n)
            b = u < (discord + delta) / 2
            c = (u >= (discord + delta) / 2) & (u < discord)
            same = rng.random(n) < 0.75  # concordant items: both right with prob 0.75
            champ = np.where(c, 1.0, np.where(b, 0.0, same.astype(float)))
            cand = np.where(b, 1.0, np.where(c, 0.0, same.astype(float)))
            ids = [str(i) for i in range(n)]

            def m(v):
                return {"n": n, "primary": "accuracy", "accuracy": float(v.mean()),
                        "item_scores": {"metric": "accuracy", "ids": ids, "values": v.tolist()}}

            paired += regression_gate(cfg, m(cand), m(champ)).passed
            point += cand.mean() - champ.mean() >= -margin
        out[f"delta{delta:+.2f}"] = {"paired_rule": round(paired / trials, 3),
                                     "point_rule_baseline": round(point / trials, 3)}
    return out


def cost(quick: bool) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from core.skills import load_skill
    from eval_gates.evaluate import evaluate_candidate
    from eval_gates.predict import predict
    from eval_gates.replay import replay_items
    from teachers.local import LocalModel
    from trainers.base_model import resolve_model

    skill = load_skill("ticket-triage")
    if quick:
        skill.eval_set = skill.eval_set[:8]
    items, traffic = replay_items(skill)
    items = items[:4] if quick else items
    base = resolve_model(skill.config.student.base_model)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        peft = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                              LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
        peft.save_pretrained(f"{tmp}/adapter")
        del peft
        # Baseline: what the stage did before (load base + adapter, answer eval set and replay sample).
        t0 = time.time()
        model = LocalModel(base, adapter_path=f"{tmp}/adapter")
        predict(model, skill.config, [e.input for e in skill.eval_set])
        predict(model, skill.config, [e.input for e in items])
        predictions_s = time.time() - t0
        del model
        t0 = time.time()
        out = evaluate_candidate(skill, base, f"{tmp}/adapter", None, items, Path(tmp) / "run", traffic=traffic)
        stage_s = time.time() - t0
    routing_s = out["routing"].get("seconds_to_score", 0.0)
    conf = [c for c in out["routing"].get("confidences") or [] if c is not None] or [0.0]
    return {"eval_items": len(skill.eval_set), "replay_items": len(items),
            "old_stage_load_and_predict_s_baseline": round(predictions_s, 2), "evaluate_stage_s": round(stage_s, 2),
            "routing_forward_pass_s": routing_s, "confidence_range": [round(min(conf), 3), round(max(conf), 3)],
            "candidate_accuracy": out["candidate"]["eval"]["accuracy"], "decision": out["decision"]["promote"],
            "routing_mode": out["routing"].get("mode"), "escalation_rate": out["routing"].get("escalation_rate")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer trials and items (under a minute)")
    args = ap.parse_args()
    setup()
    t0 = time.time()
    # 100 items: the size of ticket-triage's eval set; 15% of items answered differently by the two models.
    n, discord = 100, 0.15
    trials = 100 if args.quick else 1000
    sim = {f"margin{m:.2f}": simulate(n, [0.0, -0.05, -0.10], trials, m, discord) for m in (0.02, 0.05, 0.10)}
    sim_s = time.time() - t0
    emit({"benchmark": "eval_gates", "quick": args.quick,
          "simulation": {"n_items": n, "discordant_share": discord, "trials": trials,
                         "promote_rate": sim, "seconds": round(sim_s, 1)},
          "cost": cost(args.quick), "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
