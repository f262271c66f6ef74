"""The honest result: base model zero-shot, teacher few-shot and the published adapter
zero-shot, measured the same way on the skill's frozen eval set. Prints one JSON line last.

    python benchmarks/triage_quality.py [--quick] [--adapter PATH] [--skill ticket-triage]

Without --adapter it uses the registry's production version of the skill (null when none).
"""

from __future__ import annotations

import argparse
import time

from _common import emit, setup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first 20 eval items only")
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--adapter", default=None, help="adapter folder (default: registry production version)")
    args = ap.parse_args()
    setup()
    from core.skills import load_skill
    from core.workdir import registry_root
    from eval_gates.metrics import classification_metrics
    from eval_gates.predict import predict
    from registry import Registry, RegistryError
    from teachers.expand import label_inputs
    from teachers.local import LocalModel
    from trainers.base_model import resolve_model

    skill = load_skill(args.skill)
    cfg = skill.config
    items = skill.eval_set[:20] if args.quick else skill.eval_set
    golds = [e.output for e in items]
    base_path = resolve_model(cfg.student.base_model)
    adapter = args.adapter
    if adapter is None:
        try:
            adapter = str(Registry(registry_root()).path(skill.name))
        except RegistryError:
            adapter = None

    def summarize(preds, prompt_tokens, seconds):
        m = classification_metrics(golds, preds, cfg.labels)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "invalid_rate": m["invalid_rate"],
                "prompt_tokens_per_call": round(sum(prompt_tokens) / len(prompt_tokens), 1),
                "predicted_distribution": m["predicted_distribution"], "seconds": round(seconds, 1)}

    out = {"benchmark": "triage_quality", "quick": args.quick, "skill": skill.name, "eval_items": len(items),
           "adapter": adapter}
    base = LocalModel(base_path, name=cfg.student.base_model)
    t0 = time.time()
    p = predict(base, cfg, [e.input for e in items])
    out["base_zero_shot"] = summarize(p.preds, p.prompt_tokens, time.time() - t0)
    # The teacher exactly as expansion uses it: few-shot seeds, balanced over labels.
    teacher = base if cfg.teacher.model == cfg.student.base_model else LocalModel(resolve_model(cfg.teacher.model))
    t0 = time.time()
    labeled, rejected = label_inputs(skill, teacher, items, seed=0)
    by_input = {e.input: e for e in labeled}
    preds = [by_input[e.input].output if e.input in by_input else None for e in items]
    tokens = [e.meta["label_prompt_tokens"] for e in labeled] + [r.example.meta["label_prompt_tokens"] for r in rejected]
    out["teacher_few_shot"] = summarize(preds, tokens, time.time() - t0)
    out["teacher_few_shot"]["shots"] = cfg.teacher.few_shot
    del base, teacher
    if adapter:
        student = LocalModel(base_path, adapter_path=adapter, name="adapter")
        t0 = time.time()
        p = predict(student, cfg, [e.input for e in items])
        out["adapter_zero_shot"] = summarize(p.preds, p.prompt_tokens, time.time() - t0)
    else:
        out["adapter_zero_shot"] = None
    emit(out)


if __name__ == "__main__":
    main()
