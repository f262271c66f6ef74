"""Routing rules on the same items, in one run: which requests should the small model keep?

For every shipped skill, the student (its published adapter) and the teacher (with the option its run
measured, routing.json's teacher_option) answer the same items: the frozen eval set and the replay sample.
Each rule picks its point on four fifths of the items and is measured on the other fifth, each fifth in turn
(5-fold cross-fitting, `--folds`), so no rule is scored on the items it was tuned on and each picks from nearly
as many items as a run does; over `--repeats` (10) splits of the items, since one split's figure moves by about
0.02 between splits on ~140 items (`served_sd`) (with halves, a rule that asks for evidence before it escalates, as `quality`
does, sees half the evidence a run has: on a student distilled from the 95% teacher, quality escalated nothing
with halves and its weak band with fifths):

  today         the rule before both lanes were measured: the most answers kept whose point estimate of the
                kept error is <= routing.target_error_rate (0.05), blind to the teacher
  quality       the highest served quality, fewest teacher calls on ties, a band escalated only where the
                teacher is measured better (eval_gates.routing.choose_point)
  budget_0.2    the highest served quality with at most 20% of requests sent to the teacher
  target_0.05   keep where a one-sided exact bound on the kept error is <= 0.05, else the quality policy
  routellm_0.2  the peer rule (RouteLLM, Ong et al. 2024): the threshold calibrated so that 20% of requests
                go to the strong model, whatever the quality

Reported per rule: served quality (the skill's primary metric of the answers served), teacher share, and cost
per 1,000 requests (--teacher-price per 1,000 teacher answers, --student-price per 1,000 student answers; the
student answers every request). Then the same with a strong teacher: the project's fake OpenAI server
scripted to answer right 95% of the time (a deterministic 5% of items get another item's answer), and for
label skills with the teacher lane as it was before both lanes were measured (a plain greedy few-shot prompt,
`plain_greedy_teacher`): its `today` row is the old gateway's behaviour.

    python benchmarks/routing.py [--quick] [--skills ticket-triage ...] [--teacher-price 10] [--student-price 0.2]
    python benchmarks/routing.py --through-gateway     # also: ticket-triage's eval set and replay sample
                                                       # through `distill gateway` (its lanes, its teacher)
    python benchmarks/routing.py --skills ticket-triage --registry WORKDIR/base/registry
                                                       # a student distilled from the 95% teacher: the version 1
                                                       # of `python benchmarks/flywheel.py --keep`

Full size: each skill's production adapter in the registry (DISTILL_REGISTRY or .distill/registry; `make demo`
publishes ticket-triage), or its candidate; a skill with neither is reported as skipped. --quick: a tiny random
Gemma 3 with a LoRA adapter trained a few steps on the ticket-triage seeds as student and as teacher, 16 eval
and 8 replay items per skill, answers cut at 8 / 24 tokens. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

from _common import REPO, emit, setup

SHIPPED = ("ticket-triage", "json-extraction", "tool-calling")


def _folds(n: int, k: int, repeat: int = 0) -> list[list[int]]:
    """Item indices in k interleaved folds: repeat 0, item i in fold i % k; repeat r > 0, the same over a
    permutation of the items seeded by r (repeated cross-fitting: another split of the same items)."""
    order = list(range(n))
    if repeat:
        random.Random(repeat).shuffle(order)
    return [[order[i] for i in range(n) if i % k == f] for f in range(k)]


def _rules(curve: dict, cfg) -> dict:
    """rule -> the point it picks on `curve` (a served_curve)."""
    from eval_gates.routing import choose_point, legacy_point, share_rule_point

    rc = cfg.routing
    kw = dict(significance=rc.significance, level=rc.confidence_level)
    return {
        "today": legacy_point(curve, rc.target_error_rate),
        "quality": choose_point(curve, "quality", **kw)["point"],
        "budget_0.2": choose_point(curve, "budget", max_teacher_share=0.2, **kw)["point"],
        "target_0.05": choose_point(curve, "target_error", target_error_rate=0.05, fallback="quality", **kw)["point"],
        "routellm_0.2": share_rule_point(curve, 0.2),
    }


def _apply(items, point) -> tuple[float, int]:
    """(sum of served scores, teacher calls) of `point`'s rule on `items`."""
    from eval_gates.routing import _served_teacher, usable

    keep_all = point.get("_keep_all")
    total, calls = 0.0, 0
    for it in items:
        keep = it.valid and usable(it.signal) and point["kept"] > 0 and \
            (keep_all or float(it.signal) >= float(point["threshold"]))
        if keep:
            total += it.student
        else:
            total += _served_teacher(it)
            calls += 1
    return total, calls


