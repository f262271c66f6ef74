"""What the confidence filter buys the student: one teacher expansion, three students.

The teacher is audited (k-fold on the seeds), then writes and labels `--target` new inputs
with the option the audit chose. From the same candidates three QLoRA students are trained
exactly as the pipeline trains them (trainers.stage.train_skill) and scored zero-shot on the
skill's frozen eval set:
  seeds_only           the human seeds alone
  all_synthetic        seeds + every candidate that passes quality, dedup and contamination
  confidence_filtered  seeds + those that also pass the per-label audit thresholds and the
                       label-distribution bound (the skill's filters.target_precision and
                       filters.max_label_distance)
Nothing is committed to the pool, the dedup index or the registry. Prints one JSON line last.

    python benchmarks/confidence_filter.py [--skill ticket-triage] [--target 200] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

from _common import emit, setup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="8 new inputs, 2 training steps, 10 eval items (about 2 minutes: three model loads)")
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--target", type=int, default=200, help="new inputs the teacher writes")
    ap.add_argument("--seed", type=int, default=0, help="teacher seed (new inputs, shots); cached answers are reused")
    ap.add_argument("--train-seed", type=int, default=None, help="student.train.seed (default: the skill's)")
    ap.add_argument("--variants", default="seeds_only,all_synthetic,confidence_filtered")
    args = ap.parse_args()
    setup()
    from core.records import write_json
    from core.skills import Skill, deep_merge, load_skill
    from core.workdir import work_dir
    from eval_gates.predict import predict
    from core.tasks import get_task, score_items
    from filters import filter_stage
    from teachers import open_teacher
    from teachers.audit import run_audit
    from teachers.local import LocalModel
    from teachers.strategies import answerer, run_expansion
    from trainers.base_model import resolve_model
    from trainers.stage import train_skill

    def variant(base: Skill, over: dict) -> Skill:
        cfg = base.config.model_validate(deep_merge(base.config.model_dump(), over))
        return Skill(config=cfg, folder=base.folder, profile=base.profile, seeds=base.seeds, eval_set=base.eval_set)

    skill = load_skill(args.skill)
    quick = {"student": {"train": {"max_steps": 2, "eval_steps": 2}}, "audit": {"max_items": 15, "folds": 3},
             "teacher": {"calibration_shot_sets": 2}} if args.quick else {}
    over = {"expansion": {"target_examples": 8 if args.quick else args.target}}
    if args.train_seed is not None:
        over["student"] = {"train": {"seed": args.train_seed}}
    skill = variant(skill, deep_merge(quick, over))
    cfg = skill.config
    task = get_task(cfg)
    items = skill.eval_set[:10] if args.quick else skill.eval_set
    root = work_dir() / "bench" / "confidence_filter" / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    teacher_path = resolve_model(cfg.teacher.model) if cfg.teacher.backend == "local" else None
    student_path = resolve_model(cfg.student.base_model)

    t0 = time.time()
    with open_teacher(cfg.teacher, teacher_path, scoring=answerer(cfg) == "score") as teacher:
        audit = run_audit(skill, teacher, args.seed) if cfg.audit.enabled else None
        exp = run_expansion(skill, teacher, root, args.seed, choice=audit["use"] if audit else None)
    teacher_seconds = round(time.time() - t0, 1)
    print(f"teacher: audit {audit and audit['score']} ({audit and audit['chosen']}), {len(exp.examples)} labeled "
          f"in {teacher_seconds} s", flush=True)

    out = {"benchmark": "confidence_filter", "quick": args.quick, "skill": skill.name, "metric": task.primary,
           "seed": args.seed, "train_seed": cfg.student.train.seed,
           "eval_items": len(items), "target": cfg.expansion.target_examples, "labeled": len(exp.examples),
           "teacher_seconds": teacher_seconds,
           "audit": None if audit is None else {k: audit[k] for k in ("score", "chosen", "n", "folds")},
           "generated_labels": dict(Counter(e.output for e in exp.examples)), "variants": {}}
    plain = {"filters": {"target_precision": None, "max_label_distance": None, "min_confidence": 0.0}}
    for name in args.variants.split(","):
        run_dir = root / name
        run_dir.mkdir()
        if audit is not None:
            write_json(run_dir / "teacher_audit.json", audit)
        if name == "seeds_only":
            accepted, stats = [], {}
        else:
            sk = variant(skill, plain) if name == "all_synthetic" else skill
            res = filter_stage(sk, exp.examples, [], [], run_dir)
            accepted, stats = res.kept, res.stats
        t1 = time.time()
        trained = train_skill(skill, student_path, run_dir, accepted)
        student = LocalModel(student_path, adapter_path=trained["result"]["adapter_dir"], name=name)
        p = predict(student, cfg, [e.input for e in items])
        _, agg = score_items(task, items, p.preds)
        out["variants"][name] = {
            "synthetic": len(accepted), "train_examples": trained["pool"].get("train"),
            task.primary: agg.get(task.primary), "macro_f1": agg.get("macro_f1"),
            "predicted_distribution": agg.get("predicted_distribution"),
            "synthetic_labels": dict(Counter(e.output for e in accepted)),
            "confidence": (stats or {}).get("confidence"), "seconds": round(time.time() - t1, 1)}
        print(f"{name:22s} synthetic {len(accepted):4d}  {task.primary} {agg.get(task.primary):.3f}  "
              f"predicted {agg.get('predicted_distribution')}", flush=True)
        (root / "result.json").write_text(json.dumps(out, indent=1, default=str))
    emit(out)


if __name__ == "__main__":
    main()
