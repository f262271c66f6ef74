"""The teacher audit for every option: k-fold on the skill's human seeds, each seed answered
once with shots from the other folds, scored with the skill's metric (teachers/audit.py).

Options: answerer score (label log-likelihoods) with random vs similar shots, raw vs
contextually calibrated; and answerer label (greedy sampling, the pre-issue-10 teacher) with
random vs similar shots, as the baseline measured in the same run. Teacher time per option
is reported (per-item similar shots defeat a server's prefix cache). Prints one JSON line last.

    python benchmarks/teacher_audit.py [--skill ticket-triage] [--quick] [--local-server transformers]
"""

from __future__ import annotations

import argparse
import time

from _common import emit, setup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="15 seeds, 3 folds, 2 content-free shot sets")
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--local-server", default=None, choices=["auto", "llama_cpp", "transformers"],
                    help="override teacher.local_server (how the embedded teacher is served)")
    args = ap.parse_args()
    setup()
    from core.skills import Skill, deep_merge, load_skill
    from teachers import open_teacher
    from teachers.audit import run_audit
    from trainers.base_model import resolve_model

    skill = load_skill(args.skill)
    if skill.config.task != "classification":
        raise SystemExit(f"{args.skill}: the option grid (scoring, calibration) is for classification skills")
    out = {"benchmark": "teacher_audit", "quick": args.quick, "skill": skill.name, "folds": 3 if args.quick else args.folds,
           "few_shot": skill.config.teacher.few_shot, "options": {}}
    for who in ("score", "label"):
        over = {"expansion": {"strategies": ["self_instruct", who]},
                "filters": {"target_precision": None},  # thresholds are not measured here (the label answerer has none)
                "teacher": {"shot_selection": "auto", "calibration": "auto", "cache": False,
                            **({"calibration_shot_sets": 2} if args.quick else {}),
                            **({"local_server": args.local_server} if args.local_server else {})},
                "audit": {"folds": 3 if args.quick else args.folds, "floor": None,
                          **({"max_items": 15} if args.quick else {})}}
        cfg = skill.config.model_validate(deep_merge(skill.config.model_dump(), over))
        sk = Skill(config=cfg, folder=skill.folder, profile=skill.profile, seeds=skill.seeds, eval_set=skill.eval_set)
        teacher_path = resolve_model(cfg.teacher.model) if cfg.teacher.backend == "local" else None
        with open_teacher(cfg.teacher, teacher_path, scoring=who == "score") as teacher:
            t0 = time.time()
            audit = run_audit(sk, teacher, args.seed)
            out["teacher_backend"] = teacher.kind
        out["audited_seeds"] = audit["n"]
        for o in audit["options"]:
            name = f"{'score' if who == 'score' else 'sample'}: {o['option']}"
            out["options"][name] = {k: o.get(k) for k in ("score", "macro_f1", "invalid_rate", "teacher_seconds",
                                                           "requests_sent", "predicted_distribution",
                                                           "per_label_precision", "per_label_recall")}
            print(f"{name:36s} {audit['metric']} {o['score']:.3f}  macro-F1 {o.get('macro_f1', 0):.3f}  "
                  f"teacher {o['teacher_seconds']:.1f} s  predicted {o.get('predicted_distribution')}", flush=True)
        out[f"{who}_seconds"] = round(time.time() - t0, 1)
    out["metric"] = audit["metric"]
    best = max(out["options"].items(), key=lambda kv: kv[1]["score"] or 0.0)
    out["best"] = best[0]
    emit(out)


if __name__ == "__main__":
    main()