def cross_fit(items, cfg, teacher_price: float, student_price: float, folds: int = 5, repeats: int = 1) -> dict:
    """Every rule chosen on all folds but one and measured on that one, each fold in turn; plus each lane alone.
    `repeats` > 1: as many splits of the items (`_folds`), the figures their mean, with `served_sd` (the spread
    between splits: how much one split's figure says)."""
    import statistics

    from eval_gates.routing import served_curve

    n = len(items)
    per: dict[str, list[tuple[float, float]]] = {}
    for r in range(repeats):
        parts = _folds(n, folds, r)
        sums: dict[str, list[float]] = {}
        for f, held in enumerate(parts):
            fit = [i for g, part in enumerate(parts) if g != f for i in part]
            curve = served_curve([items[i] for i in fit])
            last = curve["points"][-1]
            for name, pt in _rules(curve, cfg).items():
                pt = dict(pt, _keep_all=pt is last)  # keep every valid answer: no threshold applies
                s, calls = _apply([items[i] for i in held], pt)
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0] += s
                acc[1] += calls
        for name, (s, calls) in sums.items():
            per.setdefault(name, []).append((s / n, calls / n))
    full = served_curve(items)
    out = {"student_alone": {"served": full["student_alone"]["served"], "teacher_share": 0.0},
           "teacher_alone": {"served": full["teacher_alone"]["served"], "teacher_share": 1.0}}
    for name, vals in per.items():
        out[name] = {"served": round(statistics.fmean(v for v, _ in vals), 4),
                     "teacher_share": round(statistics.fmean(c for _, c in vals), 4)}
        if repeats > 1:
            out[name]["served_sd"] = round(statistics.stdev(v for v, _ in vals), 4)
    for row in out.values():
        row["cost_per_1k"] = round(row["teacher_share"] * teacher_price + student_price, 4)
    return out


def _student_items(skill, folder: Path | None, quick_model=None):
    """The student's answers (every signal) on the eval set and the replay sample: (examples, set names, preds)."""
    from eval_gates.lanes import eval_items
    from eval_gates.predict import predict
    from eval_gates.replay import replay_items

    items = eval_items(skill)
    replay, _ = replay_items(skill)
    allx = items + replay
    sets = ["eval"] * len(items) + ["replay"] * len(replay)
    model = quick_model
    if model is None:
        from registry.consumer import base_model_of
        from teachers.local import LocalModel
        from trainers.base_model import resolve_model

        model = LocalModel(resolve_model(base_model_of(folder), "base_model"), adapter_path=str(folder),
                           safetensors_only=True)
    t0 = time.perf_counter()
    p = predict(model, skill.config, [e.input for e in allx])
    return allx, sets, p, round(time.perf_counter() - t0, 1)


def _lane_items(skill, examples, preds, teacher_answers, signal: str):
    from core.tasks import get_task
    from eval_gates.routing import LaneItem

    task = get_task(skill.config)
    out = []
    for e, pred, sig, t in zip(examples, preds.preds, preds.signals, teacher_answers):
        s = task.score(e, pred)
        ts = float(task.score(e, t)[task.primary]) if t is not None else None
        out.append(LaneItem((sig or {}).get(signal), bool(s.get("valid", 1.0)), float(s[task.primary]), ts,
                            task.is_correct(s)))
    return out


def _strong_server(skill, examples, accuracy: float = 0.95):
    """The fake OpenAI server answering each item's gold answer `accuracy` of the time (by a hash of the input:
    the same items every run), else another item's gold answer. Returns the started server."""
    from core.prompting import format_input
    from teachers.fakeserver import FakeOpenAIServer

    from core.tasks import get_task

    cfg = skill.config
    task = get_task(cfg)
    golds = [_concrete(task, e) for e in examples]
    by_suffix = {}
    for i, e in enumerate(examples):
        right = int(hashlib.sha256(e.input.encode()).hexdigest()[:8], 16) / 16 ** 8 < accuracy
        answer = golds[i] if right else next((g for g in golds[i + 1:] + golds[:i] if g != golds[i]), golds[i])
        by_suffix[f"{format_input(cfg, e.input)}\n{cfg.output_name}:"] = answer

    def answer(prompt: str, body: dict) -> str:
        for suffix, a in by_suffix.items():
            if prompt.endswith(suffix):
                return " " + a
        return " ?"

    return FakeOpenAIServer(answer=answer).start()


