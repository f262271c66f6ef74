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
    L += ["", "## Routing profile", "", "| what | value |", "|---|---|",
          f"| target error rate on kept requests | {_fmt(r.get('target_error_rate'))} |",
          f"| confidence threshold (mean token log-prob) | {_fmt(r.get('threshold'))} ({r.get('mode')}) |",
          f"| escalation rate | {_fmt(r.get('escalation_rate'))} |",
          f"| error rate on kept requests | {_fmt(r.get('kept_error_rate'))} (95% upper {_fmt(r.get('kept_error_rate_upper'))}) |",
          f"| latency p50 / p95 (s) | {_fmt((r.get('latency_s') or {}).get('p50'))} / {_fmt((r.get('latency_s') or {}).get('p95'))} |"]
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


def write_reports(result: dict, skill, run_dir: Path) -> dict:
    md = render_report(result, skill)
    atomic_write_text(run_dir / "eval_report.md", md)
    out = {"markdown": str(run_dir / "eval_report.md")}
    try:
        out["plot"] = str(plot_comparison(result, run_dir / "eval_comparison.png"))
    except Exception as e:  # the plot is for people; the record stands without it
        out["plot_error"] = str(e)
    return out
