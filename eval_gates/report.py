"""eval_report.md and eval_comparison.png in the run folder: what was measured, and why the decision."""

from __future__ import annotations

from pathlib import Path

from core.records import atomic_write_text
from core.tasks import get_task


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:.3g}"
    return str(v)


def _scalars(m: dict | None) -> dict:
    return {k: v for k, v in (m or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def render_report(result: dict, skill) -> str:
    d = result["decision"]
    cand = result.get("candidate") or {}
    champ = result.get("champion") or {}
    data = result["data"]
    L = [f"# Eval report: {skill.name} ({result['task']})", "",
         f"**Decision: {'PROMOTE' if d['promote'] else 'REJECT'}** — " + "; ".join(d["reasons"]), ""]
    t = data.get("traffic") or {}
    L += ["## Data", "", "| what | value |", "|---|---|",
          f"| frozen eval items | {data['eval_items']} |", f"| eval set hash | `{(data['eval_set_hash'] or '—')[:16]}` |",
          f"| replayed requests | {data['replay_items']} |",
          f"| replay sample hash | `{(data['replay_sample_hash'] or '—')[:16]}` |",
          f"| traffic source | {t.get('source', '—')} |", f"| traffic records (valid) | {t.get('records', '—')} |",
          f"| malformed records skipped | {t.get('skipped', '—')} |", ""]
    if t.get("skipped_examples"):
        L += ["Skipped traffic records:", ""] + [f"- `{s['where']}`: {s['reason']}" for s in t["skipped_examples"]] + [""]
    ce, pe = _scalars(cand.get("eval")), _scalars(champ.get("eval"))
    L += ["## Frozen eval set", "", "| metric | candidate | production | difference |", "|---|---|---|---|"]
    for k in ce:
        if k == "n":
            continue
        diff = ce[k] - pe[k] if k in pe else None
        L.append(f"| {k} | {_fmt(ce[k])} | {_fmt(pe.get(k))} | {_fmt(diff) if diff is not None else '—'} |")
    for role, m in (("candidate", cand.get("eval")), ("production", champ.get("eval"))):
        if m and m.get("error"):
            L.append(f"\n{role}: **not measured** — {m['error']}")
    L.append("")
    cs, ps = (cand.get("eval") or {}).get("slices") or {}, (champ.get("eval") or {}).get("slices") or {}
    if cs:
        slice_name = get_task(skill.config).slice_name
        name = slice_name if slice_name != "per-slice" else "per-slice " + result["metric"]
        L += [f"### {name}", "", "| slice | candidate | production |", "|---|---|---|"]
        L += [f"| {s} | {_fmt(v)} | {_fmt(ps.get(s))} |" for s, v in cs.items()] + [""]
    conf = (cand.get("eval") or {}).get("confusion")
    if conf:
        cols = list(skill.config.labels) + ["<invalid>"]
        L += ["### Confusion matrix (candidate; rows: gold, columns: predicted)", "",
              "| gold \\ predicted | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        L += [f"| {g} | " + " | ".join(str(row.get(c, 0)) for c in cols) + " |" for g, row in conf.items()] + [""]
    errs = (cand.get("eval") or {}).get("errors")
    if errs:
        L += ["### Errors (candidate)", "", "| error | items |", "|---|---|"]
        L += [f"| {k} | {v} |" for k, v in list(errs.items())[:20]] + [""]
    cr, pr = _scalars(cand.get("replay")), _scalars(champ.get("replay"))
    L += ["## Replayed live traffic", "", "| metric | candidate | production |", "|---|---|---|"]
    L += [f"| {k} | {_fmt(v)} | {_fmt(pr.get(k))} |" for k, v in cr.items()]
    if (cand.get("replay") or {}).get("error"):
        L.append(f"\ncandidate: **not measured** — {cand['replay']['error']}")
    L += ["", "## Gates", "", "| gate | check | value | bound | verdict | why |", "|---|---|---|---|---|---|"]
    for g in d["gates"]:
        for c in g["checks"]:
            L.append(f"| {g['name']} | {c['name']} | {_fmt(c['value'])} | {c['op']} {_fmt(c['bound'])} | "
                     f"{'pass' if c['passed'] else '**FAIL**'} | {c['reason']} |")
    for g in d["gates"]:
        extra = [r for r in g["reasons"] if r not in {c["reason"] for c in g["checks"]}]
        L += [f"\n{g['name']}: {r}" for r in extra]
    r = result.get("routing") or {}
    served = r.get("served") or {}
    L += ["", "## Routing profile", "", "| what | value |", "|---|---|",
          f"| policy | {r.get('policy')} ({r.get('reason')}) |",
          f"| confidence signal | {r.get('signal')} ({r.get('signal_why')}) |",
          f"| threshold | {_fmt(r.get('threshold'))} ({r.get('mode')}) |",
          f"| teacher share | {_fmt(r.get('teacher_share', r.get('escalation_rate')))} |",
          f"| served quality (95% interval) | {_fmt(served.get('quality'))} ({_fmt(served.get('low'))}-{_fmt(served.get('high'))}) |",
          f"| student alone / teacher alone | {_fmt((r.get('student_alone') or {}).get('served'))} / "
          f"{_fmt((r.get('teacher_alone') or {}).get('served')) if r.get('teacher_alone') else 'not measured'} |",
          f"| error rate on kept requests | {_fmt(r.get('kept_error_rate'))} (95% upper {_fmt(r.get('kept_error_rate_upper'))}) |",
          f"| latency p50 / p95 (s) | {_fmt((r.get('latency_s') or {}).get('p50'))} / {_fmt((r.get('latency_s') or {}).get('p95'))} |"]
    for name, c in (r.get("signals") or {}).items():
        L.append(f"| signal {name}: AUROC / calibration error | {_fmt(c.get('auroc'))} / {_fmt(c.get('calibration_error'))} (n {c.get('n')}) |")
    if r.get("error"):
        L.append(f"\nrouting: {r['error']}")
    return "\n".join(L) + "\n"


def plot_comparison(result: dict, path: Path) -> Path:
    """Candidate vs production: the primary metric with its paired interval, replay agreement,
    valid-output rate, and per-slice values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cand = result.get("candidate") or {}
    champ = result.get("champion") or {}
    metric = result["metric"]
    names = [f"eval {metric}", "replay agreement", "replay valid"]

    def vals(m):
        ev, rp = (m or {}).get("eval") or {}, (m or {}).get("replay") or {}
        inv = rp.get("invalid_rate")
        return [ev.get(metric) or 0.0, rp.get("agreement") or 0.0, 1 - inv if inv is not None else 0.0]

    slices = (cand.get("eval") or {}).get("slices") or {}
    fig, axes = plt.subplots(1, 2 if slices else 1, figsize=(11 if slices else 6, 4), squeeze=False)
    ax = axes[0][0]
    x = range(len(names))
    w = 0.38
    ax.bar([i - w / 2 for i in x], vals(cand), w, label="candidate", color="#2b8cbe")
    if champ:
        ax.bar([i + w / 2 for i in x], vals(champ), w, label="production", color="#bdbdbd")
    ax.set_xticks(list(x), names)
    ax.set_ylim(0, 1.05)
    paired = [c for g in result["decision"]["gates"] for c in g["checks"] if c["name"].startswith("paired:")]
    title = "candidate vs production" if champ else "candidate (no production version)"
    if paired and paired[0]["detail"]:
        dd = paired[0]["detail"]
        title += f"\n{metric} diff {dd['diff']:+.3f}, {int(dd['confidence'] * 100)}% CI [{dd['lower']:+.3f}, {dd['upper']:+.3f}]"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    if slices:
        ax2 = axes[0][1]
        ps = (champ.get("eval") or {}).get("slices") or {} if champ else {}
        keys = list(slices)
        xs = range(len(keys))
        ax2.bar([i - w / 2 for i in xs], [slices[k] for k in keys], w, label="candidate", color="#2b8cbe")
        if ps:
            ax2.bar([i + w / 2 for i in xs], [ps.get(k, 0.0) for k in keys], w, label="production", color="#bdbdbd")
        ax2.set_xticks(list(xs), keys, rotation=30, ha="right", fontsize=8)
        ax2.set_ylim(0, 1.05)
        ax2.set_title("per label / slice", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_routing(routing: dict, path: Path) -> Path:
    """Served quality (with its 95% interval) against the share of requests sent to the teacher, one point
    per threshold; each lane alone as a line; the policy's point marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = routing["curve"]
    xs = [p["teacher_share"] for p in pts]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.fill_between(xs, [p["served_low"] for p in pts], [p["served_high"] for p in pts], color="#9ecae1", alpha=0.5,
                    step="mid", label="95% interval")
    ax.plot(xs, [p["served"] for p in pts], color="#2b8cbe", label="served (student kept, teacher escalated)")
    for key, color in (("student_alone", "#31a354"), ("teacher_alone", "#de2d26")):
        v = (routing.get(key) or {}).get("served")
        if v is not None:
            ax.axhline(v, color=color, linestyle="--", linewidth=1, label=key.replace("_", " "))
    ax.plot([routing["teacher_share"]], [(routing.get("served") or {}).get("quality")], "ko",
            label=f"{routing.get('policy')} policy")
    ax.set_xlabel("share of requests sent to the teacher")
    ax.set_ylabel(f"served {(routing.get('served') or {}).get('metric', 'quality')}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"routing on {routing.get('n')} items, signal {routing.get('signal')}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_reports(result: dict, skill, run_dir: Path) -> dict:
    md = render_report(result, skill)
    atomic_write_text(run_dir / "eval_report.md", md)
    out = {"markdown": str(run_dir / "eval_report.md")}
    try:
        out["plot"] = str(plot_comparison(result, run_dir / "eval_comparison.png"))
    except Exception as e:  # the plot is for people; the record stands without it
        out["plot_error"] = str(e)
    r = result.get("routing") or {}
    if r.get("version") == 2 and r.get("curve"):
        try:
            out["routing_plot"] = str(plot_routing(r, run_dir / "routing_curve.png"))
        except Exception as e:
            out["routing_plot_error"] = str(e)
    return out