def _concrete(task, example) -> str:
    """A right answer the teacher could write: the gold itself, or for a gold that lists every acceptable value
    per argument (function-call eval items, BFCL's form) the first acceptable one ("" first: left out), kept only
    if the task scores it right."""
    gold = example.output
    try:
        obj = json.loads(gold)
    except (TypeError, ValueError):
        return gold
    args = obj.get("arguments") if isinstance(obj, dict) else None
    if not isinstance(args, dict) or not any(isinstance(v, list) for v in args.values()):
        return gold
    concrete = {k: v[0] for k, v in args.items() if isinstance(v, list) and v and v[0] != ""}
    concrete.update({k: v for k, v in args.items() if not isinstance(v, list)})
    answer = json.dumps({**obj, "arguments": concrete}, ensure_ascii=False, separators=(",", ":"))
    return answer if task.is_correct(task.score(example, answer)) else gold


def _strong_answers(skill, examples) -> list[str | None]:
    from teachers import open_teacher
    from teachers.strategies import answer_inputs

    server = _strong_server(skill, examples)
    try:
        cfg = skill.config.model_copy(deep=True)
        cfg.teacher = cfg.teacher.model_copy(update={"backend": "openai", "base_url": server.base_url, "model": "strong-95",
                                                     "endpoint": "completions", "cache": False, "few_shot": 2,
                                                     "structured_output": False, "max_retries": 1, "invalid_retries": 0})
        strong = dataclasses.replace(skill, config=cfg)
        with open_teacher(cfg.teacher) as teacher:
            got = answer_inputs(strong, teacher, [e.input for e in examples],
                                {"answerer": "label", "shots": "random", "few_shot": 2, "seed": 0})
        return [g.answer for g in got]
    finally:
        server.stop()


def _audited_answers(skill, examples, option: dict | None, quick: bool) -> tuple[list[str | None], dict, float]:
    from teachers import open_teacher
    from teachers.strategies import answer_inputs, answerer, teacher_option

    t0 = time.perf_counter()
    with open_teacher(skill.config.teacher, scoring=answerer(skill.config) == "score") as teacher:
        opt = option or teacher_option(skill, teacher, None, 0)
        got = answer_inputs(skill, teacher, [e.input for e in examples], opt)
        acc = teacher.report()
    return [g.answer for g in got], {"requests": acc.get("requests"), "cache_hits": acc.get("cache_hits")}, \
        round(time.perf_counter() - t0, 1)


