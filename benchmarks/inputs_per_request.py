"""Several new inputs per self-instruct request against one per request, on the embedded teacher:
inputs kept per teacher-minute and the share kept (each line checked as the pipeline checks it).
Prints one JSON line last.

    python benchmarks/inputs_per_request.py [--skill ticket-triage] [--n 32] [--per 1,4,8] [--quick]

--quick: 8 inputs, per-request counts 1 and 4 (same keys). The teacher's cache is off, so every
setting pays for its own requests; the same run seed for every setting.
"""

from __future__ import annotations

import argparse
import time

from _common import emit, setup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--n", type=int, default=None, help="inputs asked for per setting (default 32)")
    ap.add_argument("--per", default=None, help="comma-separated inputs_per_request values (default 1,4,8)")
    ap.add_argument("--quick", action="store_true", help="8 inputs, 1 and 4 per request")
    args = ap.parse_args()
    setup()
    from collections import Counter

    from core.skills import load_skill
    from teachers import open_teacher
    from teachers.strategies import self_instruct
    from trainers.base_model import resolve_model

    n = args.n or (8 if args.quick else 32)
    pers = [int(x) for x in (args.per or ("1,4" if args.quick else "1,4,8")).split(",")]
    skill = load_skill(args.skill)
    tcfg = skill.config.teacher.model_copy(update={"cache": False})
    out = {"benchmark": "inputs_per_request", "quick": args.quick, "skill": skill.name, "n": n, "settings": {}}
    with open_teacher(tcfg, resolve_model(tcfg.model) if tcfg.backend == "local" else None) as teacher:
        out["teacher"] = teacher.name
        for per in pers:
            skill.config = skill.config.model_copy(update={"expansion": skill.config.expansion.model_copy(
                update={"inputs_per_request": per})})
            before = teacher.report().get("requests", 0)
            t0 = time.perf_counter()
            kept, rejected = self_instruct(skill, teacher, n, seed=7)
            dt = time.perf_counter() - t0
            out["settings"][str(per)] = {
                "requests": teacher.report().get("requests", 0) - before, "kept": len(kept),
                "kept_share": round(len(kept) / n, 3), "seconds": round(dt, 1),
                "kept_per_teacher_minute": round(len(kept) / dt * 60, 1),
                "distinct_kept": len({e.input for e in kept}),
                "rejected_by_reason": dict(Counter(r.reason for r in rejected))}
            print(per, out["settings"][str(per)], flush=True)
    emit(out)


if __name__ == "__main__":
    main()
