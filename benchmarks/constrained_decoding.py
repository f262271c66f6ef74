"""Constrained decoding (decoding.constrained, xgrammar) against free decoding, per shipped skill:
the share of invalid answers, the skill's own metric and decoding tokens/s, for the published
adapter (zero-shot, as the gates and the gateway decode it) and for the base model few-shot (the
local teacher's way of answering). Prints one JSON line last.

    python benchmarks/constrained_decoding.py [--quick] [--skills ticket-triage,json-extraction,tool-calling]
                                              [--adapter SKILL=PATH ...] [--shots 6] [--limit N]

Adapters: --adapter, else the registry's production version of the skill, else its newest
(none: the adapter rows are null). --quick: 3 eval items per skill, 2 shots (same keys).
Both modes decode the same prompts in the same batches (greedy), alternating which goes first; the
grammar engine's one-time set-up per model (its tokenizer table) is timed apart (grammar_setup_s).
"""

from __future__ import annotations

import argparse
import time

from _common import emit, setup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="3 eval items per skill, 2 shots")
    ap.add_argument("--skills", default="ticket-triage,json-extraction,tool-calling")
    ap.add_argument("--adapter", action="append", default=[], help="SKILL=PATH (repeatable)")
    ap.add_argument("--shots", type=int, default=None, help="few-shot examples for the base model (default 6)")
    ap.add_argument("--limit", type=int, default=None, help="eval items per skill (default: all)")
    ap.add_argument("--no-base", action="store_true", help="skip the base model few-shot")
    args = ap.parse_args()
    setup()
    import random

    from core.skills import load_skill
    from core.tasks import get_task, score_items
    from core.workdir import registry_root
    from eval_gates.predict import predict
    from registry import Registry
    from teachers.constrained import engine_version
    from teachers.local import LocalModel
    from trainers.base_model import resolve_model

    limit = args.limit or (3 if args.quick else None)
    shots_k = args.shots or (2 if args.quick else 6)
    given = dict(a.split("=", 1) for a in args.adapter)
    reg = Registry(registry_root())
    out: dict = {"benchmark": "constrained_decoding", "quick": args.quick, "engine": engine_version(),
                 "shots": shots_k, "skills": {}}
    models: dict[str, LocalModel] = {}

    def run(model, cfg, items, shots, constrained: bool) -> dict:
        task = get_task(cfg)
        c = cfg.model_copy(update={"decoding": cfg.decoding.model_copy(update={"constrained": constrained})})
        t0 = time.perf_counter()
        p = predict(model, c, [e.input for e in items], shots=shots)
        wall = time.perf_counter() - t0
        invalid = sum(pr is None or task.output_problem(pr, e.input) is not None for e, pr in zip(items, p.preds))
        _, agg = score_items(task, items, p.preds)
        toks = sum(p.completion_tokens or [])
        return {"invalid_rate": round(invalid / len(items), 3), task.primary: round(float(agg[task.primary]), 4),
                "cut_at_cap": sum(f == "length" for f in p.finish_reasons or []),
                "tokens_per_s": round(toks / wall, 1) if wall else None, "seconds": round(wall, 1),
                "answer_tokens_mean": round(toks / len(items), 1)}

    for name in args.skills.split(","):
        skill = load_skill(name)
        cfg = skill.config
        items = skill.eval_set[:limit] if limit else skill.eval_set
        base_path = resolve_model(cfg.student.base_model)
        adapter = given.get(name)
        if adapter is None and name in reg.skills():
            versions = reg.versions(name)
            if versions:
                v = reg.aliases(name).get("production") or max(versions)
                adapter = str(reg.resolve(name, version=v))
        row: dict = {"task": cfg.task, "metric": get_task(cfg).primary, "eval_items": len(items), "adapter": adapter}
        subjects = []
        if adapter:
            subjects.append(("adapter_zero_shot", LocalModel(base_path, adapter_path=adapter, name=f"{name}-adapter"), ()))
        if not args.no_base:
            if base_path not in models:
                models[base_path] = LocalModel(base_path, name=cfg.student.base_model)
            rng = random.Random(0)
            shots = [(s.input, s.output) for s in rng.sample(skill.seeds, min(shots_k, len(skill.seeds)))]
            subjects.append(("base_few_shot", models[base_path], shots))
        for key, model, shots in subjects:
            t0 = time.perf_counter()
            comp = model.grammar_compiler()
            comp.compile(get_task(cfg).answer_grammar(items[0].input if get_task(cfg).grammar_needs_input else None))
            r = {"grammar_setup_s": round(time.perf_counter() - t0, 2)}
            order = (False, True) if len(out["skills"]) % 2 == 0 else (True, False)  # alternate who goes first
            for constrained in order:
                r["constrained" if constrained else "free"] = run(model, cfg, items, shots, constrained)
            row[key] = r
        out["skills"][name] = row
        print(f"{name}: {row}", flush=True)
    emit(out)


if __name__ == "__main__":
    main()