def through_gateway(registry: str, skill_name: str = "ticket-triage") -> dict:
    """The skill's eval set and replay sample, one request each, through `distill gateway` (production version,
    its routing, its teacher lane): served accuracy per set against the gold answers, and the teacher share."""
    import httpx

    from core.skills import load_skill
    from core.tasks import get_task
    from eval_gates.lanes import eval_items
    from eval_gates.replay import replay_items
    from gateway.app import InThread
    from gateway.config import GatewayConfig

    skill = load_skill(skill_name, root=REPO / "seeds")
    task = get_task(skill.config)
    sets = {"eval": eval_items(skill), "replay": replay_items(skill)[0]}
    with tempfile.TemporaryDirectory() as tmp:
        srv = InThread(GatewayConfig(registry=registry, skills=[skill_name], port=0, poll_s=3600, max_wait_ms=5.0,
                                     teacher_timeout_s=600, traffic_url=f"sqlite:///{tmp}/traffic.db"))
        out = {}
        try:
            with httpx.Client(timeout=900) as c:
                for name, items in sets.items():
                    lanes: dict[str, int] = {}
                    served, student = [], []
                    for e in items:  # one request each, as an application sends them
                        r = c.post(f"{srv.url}/v1/skills/{skill_name}:predict", json={"inputs": [e.input]})
                        r.raise_for_status()
                        p = r.json()["predictions"][0]
                        lanes[p["lane"]] = lanes.get(p["lane"], 0) + 1
                        served.append(float(task.score(e, p["answer"])[task.primary]))
                        student.append(float(task.score(e, p.get("slm_answer"))[task.primary]))
                    n = len(items)
                    out[name] = {"n": n, "served": round(sum(served) / n, 4), "student_alone": round(sum(student) / n, 4),
                                 "teacher_share": round(lanes.get("escalate", 0) / n, 4), "lanes": lanes}
        finally:
            srv.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random models, 16 eval and 8 replay items per skill (about a minute)")
    ap.add_argument("--skills", nargs="*", default=list(SHIPPED), help="skills to measure (default: the shipped three)")
    ap.add_argument("--teacher-price", type=float, default=10.0, help="price of 1,000 teacher answers (any currency)")
    ap.add_argument("--student-price", type=float, default=0.2, help="price of 1,000 student answers")
    ap.add_argument("--through-gateway", action="store_true", help="also send ticket-triage's items through the gateway")
    ap.add_argument("--folds", type=int, default=5, help="cross-fitting folds: each rule is chosen on the other "
                                                          "folds and measured on one, in turn (2: halves)")
    ap.add_argument("--repeats", type=int, default=10, help="splits of the items into folds (repeated cross-fitting: "
                                                            "the figures are their mean, served_sd their spread)")
    ap.add_argument("--registry", default=None, help="the registry whose production (else candidate) versions are "
                                                     "measured (default: DISTILL_REGISTRY, else .distill/registry; "
                                                     "e.g. a kept flywheel work dir's base/registry)")
    args = ap.parse_args()
    setup()

    import os

    from core.skills import load_skill
    from core.workdir import registry_root
    from eval_gates.routing import compare_signals, pick_signal
    from registry import Registry

    registry = args.registry or os.environ.get("DISTILL_REGISTRY") or str(registry_root())
    rows, skipped = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        quick_model = None
        if args.quick:
            from teachers.local import LocalModel
            from tests.tiny_models import build_tiny_model, train_label_adapter

            tt = load_skill("ticket-triage", root=REPO / "seeds")
            corpus = [f"Ticket: {e.input}\nTeam: {e.output}\n" for e in tt.seeds + tt.eval_set]
            base = str(build_tiny_model(Path(tmp) / "tiny", corpus))
            quick_model = LocalModel(base, adapter_path=str(train_label_adapter(base, Path(tmp) / "adapter", steps=20)))
        for name in args.skills:
            skill = load_skill(name, root=REPO / "seeds")
            cfg = skill.config
            folder, option = None, None
            if args.quick:
                cfg.gates.eval_limit, cfg.gates.replay.sample = 16, 8
                cfg.teacher = cfg.teacher.model_copy(update={"model": base, "cache": False, "calibration_shot_sets": 1,
                                                             "answer_max_tokens": 8 if get_one_label(cfg) else 24})
                cfg.gates.max_new_tokens = 8 if get_one_label(cfg) else 24
            else:
                reg = Registry(registry)
                for alias in ("production", "candidate"):
                    try:
                        folder = Path(reg.resolve(name, alias=alias))
                        break
                    except Exception:
                        continue
                if folder is None:
                    skipped[name] = f"no production or candidate version in {registry} (run `distill run {name}`)"
                    continue
                routing = json.loads((folder / "routing.json").read_text()) if (folder / "routing.json").is_file() else {}
                option = routing.get("teacher_option")
            examples, sets, preds, student_s = _student_items(skill, folder, quick_model)
            comparison = compare_signals(preds.signals, _correct(skill, examples, preds), _valid(skill, examples, preds))
            signal, _ = pick_signal(comparison, cfg.routing.signal)
            audited, acc, teacher_s = _audited_answers(skill, examples, option, args.quick)
            strong = _strong_answers(skill, examples)
            row = {"items": len(examples), "eval_items": sets.count("eval"), "replay_items": sets.count("replay"),
                   "version": folder.name if folder else "quick", "signal": signal,
                   "signal_auroc": {k: v["auroc"] for k, v in comparison.items()},
                   "student_seconds": student_s, "teacher_seconds": teacher_s, "teacher_requests": acc,
                   "teacher_option": {k: v for k, v in (option or {}).items() if k != "prior"} or "configured"}
            lanes = [("audited_teacher", audited), ("strong_teacher_95", strong)]
            if get_one_label(cfg):  # the lane before this issue: a plain greedy few-shot prompt (label answerer)
                plain, _, _ = _audited_answers(skill, examples, {"answerer": "label", "shots": "random", "seed": 0,
                                                                 "few_shot": cfg.teacher.few_shot}, args.quick)
                lanes.append(("plain_greedy_teacher", plain))
            for lane_name, answers in lanes:
                items = _lane_items(skill, examples, preds, answers, signal)
                row[lane_name] = cross_fit(items, cfg, args.teacher_price, args.student_price, args.folds,
                                           args.repeats)
            rows[name] = row
            print(json.dumps({name: row}), flush=True)
    result = {"benchmark": "routing", "quick": args.quick, "teacher_price_per_1k": args.teacher_price,
              "student_price_per_1k": args.student_price, "method": f"{args.folds}-fold cross-fitted, {args.repeats} splits", "skills": rows,
              "skipped": skipped, "registry": None if args.quick else registry}
    if args.through_gateway and not args.quick:
        result["through_gateway"] = {"ticket-triage": through_gateway(registry)}
    emit(result)


def get_one_label(cfg) -> bool:
    from core.tasks import get_task

    return get_task(cfg).one_label


def _correct(skill, examples, preds) -> list[bool]:
    from core.tasks import get_task

    task = get_task(skill.config)
    return [task.is_correct(task.score(e, p)) for e, p in zip(examples, preds.preds)]


def _valid(skill, examples, preds) -> list[bool]:
    from core.tasks import get_task

    task = get_task(skill.config)
    return [bool(task.score(e, p).get("valid", 1.0)) for e, p in zip(examples, preds.preds)]


if __name__ == "__main__":
    main()
