"""How stable is the default pipeline's result? One skill over teacher seeds x training seeds, each
run a fresh `distill run` in its own work dir (no pool, no champion, no cache; the converted base
model shared), reporting per run and as mean +- sd: the teacher's chosen audit score, the
student's eval score, promoted or rejected, teacher and training minutes. Prints one JSON line last.

    python benchmarks/student_stability.py [--skill ticket-triage] [--profile cpu-budget]
                                           [--teacher-seeds 3] [--train-seeds 2] [--quick]
                                           [--set student.train.distillation=mixed ...]
                                           [--teacher-cache DIR] [--keep-runs DIR]

Runs of one teacher seed share a teacher response cache (the teacher's requests are seeded), so the
second training seed costs training and evaluation only, and every training seed learns from the same
teacher data. `--teacher-cache DIR` keeps those caches (DIR/seed-<n>/) across invocations, so a later
invocation that changes only student or gate keys (`--set`) trains on the very same teacher data:
that is how training options are compared without the teacher's sampling noise.

--quick: the tiny random model as teacher and student, a tiny profile, 2 x 1 runs (same keys; the
figures mean nothing, the harness is what is checked). A full-size run of the default config takes
about 6 x the demo's time (~45 min for ticket-triage on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import REPO, emit

TINY = {"expansion": {"target_examples": 6},
        "teacher": {"few_shot": 4, "style_shots": 3, "batch_size": 8, "max_new_tokens": 12, "calibration_shot_sets": 1},
        "audit": {"floor": None, "folds": 3},
        "student": {"quantization": "nf4", "lora": {"r": 4, "alpha": 8}, "train": {"max_steps": 3, "batch_size": 8, "max_length": 1024}},
        "gates": {"eval_limit": 10, "replay": {"sample": 6}}}


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def mean_sd(xs: list) -> dict:
    xs = [x for x in xs if isinstance(x, (int, float))]
    if not xs:
        return {"mean": None, "sd": None, "min": None, "max": None}
    return {"mean": round(statistics.fmean(xs), 4), "sd": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0,
            "min": round(min(xs), 4), "max": round(max(xs), 4)}


def one_run(seeds_dir: Path, models: Path, skill: str, profile: str, teacher_seed: int, log: Path,
            cache: Path, keep: Path | None = None) -> dict:
    home = Path(tempfile.mkdtemp(prefix="distill-stability-"))
    try:
        (home / "models").symlink_to(models, target_is_directory=True)
        cache.mkdir(parents=True, exist_ok=True)
        (home / "cache").symlink_to(cache, target_is_directory=True)  # one teacher seed, one teacher's answers
        env = dict(os.environ, DISTILL_SEEDS_DIR=str(seeds_dir), DISTILL_HOME=str(home),
                   PREFECT_HOME=str(home / "prefect"), PREFECT_LOGGING_LEVEL="WARNING")
        env.pop("DISTILL_REGISTRY", None)
        t0 = time.time()
        with log.open("a") as f:
            rc = subprocess.call([str(Path(sys.executable).parent / "distill"), "run", skill, "--profile", profile,
                                  "--seed", str(teacher_seed), "--no-progress"], cwd=REPO, env=env,
                                 stdout=f, stderr=subprocess.STDOUT)
        found = sorted((home / "runs").rglob("summary.json")) if (home / "runs").is_dir() else []
        if rc != 0 or not found:
            return {"error": f"distill run exited {rc} (log: {log})", "wall_min": round((time.time() - t0) / 60, 2)}
        s = json.loads(found[-1].read_text())
        audit = s.get("audit") or {}
        chosen = next((o for o in audit.get("options", []) if o["option"] == audit.get("chosen")), None)
        metric = (s.get("evaluation") or {}).get("metric") or audit.get("metric")
        cand = ((s.get("evaluation") or {}).get("candidate") or {}).get("eval") or {}
        teacher = s.get("teacher") or {}
        teacher_s = teacher.get("seconds") or 0.0
        audit_s = sum(o.get("teacher_seconds") or 0 for o in audit.get("options", []))
        return {"teacher_audit_score": chosen["score"] if chosen else None, "audit_option": audit.get("chosen"),
                "student_eval": cand.get(metric), "invalid_rate": cand.get("invalid_rate"), "metric": metric,
                "promoted": bool(s["decision"]["promote"]), "decision": "; ".join(s["decision"]["reasons"])[:200],
                "accepted": (s.get("counts") or {}).get("accepted"), "teacher_cache_hits": (teacher.get("accounting")
                                                                                     or {}).get("cache_hits"),
                "teacher_min": round((teacher_s + audit_s) / 60, 2),
                "train_min": round(((s.get("training") or {}).get("seconds") or 0) / 60, 2),
                "wall_min": round((time.time() - t0) / 60, 2)}
    finally:
        if keep is not None and (home / "runs").is_dir():  # the run folder (checkpoints, eval) for later analysis
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(home / "runs", keep)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--profile", default="default", help="a profile of the skill file (e.g. cpu-budget)")
    ap.add_argument("--teacher-seeds", type=int, default=None, help="run seeds (teacher sampling and shots), default 3")
    ap.add_argument("--train-seeds", type=int, default=None, help="student.train.seed values, default 2")
    ap.add_argument("--quick", action="store_true", help="the tiny model, 2 x 1 runs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a skill-file key for every run, e.g. student.train.distillation=mixed (YAML value)")
    ap.add_argument("--first-train-seed", type=int, default=0,
                    help="training seeds run are first..first+train_seeds-1 (add seeds to an earlier invocation)")
    ap.add_argument("--first-teacher-seed", type=int, default=1000,
                    help="teacher seeds run are first..first+teacher_seeds-1 (add seeds to an earlier invocation)")
    ap.add_argument("--teacher-cache", type=Path, default=None,
                    help="keep each teacher seed's response cache here (DIR/seed-<n>/) across invocations")
    ap.add_argument("--keep-runs", type=Path, default=None,
                    help="copy each run's folder to DIR/t<teacher seed>-s<training seed>/ (e.g. with "
                         "--set student.train.keep_checkpoints=true for benchmarks/checkpoint_choice.py)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    os.chdir(REPO)
    from core.workdir import work_dir

    n_t = args.teacher_seeds or (2 if args.quick else 3)
    n_s = args.train_seeds or (1 if args.quick else 2)
    tmp = Path(tempfile.mkdtemp(prefix="distill-stability-seeds-"))
    seeds_dir = tmp / "seeds"
    shutil.copytree(REPO / "seeds", seeds_dir)
    path = seeds_dir / args.skill / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    base = {} if args.profile == "default" else (cfg.get("profiles") or {}).get(args.profile)
    if base is None:
        raise SystemExit(f"--profile {args.profile}: not in {args.skill}'s skill.yaml")
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. student.train.distillation=mixed")
        node: dict = {}
        cur = node
        parts = key.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = yaml.safe_load(value)
        base = merge(base, node)
    models = work_dir() / "models"
    if args.quick:
        from tests.tiny_models import build_tiny_model

        rows = [json.loads(x) for x in (REPO / "seeds" / args.skill / "seeds.jsonl").read_text().splitlines() if x.strip()]
        corpus = [f"{json.dumps(r['input']) if not isinstance(r['input'], str) else r['input']}\n"
                  f"{json.dumps(r['output']) if not isinstance(r['output'], str) else r['output']}\n" for r in rows]
        tiny = build_tiny_model(tmp / "tiny", corpus)
        cfg["teacher"] = {**cfg.get("teacher", {}), "model": str(tiny)}
        cfg["student"] = {**cfg.get("student", {}), "base_model": str(tiny)}
        base = merge(base, TINY)
    models.mkdir(parents=True, exist_ok=True)
    cfg["profiles"] = dict(cfg.get("profiles") or {})
    train_seeds = range(args.first_train_seed, args.first_train_seed + n_s)
    for s in train_seeds:
        cfg["profiles"][f"stability-s{s}"] = merge(base, {"student": {"train": {"seed": s}}})
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    log = tmp / "runs.log"
    runs = []
    t0 = time.time()
    for t in range(args.first_teacher_seed, args.first_teacher_seed + n_t):
        for s in train_seeds:
            cache = (args.teacher_cache.resolve() if args.teacher_cache else tmp / "cache") / f"seed-{t}"
            keep = args.keep_runs.resolve() / f"t{t}-s{s}" if args.keep_runs else None
            r = one_run(seeds_dir, models, args.skill, f"stability-s{s}", t, log, cache, keep)
            r.update(teacher_seed=t, train_seed=s)
            runs.append(r)
            print(json.dumps(r), flush=True)
    ok = [r for r in runs if "error" not in r]
    beat = [r["student_eval"] >= r["teacher_audit_score"] for r in ok
            if isinstance(r.get("student_eval"), (int, float)) and isinstance(r.get("teacher_audit_score"), (int, float))]
    out = {"benchmark": "student_stability", "quick": args.quick, "skill": args.skill, "profile": args.profile,
           "set": args.set,
           "teacher_seeds": n_t, "train_seeds": n_s, "runs": runs, "failed_runs": len(runs) - len(ok),
           "teacher_audit_score": mean_sd([r.get("teacher_audit_score") for r in ok]),
           "student_eval": mean_sd([r.get("student_eval") for r in ok]),
           "invalid_rate": mean_sd([r.get("invalid_rate") for r in ok]),  # answers the skill's parser rejected
           "student_eval_spread": (round(max(r["student_eval"] for r in ok) - min(r["student_eval"] for r in ok), 4)
                                   if ok and all(isinstance(r.get("student_eval"), (int, float)) for r in ok) else None),
           "student_at_or_above_teacher": f"{sum(beat)}/{len(beat)}",
           "promoted": f"{sum(r['promoted'] for r in ok)}/{len(ok)}",
           # runs that found their teacher seed cached spent no teacher time: not averaged in
           "teacher_min": mean_sd([r.get("teacher_min") for r in ok if not r.get("teacher_cache_hits")]),
           "train_min": mean_sd([r.get("train_min") for r in ok]),
           "wall_min": round((time.time() - t0) / 60, 2), "log": str(log)}
    emit(out)


if __name__ == "__main__":
    main()
