"""The run summary: summary.json, summary.md and the flow run's markdown artifact.

The flow (flows/pipeline.py) gathers each stage's small dict; `run_summary` puts them in one record and
`write_summary` writes it. Rendering lives here so the flow reads as its stages.
"""

from __future__ import annotations

import logging
import platform
import subprocess
import time
from pathlib import Path

from core.records import Rejected, hash_examples, write_json

log = logging.getLogger("distill.flows")


def code_revision() -> str:
    """The repository's short commit (lineage); "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def run_summary(skill, params, run_id: str, run_dir: Path, t0: float, *, audit: dict | None, expansion: dict,
                teacher_lane: dict, filtered: dict, refreshed: dict, training: dict, evaluation: dict,
                decision: dict, champion_version: int | None, published: dict | None, committed: dict) -> dict:
    """The summary of a run that reached the gates; written (write_summary) and returned."""
    rejected = expansion["rejected"] + filtered["rejected"]
    context = traffic_context_summary(expansion.get("traffic_context"), filtered)
    summary = {
        "skill": skill.name, "profile": params.profile, "run_id": run_id, "run_dir": str(run_dir),
        "counts": {"seeds": len(skill.seeds), "teacher_requested": expansion["requested"],
                   "teacher_generated": expansion["generated"], "teacher_labeled": expansion["labeled"],
                   "accepted": filtered["accepted"], "traffic_new": refreshed["new_records"],
                   "traffic_accepted": refreshed["kept"], "traffic_sampled": context["read"],
                   "traffic_relabelled": context["relabelled"], "traffic_relabel_kept": context["relabel_kept"],
                   "traffic_style_shots": context["traffic_style_shots"],
                   "traffic_counterfactual": context["counterfactual_requests"],
                   "pool_after_run": committed["pool_size"],
                   **training["pool"]},
        "drops": drops(rejected),
        "audit": audit_summary(audit),
        "teacher": {"model": expansion["teacher"], "seconds": expansion["seconds"],
                    "prompt_tokens": expansion["prompt_tokens"], "accounting": expansion.get("accounting"),
                    "lane": teacher_lane},
        "routing": routing_summary(evaluation.get("routing")),
        "filters": {"stats": filtered.get("stats"), "index_commit": committed["index_commit"]},
        "refresh": refreshed,
        "traffic_context": context,
        "training": {**training["result"], "record": training.get("record"), "loss_curve": training.get("loss_curve")},
        "evaluation": evaluation,
        "decision": decision,
        "champion_version": champion_version,
        "published": published,
        "held": committed["held"],
        "readmitted": committed["readmitted"],
        "seconds": round(time.time() - t0, 1),
    }
    write_summary(run_dir, summary)
    return summary


def traffic_context_summary(context: dict | None, filtered: dict) -> dict:
    """Traffic as the teacher's context in one run: the window read (`read`), the relabel sample sent to the teacher
    (`relabel_sent`), what it labelled (`relabelled`), what the filters kept (`relabel_kept`, from the filter
    stage's counts by source), the traffic style shots shown (`traffic_style_shots`, in
    `requests_with_traffic_shots` requests), the counterfactual requests (`counterfactual_requests`: an input of a
    label about what one traffic input names), and why rows were left out (`excluded`). Zeros when nothing was read."""
    c = dict(context or {})
    for k in ("read", "relabel_sent", "relabelled", "relabel_dropped", "traffic_style_shots",
              "requests_with_traffic_shots", "counterfactual_requests", "style_pool"):
        c.setdefault(k, 0)
    c["relabel_kept"] = (filtered.get("by_source") or {}).get("traffic_relabel", 0)
    return c


def lineage(skill, params, run_id: str, training: dict, expansion: dict, student_revision: str,
            champion_version: int | None) -> dict:
    """Where the adapter came from (the registry's lineage.json)."""
    cfg = skill.config
    return {
        "skill": skill.name, "run_id": run_id, "profile": params.profile, "seed": params.seed,
        "seeds_hash": hash_examples(skill.seeds), "dataset_hash": training["dataset_hash"],
        "teacher": expansion["teacher"], "teacher_backend": cfg.teacher.backend,
        "base_model": cfg.student.base_model, "base_model_revision": student_revision,
        "champion_version": champion_version, "code_revision": code_revision(),
        "python": platform.python_version(),
    }


def refused_run(skill, params, run_id: str, run_dir: Path, audit: dict, t0: float) -> dict:
    """The teacher failed its audit (audit.on_fail: stop): no expansion, no training, nothing published;
    decision.json and the summary say why. The pool, the dedup index and the traffic watermark are untouched."""
    gate = {"name": "teacher_audit", "passed": False, "reasons": [audit["reason"]],
            "value": audit["score"], "bound": audit["floor"]}
    decision = {"promote": False, "stage": "teacher_audit", "reasons": [audit["reason"]], "gates": [gate]}
    write_json(run_dir / "decision.json", {**decision, "run_id": run_id, "champion_version": None})
    summary = {
        "skill": skill.name, "profile": params.profile, "run_id": run_id, "run_dir": str(run_dir),
        "counts": {"seeds": len(skill.seeds), "audited_seeds": audit["n"]}, "drops": {},
        "audit": audit_summary(audit), "decision": decision, "evaluation": {}, "champion_version": None,
        "published": None, "seconds": round(time.time() - t0, 1),
    }
    write_summary(run_dir, summary)
    return summary


def write_decision(run_dir: Path, run_id: str, evaluation: dict, champion_version: int | None,
                   refused_audit: dict | None) -> dict:
    """decision.json: the gates' decision; with `refused_audit` (audit.on_fail: skip_expansion) the audit's
    verdict is recorded beside the gates, non-blocking. Returns the decision."""
    decision = evaluation["decision"]
    if refused_audit is not None:
        note = f"{refused_audit['reason']}; trained without teacher data (audit.on_fail: skip_expansion)"
        decision = {**decision, "gates": [*decision["gates"], {"name": "teacher_audit", "passed": False,
                                                               "blocking": False, "reasons": [note]}]}
    write_json(run_dir / "decision.json", {**decision, "data": evaluation.get("data"), "run_id": run_id,
                                           "champion_version": champion_version})
    return decision


def write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json, summary.md, and the same summary as the flow run's artifact."""
    write_json(run_dir / "summary.json", summary)
    (run_dir / "summary.md").write_text(render_summary_md(summary))
    _artifact(summary)


def audit_summary(audit: dict | None) -> dict | None:
    """The audit without its per-item answers (those stay in teacher_audit.json)."""
    return None if audit is None else {k: v for k, v in audit.items() if k not in ("items", "accounting")}


def drops(rejected: list[Rejected]) -> dict[str, int]:
    """Dropped examples counted by stage/reason."""
    out: dict[str, int] = {}
    for r in rejected:
        key = f"{r.stage}/{r.reason}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def render_summary_md(s: dict) -> str:
    """summary.md: counts, audit, teacher accounting, drops, refresh, evaluation, routing, gates."""
    ev = s.get("evaluation") or {}
    lines = [f"# {s['skill']} run {s['run_id']} ({s['profile']})", "",
             f"**Decision: {'PROMOTED' if s['decision']['promote'] else 'REJECTED'}** — "
             + "; ".join(s["decision"]["reasons"]), "", "## Counts", "", "| stage | n |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["counts"].items() if not isinstance(v, dict)]
    lines += _audit_md(s.get("audit"))
    acc = (s.get("teacher") or {}).get("accounting") or {}
    if acc:
        lat = f"{acc.get('latency_p50_s')} / {acc.get('latency_p95_s')}"
        lines += ["", "## Teacher", "", "| requests | cached | retries | failures | prompt tok | completion tok "
                  "| latency p50 / p95 s | est. cost |", "|---|---|---|---|---|---|---|---|",
                  f"| {acc.get('requests')} | {acc.get('cache_hits')} | {acc.get('retries')} | "
                  f"{acc.get('failures') or 0} | {acc.get('prompt_tokens')} | {acc.get('completion_tokens')} | {lat} | "
                  f"{acc.get('estimated_cost')} |"]
    lines += _confidence_md(((s.get("filters") or {}).get("stats") or {}).get("confidence"))
    if "drops" in s and s.get("teacher"):
        lines += ["", "## Drops by reason", "", "| stage/reason | n |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in s["drops"].items()] or ["| (none) | 0 |"]
    lines += _refresh_md(s.get("refresh"))
    lines += _context_md(s.get("traffic_context"))
    if ev:
        metric = ev.get("metric", "accuracy")
        lines += ["", "## Evaluation", "", f"| model | eval {metric} | invalid | replay agreement | replay p50 s |",
                  "|---|---|---|---|---|"]
        for name, m in (("candidate", ev.get("candidate")), ("production", ev.get("champion"))):
            if m:
                lines.append(f"| {name} | {_num(m['eval'].get(metric))} | {_num(m['eval'].get('invalid_rate'))} | "
                             f"{_num(m['replay'].get('agreement'))} | {m['replay'].get('p50_s')} |")
    lines += _routing_md(s.get("routing"))
    lines += ["", "## Gates", ""]
    for g in s["decision"]["gates"]:
        lines.append(f"- **{g['name']}**: {'pass' if g['passed'] else 'FAIL'} — " + "; ".join(g["reasons"]))
    lines += ["", f"Registry: {s['published']['path'] if s['published'] else 'unchanged'}",
              f"Run folder: {s['run_dir']}", f"Wall time: {s['seconds']} s"]
    return "\n".join(lines) + "\n"


def routing_summary(r: dict | None) -> dict | None:
    """The routing profile without its curve and per-item confidences (those stay in routing.json)."""
    if not r:
        return None
    return {k: v for k, v in r.items() if k not in ("curve", "confidences", "signals", "teacher_option")}


def _routing_md(r: dict | None) -> list[str]:
    if not r:
        return []
    if r.get("error"):
        return ["", "## Routing", "", f"Unavailable: {r['error']}"]
    served, st, te = r.get("served") or {}, r.get("student_alone") or {}, r.get("teacher_alone") or {}
    out = ["", "## Routing", "", f"Policy **{r.get('policy')}** on {r.get('n')} items (eval set and replay sample), "
           f"signal {r.get('signal')}: {r.get('reason')}.", "",
           "| lane | served quality | 95% interval | teacher share |", "|---|---|---|---|",
           f"| routed ({r.get('mode')}, threshold {_num(r.get('threshold'))}) | {_num(served.get('quality'))} | "
           f"{_num(served.get('low'))}-{_num(served.get('high'))} | {_num(r.get('teacher_share'))} |",
           f"| student alone | {_num(st.get('served'))} | {_num(st.get('served_low'))}-{_num(st.get('served_high'))} | 0 |"]
    if te:
        out.append(f"| teacher alone | {_num(te.get('served'))} | {_num(te.get('served_low'))}-"
                   f"{_num(te.get('served_high'))} | 1 |")
    if r.get("certified") is False:
        out += ["", f"**target_error not certified**: {r.get('reason')}"]
    return out


def _audit_md(a: dict | None) -> list[str]:
    if not a:
        return []
    out = ["", "## Teacher audit", "",
           f"{a['n']} seeds, {a['folds']}-fold (each answered once with shots from the other folds), answerer "
           f"`{a['answerer']}`. {a['reason']}.", "",
           f"| option | {a['metric']} | invalid | teacher s | sent | |", "|---|---|---|---|---|---|"]
    for o in a["options"]:
        out.append(f"| {o['option']} | {_num(o['score'])} | {_num(o.get('invalid_rate'))} | {o['teacher_seconds']} | "
                   f"{o['requests_sent']} | {'**used**' if o['option'] == a['chosen'] else ''} |")
    best = next(o for o in a["options"] if o["option"] == a["chosen"])
    if "per_label_precision" in best:
        seeds = a.get("seed_distribution") or {}
        out += ["", f"Per-label bias of the chosen option ({a['chosen']}):", "",
                "| label | seeds | predicted | precision | recall |", "|---|---|---|---|---|"]
        pred = best.get("predicted_distribution", {})
        for lab in best["per_label_precision"]:
            out.append(f"| {lab} | {seeds.get(lab, 0)} | {pred.get(lab, 0)} | {_num(best['per_label_precision'][lab])} "
                       f"| {_num(best['per_label_recall'].get(lab))} |")
        if pred.get("<invalid>"):
            out.append(f"| (invalid) | 0 | {pred['<invalid>']} | | |")
    return out


def _confidence_md(c: dict | None) -> list[str]:
    if not c:
        return []
    out = ["", "## Confidence and label balance", ""]
    if c.get("thresholds"):
        out += [f"Per-label thresholds from the audit, for precision >= {c['target_precision']}:", "",
                "| label | threshold | audit precision | audit support | teacher examples kept |",
                "|---|---|---|---|---|"]
        for lab, t in c["thresholds"].items():
            thr = _num(t["threshold"]) if t["reachable"] else "unreachable"
            out.append(f"| {lab} | {thr} | {_num(t['precision'])} | {t['support']} | {t['kept']} |")
    elif c.get("thresholds_skipped"):
        out.append(f"Thresholds not applied: {c['thresholds_skipped']}.")
    d = c.get("label_distribution")
    if d:
        labs = sorted(set(d["seeds"]) | set(d["generated"]) | set(d["accepted"]))
        out += ["", "| label distribution | " + " | ".join(labs) + " | TV distance to seeds |",
                "|---|" + "---|" * (len(labs) + 1)]
        for name, dist_key, dkey in (("seeds", "seeds", None), ("generated", "generated", "distance_generated"),
                                     ("accepted", "accepted", "distance_accepted")):
            row = " | ".join(_num(d[dist_key].get(lab, 0.0)) for lab in labs)
            out.append(f"| {name} | {row} | {_num(d.get(dkey)) if dkey else ''} |")
        b = d.get("bound")
        if b:
            out.append("")
            out.append(f"Bound: TV <= {b['max_distance']}: {b['distance_before']} -> {b['distance_after']} after "
                       f"dropping {b['dropped']} least-confident examples of over-represented labels"
                       + ("" if b["reached"] else " (not reachable by dropping: a label has too few teacher examples)")
                       + ".")
    return out


def _refresh_md(r: dict | None) -> list[str]:
    if not r:
        return []
    g = r.get("pool") or {}
    out = ["", "## Continuous refresh", "",
           f"Traffic since {r['since'] or 'the beginning'} until {r['until'] or '-'}: {r['new_records']} new records, "
           f"{r['candidates']} candidates, {r['kept']} kept; refused {r['student_refused']} student outputs and "
           f"{r['not_accepted']} not accepted.", "", "| pool by source | before | after |", "|---|---|---|"]
    for src in sorted(set(g.get("before", {})) | set(g.get("after", {}))):
        out.append(f"| {src} | {g['before'].get(src, 0)} | {g['after'].get(src, 0)} |")
    out += ["", "| refresh stage/reason | n |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in r.get("drops", {}).items()] or ["| (none) | 0 |"]
    return out


def _context_md(c: dict | None) -> list[str]:
    if not c or not c.get("read"):
        return []
    out = ["", "## Traffic as teacher context", "",
           f"{c['read']} recent inputs of every lane read ({c.get('log')}); the teacher labelled {c['relabelled']} of "
           f"the {c['relabel_sent']} sampled with the audited option, and the filters kept {c['relabel_kept']}; "
           f"{c['traffic_style_shots']} style shots from traffic in {c['requests_with_traffic_shots']} requests "
           f"(style pool {c['style_pool']}, {c.get('style_contaminated', 0)} left out as eval overlaps); "
           f"{c.get('counterfactual_requests', 0)} counterfactual requests (an input of one label about what a "
           f"traffic input names).", "",
           "| left out of the relabel sample | n |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in (c.get("excluded") or {}).items()] or ["| (none) | 0 |"]
    return out


def _num(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "n/a"


def _artifact(summary: dict) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(render_summary_md(summary), key=f"{summary['skill']}-summary".lower(),
                                 description="Distillation run summary")
    except Exception as e:  # an artifact is a convenience; never fail a run for it
        log.warning("could not attach the summary artifact: %s", e)
