"""The evaluate stage as a plain function: candidate and production answer the same frozen eval
items and the same replayed traffic; metrics, gates, routing profile and reports in the run folder.

Model failures propagate (the run fails and nothing is published); a failure in scoring or in a
gate is recorded and blocks promotion (fail closed) with its reason.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable, ContextManager, Sequence

from core.prompting import render_prompt
from core.records import Example, hash_examples, write_json, write_jsonl
from core.tasks import TaskType, get_task
from eval_gates import predict as predict_mod  # looked up at call time: tests inject faults there
from eval_gates.gates import Decision, gate
from eval_gates.lanes import live_verify, read_option, read_teacher_answers
from eval_gates.routing import answer_logprobs

log = logging.getLogger("distill")

Progress = Callable[[str, int | None], ContextManager[Callable[..., None]]]


@contextlib.contextmanager
def _no_progress(description: str, total: int | None):
    yield lambda n=1, total=None: None


def _correct(task: TaskType, scores: dict) -> bool:
    return task.is_correct(scores)  # pass/fail per item; generation: a close enough chrF


def _score_eval(task: TaskType, items: Sequence[Example], preds: Sequence[str | None], metric: str) -> tuple[dict, list[dict]]:
    try:
        per_item = [task.score(e, p) for e, p in zip(items, preds)]
        agg = task.aggregate(per_item, items, preds)
        if any(metric not in s for s in per_item):
            raise ValueError(f"gates.metric {metric!r} is not a per-item metric of task {task.name} "
                             f"(per-item metrics: {', '.join(sorted(per_item[0])) if per_item else 'none'})")
        agg["item_scores"] = {"metric": metric, "ids": [e.id for e in items], "values": [float(s[metric]) for s in per_item]}
        return agg, per_item
    except Exception as e:  # fail closed: the gate reads the error
        log.exception("scoring the eval set failed")
        return {"n": len(items), "error": f"scoring failed: {type(e).__name__}: {e}"}, []


def _score_replay(task: TaskType, items: Sequence[Example], preds, seconds_p: dict) -> tuple[dict, list[dict]]:
    try:
        per_item = [task.score(e, p) for e, p in zip(items, preds)]
        n = len(items)
        agree = [float(s[task.primary]) for s in per_item]
        out = {"n": n, "agreement": round(sum(agree) / n, 4), "metric": task.primary,
               "invalid_rate": round(1 - sum(s.get("valid", 1.0) for s in per_item) / n, 4), **seconds_p,
               "item_scores": {"metric": task.primary, "ids": [e.id for e in items], "values": agree}}
        return out, per_item
    except Exception as e:
        log.exception("scoring the replay sample failed")
        return {"n": len(items), "error": f"scoring failed: {type(e).__name__}: {e}"}, []


def champion_base(champion_dir: str | Path, default: str) -> str:
    """The loadable base model the production version was trained on: its skill.json base_model
    (else adapter_config.json's base_model_name_or_path), resolved like the student's. `default`
    (this run's student) only for a folder that names no base. Raises ModelError when that base
    cannot be found: production is never scored on a base it was not trained on."""
    from trainers.base_model import adapter_base_model, resolve_model

    spec = adapter_base_model(champion_dir)
    if spec is None:
        log.warning("%s names no base model: scoring it on this run's student base %s", champion_dir, default)
        return default
    return resolve_model(spec, f"base_model of the production version ({champion_dir})")


def run_dir_for(adapter_dir: str | Path) -> Path:
    """The run folder an adapter was trained in (the nearest parent holding params.json)."""
    p = Path(adapter_dir).resolve()
    for parent in p.parents:
        if (parent / "params.json").is_file():
            return parent
    return p.parent


def evaluate_candidate(skill, student_path: str, adapter_dir: str, champion_dir: str | None,
                       replay_items: list[Example], run_dir: str | Path, progress: Progress | None = None,
                       traffic=None, load_model: Callable[[str, str], object] | None = None) -> dict:
    """Evaluate the candidate (and production, when there is one), run the gates, write
    eval_report.md, eval_comparison.png, eval_items.jsonl, decision.json and routing.json into run_dir.

    Returns {"eval_items", "replay_items", "task", "metric", "data", "candidate": {"eval", "replay"},
    "champion": {...} | None, "routing", "decision", "reports"}.
    """
    from eval_gates.report import write_reports

    progress = progress or _no_progress
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = skill.config
    task = get_task(cfg)
    metric = cfg.gates.metric or task.primary
    items = skill.eval_set[: cfg.gates.eval_limit] if cfg.gates.eval_limit else list(skill.eval_set)
    if traffic is None:
        try:
            from eval_gates.replay import load_skill_traffic

            traffic = load_skill_traffic(skill).summary()
        except Exception as e:  # only for the record: the sample itself came from the flow
            traffic = {"error": str(e)}
    elif hasattr(traffic, "summary"):
        traffic = traffic.summary()
    data = {"eval_items": len(items), "eval_set_hash": hash_examples(items) if items else None,
            "replay_items": len(replay_items), "replay_sample_hash": hash_examples(replay_items) if replay_items else None,
            "replay_ids": [e.id for e in replay_items], "traffic": traffic}
    out: dict = {"eval_items": len(items), "replay_items": len(replay_items), "task": task.name, "metric": metric,
                 "data": data}
    rows = {e.id: {"set": "eval", "id": e.id, "input": e.input, "gold": e.output} for e in items}
    rrows = {e.id: {"set": "replay", "id": e.id, "input": e.input, "gold": e.output} for e in replay_items}
    if load_model is None:
        from teachers.local import LocalModel

        def load_model(path, adapter):
            return LocalModel(path, adapter_path=adapter, name=Path(adapter).name)

    routing = None
    lanes: dict[str, tuple] = {}  # the candidate's answers per set, for the both-lanes routing curve
    # Each adapter on the base it was trained on: production on the base its own version names
    # (student.base_model may have changed since), the candidate on this run's student.
    bases = {"candidate": student_path, "champion": champion_base(champion_dir, student_path) if champion_dir else None}
    data["base_models"] = bases
    for role, adapter in (("candidate", adapter_dir), ("champion", champion_dir)):
        if adapter is None:
            out[role] = None
            continue
        model = load_model(bases[role], adapter)
        if items:
            with progress(f"eval: {role} on eval set", len(items)) as advance:
                p = predict_mod.predict(model, cfg, [e.input for e in items], progress=advance)
            ev, per_item = _score_eval(task, items, p.preds, metric)
            if role == "candidate" and per_item:
                lanes["eval"] = (items, p, per_item)
            ev["prompt_tokens_per_call"] = p.mean_prompt_tokens()
            for e, pred, s in zip(items, p.preds, per_item or [{}] * len(items)):
                rows[e.id][role] = pred
                rows[e.id][f"{role}_score"] = s.get(metric)
                rows[e.id][f"{role}_error"] = task.error(e, pred) if per_item else None
        else:
            ev = {"n": 0, "error": "no eval items (eval.jsonl is empty)"}
        ev["data"] = {"n": len(items), "eval_set_hash": data["eval_set_hash"]}
        if replay_items:
            with progress(f"eval: {role} on replayed traffic", len(replay_items)) as advance:
                r = predict_mod.predict(model, cfg, [e.input for e in replay_items], progress=advance)
            rep, per_rep = _score_replay(task, replay_items, r.preds, r.latency())
            for e, pred, s in zip(replay_items, r.preds, per_rep or [{}] * len(replay_items)):
                rrows[e.id][role] = pred
                rrows[e.id][f"{role}_agreement"] = s.get(task.primary)
            if role == "candidate" and per_rep:
                lanes["replay"] = (replay_items, r, per_rep)
        else:
            rep = {"n": 0, "error": "the replay sample is empty: no accepted traffic to replay "
                                    f"({(traffic or {}).get('source', cfg.gates.replay.source)})"}
        if role == "candidate" and lanes:
            routing = _routing(task, cfg, model, lanes, ev, rep, read_teacher_answers(run_dir), read_option(run_dir))
            for set_name, (its, _, _) in lanes.items():
                rows_of = rows if set_name == "eval" else rrows
                for e, t in zip(its, routing.pop(f"_teacher_{set_name}", None) or []):
                    rows_of[e.id]["teacher"] = t
        rep["data"] = {"n": len(replay_items), "replay_sample_hash": data["replay_sample_hash"],
                       "traffic_source": (traffic or {}).get("source"), "skipped": (traffic or {}).get("skipped")}
        out[role] = {"eval": ev, "replay": rep}
        del model
    if routing is None:
        routing = {"mode": "unavailable", "threshold": None,
                   "error": "no scored answers of the candidate: every request should escalate"}
    routing.update(skill=skill.name, target_error_rate=cfg.routing.target_error_rate)
    out["routing"] = routing
    decision: Decision = gate(cfg.gates, out)
    out["decision"] = decision.to_dict()
    write_json(run_dir / "routing.json", routing)
    write_json(run_dir / "decision.json", {**out["decision"], "data": data})
    write_jsonl(run_dir / "eval_items.jsonl", list(rows.values()) + list(rrows.values()))
    try:
        out["reports"] = write_reports(out, skill, run_dir)
    except Exception as e:  # a report is for people: never block the record for it
        log.warning("could not write the eval report: %s", e)
        out["reports"] = {"error": str(e)}
    return out


def _routing(task, cfg, model, lanes: dict, ev: dict, rep: dict, teacher_answers: dict | None,
             option: dict | None) -> dict:
    """The routing profile from both lanes on the same items: the candidate's answers (with every candidate
    confidence, read from the decode's own scores) on the eval set and the replay sample, and the teacher's
    answers with its audited option (teacher_answers.jsonl; None: the teacher lane was not measured, so no
    valid answer is escalated). Picks the signal, builds the served-quality curve on the items whose reference
    is independent of the teacher (the eval set's gold answers, replayed requests a person labelled), applies
    the policy."""
    from eval_gates import routing as R

    try:
        t0 = time.time()
        rc = cfg.routing
        items, item_sigs, all_sigs, correct, valid, teacher_vals = [], [], [], [], [], {}
        for set_name, (its, pred, per) in lanes.items():
            if pred.signals is None or all(x is None for x in pred.signals):  # a model without decode signals
                prompts = [render_prompt(cfg, e.input, model.tokenizer) for e in its]
                conf = answer_logprobs(model.model, model.tokenizer, prompts, pred.raw)
                s_list = [{"mean_logprob": c} for c in conf]
            else:
                s_list = [dict(x or {}) for x in pred.signals]
            tv = []
            for e, s, sc, sig in zip(its, pred.preds, per, s_list):
                t = teacher_answers.get((set_name, e.id)) if teacher_answers is not None else None
                tv.append(t)
                ok, v = _correct(task, sc), bool(sc.get("valid", 1.0))
                # Every answer's signals count for the signal choice and the replay confidences; the curve
                # takes only items whose reference can judge the teacher: a replayed request's LLM reference
                # may be the teacher's own earlier answer (the gateway's escalate lane writes them), which
                # would score the teacher against itself.
                if set_name == "eval" or (e.meta or {}).get("reference_source") == "human":
                    t_score = float(task.score(e, t)[task.primary]) if t is not None else None
                    items.append(R.LaneItem(None, v, float(sc[task.primary]), t_score, ok, set_name))
                    item_sigs.append(sig)
                all_sigs.append((set_name, sig))
                correct.append(ok)
                valid.append(v)
            teacher_vals[set_name] = tv
        comparison = R.compare_signals([sig for _, sig in all_sigs], correct, valid)
        signal, why = R.pick_signal(comparison, rc.signal)
        for it, sig in zip(items, item_sigs):
            it.signal = sig.get(signal)
        curve = R.served_curve(items, rc.confidence_level)
        pick = R.choose_point(curve, rc.policy, max_teacher_share=rc.max_teacher_share,
                              target_error_rate=rc.target_error_rate, significance=rc.significance,
                              fallback=rc.fallback, level=rc.confidence_level)
        pt = pick["point"]
        measured = teacher_answers is not None
        by_set = {name: R.evaluate_point([it for it in items if it.set == name], pt["threshold"],
                                         kept_all=pick["mode"] == "keep_all_valid")
                  for name in lanes if any(it.set == name for it in items)}
        replay_sigs = [sig.get(signal) for name, sig in all_sigs if name == "replay"]
        excluded = sum(1 for name, _ in all_sigs if name == "replay") - sum(it.set == "replay" for it in items)
        d = {
            "version": 2, "policy": rc.policy, "mode": pick["mode"], "threshold": pt["threshold"],
            "reason": pick["reason"] + ("" if measured else "; the teacher lane was not measured in this run "
                                                             "(teacher_answers.jsonl missing): no valid answer escalates"),
            "certified": pick.get("certified"), "fallback": pick.get("fallback"), "fallback_policy": rc.fallback,
            "replay_items_without_an_independent_reference": excluded,
            "teacher_measured": measured, "teacher_option": option,
            "n": curve["n"], "valid": curve["valid"], "kept": pt["kept"],
            "teacher_share": pt["teacher_share"], "escalation_rate": pt["teacher_share"],
            "served": {"quality": pt["served"], "low": pt["served_low"], "high": pt["served_high"],
                       "metric": task.primary},
            "student_alone": curve["student_alone"], "teacher_alone": curve["teacher_alone"] if measured else None,
            "by_set": by_set,
            "kept_error_rate": pt["kept_error_rate"], "kept_error_rate_upper": pt["kept_error_upper"],
            "max_teacher_share": rc.max_teacher_share, "significance": rc.significance,
            "confidence_level": rc.confidence_level,
            "signal": signal, "signal_why": why, "signals": comparison,
            "confidence": R.SIGNAL_HELP[signal] + " of the adapter's answer (natural log; the text before the stop "
                                                  "newline), read from the greedy decode's own scores",
            "escalate_when": "output invalid, or no finite confidence, or confidence < threshold",
            "curve": curve["points"],
            # The chosen signal of each replayed answer, exact (the decode parity check reads them).
            "confidences": [c if R.usable(c) else None for c in replay_sigs],
            "seconds_to_score": round(time.time() - t0, 2),
            # Keys the registry's consumers already read.
            "expected_quality": {ev.get("primary", task.primary): ev.get(task.primary),
                                 "replay_agreement": rep.get("agreement"), "served": pt["served"]},
            "escalation": {"on_invalid_output": True, "confidence_threshold": pt["threshold"], "signal": signal},
            "latency_s": {"p50": rep.get("p50_s"), "p95": rep.get("p95_s")},
        }
        # What the verify lane measured of the versions served so far (the gateway's traffic table): the live
        # agreement of production's kept answers with the teacher, beside this run's curve.
        d["live_verify"] = live_verify(cfg.name, level=rc.confidence_level)
        for name, tv in teacher_vals.items():
            d[f"_teacher_{name}"] = tv
        return d
    except Exception as e:
        log.exception("routing profile failed")
        return {"mode": "unavailable", "threshold": None, "error": f"{type(e).__name__}: {e}"}


def attach_artifacts(result: dict, skill_name: str) -> None:
    """The eval report and the gate checks as Prefect artifacts of the current flow run (best effort)."""
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        key = f"{skill_name}-eval".lower()
        path = (result.get("reports") or {}).get("markdown")
        md = Path(path).read_text(encoding="utf-8") if path and Path(path).is_file() else None
        if md:
            create_markdown_artifact(md, key=f"{key}-report", description="Eval gates report")
        rows = [{"gate": g["name"], "check": c["name"], "value": c["value"], "bound": c["bound"], "op": c["op"],
                 "verdict": "pass" if c["passed"] else "FAIL"} for g in result["decision"]["gates"] for c in g["checks"]]
        if rows:
            create_table_artifact(rows, key=f"{key}-checks", description="Gate checks: value, bound, verdict")
    except Exception as e:  # an artifact is a convenience; never fail a run for it
        log.warning("could not attach the eval artifacts: %s", e)
