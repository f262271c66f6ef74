"""The honest result for one skill: the base model zero-shot, the teacher few-shot (greedy
sampled answers with random balanced shots, the `label` answerer; benchmarks/teacher_audit.py
measures the scored, calibrated and similar-shot options) and the published adapter zero-shot, scored with the skill's own metric
on its frozen eval set. Prints one JSON line last.

    python benchmarks/skill_quality.py [--skill ticket-triage] [--quick] [--adapter PATH]

Without --adapter it uses the registry's production version of the skill, else its newest
version (null when there is none).
"""

from __future__ import annotations

import argparse
import time

from _common import emit, setup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="first 20 eval items only")
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--adapter", default=None, help="adapter folder (default: the registry's production version)")
    ap.add_argument("--local-server", default=None, choices=["auto", "llama_cpp", "transformers"],
                    help="override teacher.local_server (how the embedded teacher is served)")
    ap.add_argument("--no-base", action="store_true", help="skip the base model zero-shot")
    ap.add_argument("--no-adapter", action="store_true", help="skip the adapter (e.g. when the run already scored it)")
    args = ap.parse_args()
    setup()
    from core.skills import load_skill
    from core.workdir import registry_root
    from eval_gates.predict import predict
    from core.tasks import get_task, score_items
    from registry import Registry
    from teachers import open_teacher
    from teachers.strategies import label, shot_picker
    from trainers.base_model import resolve_model
    from teachers.local import LocalModel

    skill = load_skill(args.skill)
    cfg = skill.config
    task = get_task(cfg)
    items = skill.eval_set[:20] if args.quick else skill.eval_set
    base_path = resolve_model(cfg.student.base_model)
    adapter = args.adapter
    if adapter is None and not args.no_adapter:
        reg = Registry(registry_root())
        versions = reg.versions(skill.name) if skill.name in reg.skills() else []
        if versions:
            v = reg.aliases(skill.name).get("production") or max(versions)
            adapter = str(reg.resolve(skill.name, version=v))

    def summarize(preds, prompt_tokens, seconds) -> dict:
        _, agg = score_items(task, items, preds)
        keep = {k: v for k, v in agg.items() if isinstance(v, (int, float)) and k != "n"}
        keep.update(prompt_tokens_per_call=round(sum(prompt_tokens) / max(1, len(prompt_tokens)), 1),
                    seconds=round(seconds, 1))
        if "predicted_distribution" in agg:
            keep["predicted_distribution"] = agg["predicted_distribution"]
        return keep

    out = {"benchmark": "skill_quality", "quick": args.quick, "skill": skill.name, "task": cfg.task,
           "metric": task.primary, "eval_items": len(items), "adapter": adapter}
    out["base_zero_shot"] = None
    if not args.no_base:
        base = LocalModel(base_path, name=cfg.student.base_model)
        t0 = time.time()
        p = predict(base, cfg, [e.input for e in items])
        out["base_zero_shot"] = summarize(p.preds, p.prompt_tokens, time.time() - t0)
        del base
    # The teacher as the `label` answerer uses it (same backend, random shots and re-asks), without the cache:
    # eval answers are never stored where a later run could find them.
    tcfg = cfg.teacher.model_copy(update={"cache": False, **({"local_server": args.local_server}
                                                              if args.local_server else {})})
    with open_teacher(tcfg, resolve_model(cfg.teacher.model) if cfg.teacher.backend == "local" else None) as teacher:
        t0 = time.time()
        unlabeled = [e.__class__(**{**e.__dict__, "output": None}) for e in items]
        labeled, rejected = label(skill, teacher, unlabeled, seed=0, picker=shot_picker(skill, "random"))
        by_input = {e.input: e.output for e in labeled}  # labeled examples get content ids: match by input
        preds = [by_input.get(e.input) for e in items]
        report = teacher.report()
    out["teacher_few_shot"] = summarize(preds, [report.get("prompt_tokens", 0) / max(1, report.get("requests", 1))],
                                        time.time() - t0)
    out["teacher_few_shot"].update(shots=cfg.teacher.few_shot, backend=teacher.kind, dropped=len(rejected))
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
