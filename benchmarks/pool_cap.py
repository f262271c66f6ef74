"""What should a run train on once the pool is over `student.train.max_pool_examples`? Builds a
multi-run pool from finished runs' accepted examples and trains one fresh adapter per rule on the
same data, reporting the skill's eval score and training minutes per rule. Prints one JSON line last.

    python benchmarks/student_stability.py --keep-runs DIR            # 3 teacher seeds -> 3 batches
    python benchmarks/pool_cap.py --runs DIR [--skill ticket-triage] [--cap N] [--train-seeds 1] [--quick]

The batches are the `accepted.jsonl` of the run folders under DIR (runs with the same examples, e.g.
two training seeds of one teacher seed, count once), in created_at order: the last is "this run's"
new examples (always trained on, as in the pipeline), the others are the pool, each deduplicated
against the batches before it with the skill's own exact and MinHash filters, as the dedup index
would have done when it joined. Rules:
  none      the whole pool (no cap)
  newest    the newest `cap` pooled examples by created_at (student.train.pool_sampling: newest)
  uniform   a seeded uniform sample of `cap` pooled examples (student.train.pool_sampling: uniform)
`--cap` defaults to half the pool, so the cap binds as it would on the 2n-th run with a cap of n
runs' data. Every rule trains with the skill's default training config and is scored on the
skill's frozen eval set (gates.eval_limit items), decoding as the gates do.

--quick: the tiny random model, seeds relabeled as three synthetic teacher batches, 3 training
steps and 10 eval items (same keys; the figures mean nothing, the harness is what is checked).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import REPO, emit, setup

RULES = ("none", "newest", "uniform")


def load_batches(runs_root: Path) -> list[list]:
    """Distinct accepted batches under runs_root, oldest first (by their newest created_at)."""
    from core.records import instant_key, read_examples

    seen, batches = set(), []
    for path in sorted(runs_root.rglob("accepted.jsonl")):
        if "pool" in path.parts:
            continue
        batch = [e for e in read_examples(path) if e.output is not None]
        key = frozenset((e.input, e.output) for e in batch)  # content: a rerun of one teacher seed is one batch
        if batch and key not in seen:
            seen.add(key)
            batches.append(batch)
    return sorted(batches, key=lambda b: max(instant_key(e.created_at) for e in b))


def build_pool(batches: list[list], seeds: list, filters_cfg) -> tuple[list, list, dict]:
    """(pool, own, report): every batch but the last deduplicated against the seeds and the batches
    before it (exact, then MinHash near-duplicates: the pipeline's dedup index), in order; own is the
    last batch, deduplicated against all of that."""
    from filters.base import run_filters
    from filters.dedup import ExactDedup, NearDedup

    pool, dropped = [], []
    for batch in batches:
        ref = seeds + pool
        kept, rejected, _ = run_filters(batch, [ExactDedup.from_config(ref, filters_cfg),
                                                NearDedup.in_memory(ref, filters_cfg)])
        dropped.append(len(rejected))
        pool.extend(kept)
    own_n = len(batches[-1]) - dropped[-1]
    return pool[: len(pool) - own_n], pool[len(pool) - own_n:], {
        "batches": [len(b) for b in batches], "dropped_as_duplicates": dropped}


def quick_batches(seeds: list) -> list[list]:
    """Three synthetic teacher batches from the seeds (words shuffled per batch, so the dedup keeps
    them), one day apart: the harness check only."""
    import random
    from dataclasses import replace

    def shuffled(text: str, rng: random.Random) -> str:
        words = text.split()
        rng.shuffle(words)
        return " ".join(words)

    rngs = [random.Random(b) for b in range(3)]
    return [[replace(e, id=f"{e.id}-b{b}", input=shuffled(e.input, rngs[b]), source="teacher",
                     created_at=f"2026-11-0{b + 1}T00:00:00+00:00") for e in seeds] for b in range(3)]


def mean_sd(xs: list) -> dict:
    xs = [x for x in xs if isinstance(x, (int, float))]
    if not xs:
        return {"mean": None, "sd": None}
    return {"mean": round(statistics.fmean(xs), 4), "sd": round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path, default=None, help="folder holding finished run folders (any depth)")
    ap.add_argument("--skill", default="ticket-triage")
    ap.add_argument("--cap", type=int, default=None, help="max_pool_examples for the capped rules (default: half the pool)")
    ap.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, of {', '.join(RULES)}")
    ap.add_argument("--train-seeds", type=int, default=1, help="student.train.seed values 0..n-1, one adapter each")
    ap.add_argument("--quick", action="store_true", help="the tiny model and synthetic batches")
    args = ap.parse_args()
    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    if not rules or any(r not in RULES for r in rules):
        raise SystemExit(f"--rules {args.rules!r}: expected a comma-separated subset of {', '.join(RULES)}")
    if not args.quick and args.runs is None:
        raise SystemExit("--runs DIR is required (a folder of finished runs: student_stability.py --keep-runs DIR), "
                         "or --quick")
    setup()
    from core.skills import load_skill
    from core.tasks import get_task, score_items
    from eval_gates.predict import predict
    from teachers.local import LocalModel
    from trainers.base_model import resolve_model
    from trainers.data import cap_pool
    from trainers.stage import train_skill

    skill = load_skill(args.skill)
    cfg = skill.config
    task = get_task(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="pool-cap-"))
    items = list(skill.eval_set)
    if args.quick:
        from tests.tiny_models import build_tiny_model

        corpus = [f"{e.input}\n{e.output}\n" for e in skill.seeds]
        student = str(build_tiny_model(tmp / "tiny", corpus))
        cfg.student.train.max_steps = 3
        cfg.student.train.max_length = 1024
        items = items[:10]
        batches = quick_batches(skill.seeds)
    else:
        student = resolve_model(cfg.student.base_model)
        batches = load_batches(args.runs.resolve())
        if len(batches) < 2:
            raise SystemExit(f"--runs {args.runs}: {len(batches)} distinct accepted.jsonl batch(es); need at least 2 "
                             "(a pool and this run's new examples)")
        if cfg.gates.eval_limit:
            items = items[: cfg.gates.eval_limit]
    pool, own, report = build_pool(batches, skill.seeds, cfg.filters)
    cap = args.cap or max(1, len(pool) // 2)
    metric = cfg.gates.metric or task.primary
    print(json.dumps({"pool": len(pool), "own": len(own), "cap": cap, **report}), flush=True)
    rows = []
    t0 = time.time()
    try:
        for seed in range(args.train_seeds):
            cfg.student.train.seed = seed
            for rule in rules:
                data, capped = (cap_pool(pool, own, None) if rule == "none"
                                else cap_pool(pool, own, cap, rule, seed))
                run_dir = tmp / f"{rule}-s{seed}"
                run_dir.mkdir()
                out = train_skill(skill, student, run_dir, data)
                res = out["result"]
                model = LocalModel(student, adapter_path=res["adapter_dir"], name=f"{rule}-s{seed}")
                p = predict(model, cfg, [e.input for e in items])
                _, agg = score_items(task, items, p.preds)
                row = {"rule": rule, "train_seed": seed, "pool_used": capped["pool_used"],
                       "train_examples": res["train_examples"], "steps": res["steps"],
                       "eval": round(float(agg[metric]), 4),
                       "invalid_rate": agg.get("invalid_rate"),
                       "train_min": round(res["seconds"] / 60, 2)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                shutil.rmtree(run_dir / "train" / "checkpoints", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by_rule = {}
    for rule in rules:
        mine = [r for r in rows if r["rule"] == rule]
        by_rule[rule] = {"eval": mean_sd([r["eval"] for r in mine]), "train_min": mean_sd([r["train_min"] for r in mine]),
                         "pool_used": mine[0]["pool_used"] if mine else None,
                         "per_seed": [r["eval"] for r in mine]}
    base = (by_rule.get("none") or {}).get("train_min", {}).get("mean")
    for rule, r in by_rule.items():  # cost relative to training on the whole pool, measured in this run
        r["train_time_vs_none"] = round(r["train_min"]["mean"] / base, 3) if base and r["train_min"]["mean"] else None
    emit({"benchmark": "pool_cap", "quick": args.quick, "skill": skill.name, "metric": metric,
          "eval_items": len(items), "pool": len(pool), "own": len(own), "cap": cap, **report,
          "rules": by_rule, "runs": rows, "seconds": round(time.time() - t0, 1), "repo": str(REPO)})


if __name__ == "__main__":
    main()
