"""Which checkpoint should become the adapter? Scores every kept checkpoint of finished runs on the
skill's frozen eval set and reports what each selection rule would have published, per run and as
mean +- sd over runs. Prints one JSON line last.

    python benchmarks/student_stability.py --keep-runs DIR --set student.train.keep_checkpoints=true
    python benchmarks/checkpoint_choice.py --runs DIR [--skill ticket-triage] [--quick]

Rules (each reads only what a run knows when training ends: the validation split's loss and
token accuracy at every evaluation):
  eval_loss         lowest validation loss (ties: the earlier), the Trainer's load_best_model_at_end
  token_accuracy    highest validation token accuracy (ties: the earlier)
  last              the last checkpoint (a fixed schedule)
  tolerance_<d>     the latest checkpoint whose validation loss is within d of the lowest
  average_tail      the uniform average of the LoRA weights of the checkpoints in the second half of
                    training (checkpoint averaging along one trajectory: Vaswani et al. 2017 averaged
                    their last checkpoints; Izmailov et al. 2018, "Averaging Weights Leads to Wider Optima")
  average_all       the same over every evaluated checkpoint
and, as an upper bound no rule can reach without the eval set, `oracle`: the best eval score.

--quick: only the first 20 eval items (same keys). Each checkpoint costs one pass over the eval set
(~40 s for ticket-triage's 100 items on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import emit, setup

TOLERANCES = (0.005, 0.01, 0.02, 0.05)


def step_of(p: Path) -> int:
    return int(p.name.split("-")[-1])


def choose(evals: list[dict], steps: list[int]) -> dict[str, int]:
    """The step each rule picks among the evaluated steps that have a checkpoint (the trainer's own rule)."""
    from trainers.qlora import select_checkpoint

    out = {rule: select_checkpoint(evals, steps, rule) for rule in ("last", "eval_loss", "token_accuracy")}
    out.update({f"tolerance_{d}": select_checkpoint(evals, steps, "eval_loss", d) for d in TOLERANCES})
    return {k: v for k, v in out.items() if v is not None}


def validation_records(run: Path) -> dict:
    """{"eval": [...]} from train/train_metrics.json, or, for a run killed before writing it, from the
    newest checkpoint's trainer_state.json (the Trainer's own log)."""
    from trainers.qlora import last_checkpoint, training_metrics

    path = run / "train" / "train_metrics.json"
    if path.is_file():
        return json.loads(path.read_text())
    last = last_checkpoint(run / "train" / "checkpoints")
    history = json.loads((Path(last) / "trainer_state.json").read_text())["log_history"] if last else []
    return {"eval": training_metrics(history)[1]}


def average_adapter(ckpts: list[Path], dest: Path) -> Path:
    """A LoRA adapter folder whose tensors are the uniform mean of ckpts' (same shapes, same config)."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    acc: dict = {}
    for c in ckpts:
        for k, v in load_file(str(c / "adapter_model.safetensors")).items():
            acc[k] = acc[k] + v.float() if k in acc else v.float()
    save_file({k: (v / len(ckpts)).contiguous() for k, v in acc.items()}, str(dest / "adapter_model.safetensors"))
    shutil.copy(ckpts[-1] / "adapter_config.json", dest / "adapter_config.json")
    return dest


def mean_sd(xs: list) -> dict:
    xs = [x for x in xs if isinstance(x, (int, float))]
    if not xs:
        return {"mean": None, "sd": None, "spread": None}
    return {"mean": round(statistics.fmean(xs), 4), "sd": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0,
            "spread": round(max(xs) - min(xs), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path, required=True, help="folder holding kept run folders (any depth)")
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--quick", action="store_true", help="first 20 eval items only")
    args = ap.parse_args()
    runs_root = args.runs.resolve()
    setup()
    from core.skills import load_skill
    from core.tasks import get_task, score_items
    from eval_gates.predict import predict
    from teachers.local import LocalModel
    from trainers.base_model import resolve_model

    skill = load_skill(args.skill)
    cfg = skill.config
    task = get_task(cfg)
    items = skill.eval_set[:20] if args.quick else list(skill.eval_set)
    if cfg.gates.eval_limit and not args.quick:
        items = items[: cfg.gates.eval_limit]
    metric = cfg.gates.metric or task.primary
    default_base = resolve_model(cfg.student.base_model)
    found = sorted({p.parents[3] for p in runs_root.rglob("train/checkpoints/checkpoint-*/adapter_model.safetensors")})
    if not found:
        raise SystemExit(f"--runs {runs_root}: no run folder with train/checkpoints/checkpoint-*/ under it")
    tmp = Path(tempfile.mkdtemp(prefix="checkpoint-choice-"))
    per_run = []
    t0 = time.time()

    def score(adapter: Path, base: str) -> float:
        model = LocalModel(base, adapter_path=str(adapter), name=adapter.name)
        p = predict(model, cfg, [e.input for e in items])
        _, agg = score_items(task, items, p.preds)
        return round(float(agg[metric]), 4)

    try:
        for run in found:
            tm = validation_records(run)
            ckpts = sorted((p for p in (run / "train" / "checkpoints").glob("checkpoint-*")
                            if (p / "adapter_model.safetensors").is_file()), key=step_of)
            if not ckpts:
                continue
            summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
            audit = summary.get("audit") or (json.loads((run / "teacher_audit.json").read_text())
                                             if (run / "teacher_audit.json").is_file() else {})
            teacher = next((o["score"] for o in audit.get("options", []) if o["option"] == audit.get("chosen")), None)
            rec = run / "train" / "train_record.json"
            record = json.loads(rec.read_text()) if rec.is_file() else {}
            base = (record.get("base_model") or {}).get("path") or ""  # the base the run trained on, while it exists
            base = base if base and Path(base).is_dir() else default_base
            scores = {step_of(c): score(c, base) for c in ckpts}
            picks = choose(tm.get("eval") or [], list(scores))
            row = {"run": str(run.relative_to(runs_root)), "teacher_audit_score": teacher,
                   "val": [{"step": e["step"], "eval_loss": round(e["eval_loss"], 4),
                            "token_accuracy": round(e.get("eval_mean_token_accuracy", float("nan")), 4)}
                           for e in tm.get("eval") or []],
                   "eval_by_step": scores, "picks": picks,
                   "rules": {rule: scores[step] for rule, step in picks.items()}}
            half = max(scores) / 2
            tail = [c for c in ckpts if step_of(c) > half] or ckpts[-1:]
            row["rules"]["average_tail"] = score(average_adapter(tail, tmp / f"{len(per_run)}-tail"), base)
            row["rules"]["average_all"] = score(average_adapter(ckpts, tmp / f"{len(per_run)}-all"), base)
            row["rules"]["oracle"] = max(scores.values())
            per_run.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rules = sorted({r for row in per_run for r in row["rules"]})
    table = {}
    for rule in rules:
        xs = [row["rules"].get(rule) for row in per_run]
        beat = [row["rules"][rule] >= row["teacher_audit_score"] for row in per_run
                if rule in row["rules"] and isinstance(row["teacher_audit_score"], (int, float))]
        table[rule] = {**mean_sd(xs), "per_run": xs, "at_or_above_teacher": f"{sum(beat)}/{len(beat)}"}
    emit({"benchmark": "checkpoint_choice", "quick": args.quick, "skill": skill.name, "metric": metric,
          "eval_items": len(items), "runs": len(per_run), "rules": table, "per_run": per_run,
          "seconds": round(time.time() - t0, 1)})


if __name__ == "__main__":
    main()
