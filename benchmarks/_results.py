"""Benchmark records: one line of `benchmarks/results.jsonl` per recorded run, and the page made from them.

A benchmark run with `--record` (or `DISTILL_BENCH_RECORD=1`; handled once, in `_common.py`) appends

    {"date", "commit", "machine", "command", "benchmark", "result"}

where `result` is the JSON line the benchmark printed last, and re-renders `docs/results.md`
(`python benchmarks/render_results.py` does the same by hand; `--check` says whether the page is stale).
Records reconstructed from figures the README stated before records existed also carry
`"source": "README narrative, <date>"` and a `note` naming the table they come from.

Standard library only: rendering must not import the project's heavy dependencies.
"""

from __future__ import annotations

import ast
import datetime as _dt
import fnmatch
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results.jsonl"
PAGE = REPO / "docs" / "results.md"
RENDER_COMMAND = "python benchmarks/render_results.py"
REQUIRED = ("date", "commit", "machine", "command", "benchmark", "result")
# Files a record itself changes: they do not make the tree "dirty" for the commit it names.
_OWN_FILES = ("benchmarks/results.jsonl", "docs/results.md")

# The figures shown per benchmark: dotted paths into `result` (fnmatch patterns; `*` also crosses dots), shown
# in the result's own order. A benchmark not listed here (or whose patterns match nothing) shows every figure of
# a reconstructed record, or the top-level numbers of a recorded one.
KEY_FIGURES: dict[str, list[str]] = {
    "routing": ["skills.*.signal", "skills.*.audited_teacher.student_alone.served", "skills.*.*.teacher_alone.served",
                "skills.*.*.quality.served", "skills.*.*.quality.teacher_share", "through_gateway.*.*.served",
                "through_gateway.*.*.teacher_share"],
    "gateway": ["plain_loop.req_per_s", "gateway.req_per_s", "throughput_ratio", "gateway.p50_ms", "gateway.p95_ms",
                "engine.prefill_bound.req_per_s", "engine.greedy_path.req_per_s", "engine.generate_path.req_per_s",
                "engine.transformers_continuous_batching.req_per_s", "engine.single_request_p50.*",
                "gateway.*_clients.req_per_s", "gateway.*_clients.p50_ms", "gateway.*_clients.share_of_bound",
                "mixed_versions.req_per_s", "mixed_versions.share_of_bound",
                "overhead_per_request_ms.p50", "overhead_per_request_ms.p99",
                "overhead_per_request_ms.added_over_http_floor.p50", "overhead_per_request_ms.http_floor.p50",
                "engine.greedy_path_no_prefix_cache.req_per_s", "escalation.measured_on_traffic", "escalation.predicted_by_routing_json"],
    "flywheel": ["drift.fired_in_phase2", "drift.signal", "policies.*.phase*.served_accuracy", "policies.*.phase*.teacher_share",
                 "policies.*.minutes_shift_to_promoted", "summary.context_minus_accepted_only", "pii.found"],
    "gateway_soak": ["ok", "requests", "valid_failed", "valid_rows_missing", "malformed_not_4xx", "malformed_rows",
                     "valid_p50_ms", "valid_p95_ms"],
    "skill_quality": ["skill", "*_shot.accuracy", "*_shot.macro_f1", "*_shot.field_f1", "*_shot.ast_accuracy",
                      "*_shot.invalid_rate", "*_shot.prompt_tokens_per_call"],
    "student_stability": ["skill", "set", "runs.*.student_eval", "student_eval.mean", "student_eval.sd",
                          "student_eval_spread", "teacher_audit_score.mean", "student_at_or_above_teacher", "promoted",
                          "train_min.mean", "wall_min"],
    "pool_cap": ["cap", "rules.*.eval.mean", "rules.*.train_time_vs_none"],
    "checkpoint_choice": ["runs", "rules.*.mean", "per_run.*.rules.eval_loss", "per_run.*.rules.last",
                          "per_run.*.rules.oracle"],
    "constrained_decoding": ["skills.*.*.*.invalid_rate", "skills.*.*.*.accuracy", "skills.*.*.*.field_f1",
                             "skills.*.*.*.ast_accuracy"],
    "teacher_audit": ["best", "options.*.score"],
    "confidence_filter": ["seed", "train_seed", "audit.score", "variants.*.accuracy", "variants.*.synthetic"],
    "teacher_throughput": ["ours.req_per_s", "baseline_openai_gather.req_per_s", "throughput_vs_baseline",
                           "faults_vs_fault_free.ours", "rate_limit.ours.fraction_of_R",
                           "rate_limit.ours.throttled_share"],
    "teacher_backends": ["rows.*.s_per_input", "rows.*.s_per_score", "sampler.seconds.*", "sampler.identical_rows",
                         "sampler.speedup"],
    "dedup_throughput": ["docs", "ours_docs_per_s", "speedup_vs_datasketch", "precision", "recall"],
    "train_throughput": ["model", "qlora_nf4_tokens_per_s", "lora_tokens_per_s", "qlora_nf4_peak_mb", "lora_peak_mb"],
    "train_step": ["baseline_s_per_step", "answer_only_s_per_step", "speedup"],
    "eval_gates": ["simulation.promote_rate.*"],
    "registry_io": ["local.*_s", "s3_moto.*_s"],
    "flow_overhead": ["flow_s", "plain_s", "prefect_overhead_s", "prefect_share"],
    "privacy": ["*rows_per_s*"],
    "inputs_per_request": ["*.kept", "*.inputs_per_teacher_minute"],
}
MAX_FIGURES = 24


# ---------------------------------------------------------------- making a record

def machine() -> str:
    """One line describing this machine: CPU model, cores, the instruction sets that change our timings,
    memory, GPU (read from /proc and nvidia-smi; nothing is imported)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    isa = ("AVX512-BF16/AMX" if {"avx512_bf16", "amx_tile"} & flags else
           "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None)
    parts = [f"{cores}-core {model}"] + ([isa] if isa else [])
    try:
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
        parts.append(f"{round(kb / 1024 ** 2)} GiB")
    except (OSError, StopIteration, ValueError):
        pass
    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10)
            gpus = [g.strip() for g in out.stdout.splitlines() if g.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    parts.append(", ".join(gpus) if gpus else "no GPU")
    return ", ".join(parts)


def commit(repo: Path = REPO) -> str | None:
    """The checked-out commit (short hash), with "+dirty" when tracked files other than the records
    themselves differ from it; None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=7", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", "."]
                               + [f":(exclude){f}" for f in _OWN_FILES], capture_output=True, text=True, timeout=30)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command(argv: list[str], repo: Path = REPO) -> str:
    """The command line that ran the benchmark, as someone would type it from the repository root."""
    first = argv[0] if argv else "?"
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    if main and Path(main).name == Path(first).name:
        first = main  # absolute since Python 3.9: right even after the benchmark changed its working directory
    script = Path(first).resolve()
    try:
        script_s = script.relative_to(repo).as_posix()
    except ValueError:
        script_s = argv[0] if argv else "?"
    return shlex.join(["python", script_s, *argv[1:]])


def make_record(result: dict, argv: list[str], now: _dt.datetime | None = None) -> dict:
    """The record of one run: when, at which commit, on what machine, by which command, and its JSON line."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    benchmark = result.get("benchmark") or (Path(argv[0]).stem if argv else "?")
    return {"date": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "commit": commit(), "machine": machine(),
            "command": command(argv), "benchmark": benchmark, "result": result}


def append(record: dict, path: Path = RESULTS) -> None:
    """Add one record as one line (the file is append-only: a record is never rewritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def load(path: Path = RESULTS) -> list[dict]:
    """Every record of `path`, in file order; a line that is not a record raises ValueError naming file:line."""
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e})") from None
        missing = [k for k in REQUIRED if k not in rec] if isinstance(rec, dict) else list(REQUIRED)
        if missing or not isinstance(rec.get("result"), dict):
            raise ValueError(f"{path}:{i}: a record needs {', '.join(REQUIRED)} (result an object); missing "
                             f"{', '.join(missing) or 'an object result'}")
        out.append(rec)
    return out


# ---------------------------------------------------------------- rendering

def _flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted path, scalar) pairs; a list of scalars becomes one "a / b / c" value, a list of objects is
    numbered (`runs.0.student_eval`)."""
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(value, list):
        if all(isinstance(x, (int, float, str, bool)) or x is None for x in value):
            return [(prefix, " / ".join(_fmt(x) for x in value))] if value else []
        out = []
        for i, v in enumerate(value):
            out += _flatten(v, f"{prefix}.{i}")
        return out
    return [(prefix, value)]


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if isinstance(v, bool) else "null"
    if isinstance(v, float):
        return ("%.4f" % v).rstrip("0").rstrip(".") if abs(v) < 1e6 else "%.4g" % v
    return str(v)


def key_figures(rec: dict) -> list[tuple[str, str]]:
    """The figures a table row shows, as (dotted path into `result`, value): the benchmark's KEY_FIGURES
    patterns; where they match nothing, every figure of a reconstructed record (it holds only what the README
    stated) or the top-level numbers of a recorded one."""
    leaves = [(p, v) for p, v in _flatten(rec["result"]) if p not in ("benchmark", "quick")]
    patterns = KEY_FIGURES.get(rec["benchmark"], [])
    chosen = [(p, v) for p, v in leaves if any(fnmatch.fnmatchcase(p, pat) for pat in patterns)]
    if not chosen:
        chosen = leaves if rec.get("source") else [
            (p, v) for p, v in leaves if "." not in p and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return [(p, _fmt(v)) for p, v in chosen]


def _cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _script(rec: dict) -> str | None:
    m = re.search(r"benchmarks/[\w./-]+\.py", rec.get("command") or "")
    return m.group(0) if m else None


def _doc_line(script: str | None, repo: Path) -> str:
    """The first sentence of the benchmark script's docstring (parsed, never imported)."""
    if not script or not (repo / script).is_file():
        return ""
    doc = ast.get_docstring(ast.parse((repo / script).read_text(encoding="utf-8"))) or ""
    para = " ".join(doc.split("\n\n")[0].split())
    m = re.match(r"(.+?[.?!])(\s|$)", para)
    return m.group(1) if m else para


def _anchor(title: str) -> str:
    """GitHub's heading anchor for `title`."""
    s = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return s.replace(" ", "-")


PREAMBLE = """# Results

<!-- Generated by `{cmd}` from benchmarks/results.jsonl. Do not edit by hand: record a run instead. -->

**This page is generated.** `{cmd}` writes it from [`benchmarks/results.jsonl`](../benchmarks/results.jsonl),
one record per benchmark run: the date, the commit, the machine, the command, and the JSON line the benchmark
printed last. So every figure here traces to a line a command printed. `tests/test_docs.py` fails when this
page and the records drift apart.

```bash
python benchmarks/eval_gates.py --quick --record     # any benchmark: run it, append its record, re-render this page
{cmd}                  # re-render by hand
{cmd} --check          # exit 1 if this page is stale
```

Records whose source says "README narrative" were reconstructed from the figures the README stated before
records existed (only the figures it stated; no commit where it named none). The story behind them (which
run, which teacher seed, why each default is what it is) is in [the results history](results-history.md).
Timings on the shared 2-core machines move with their load; compare rows of one machine only.
"""


def render(records: list[dict], repo: Path = REPO) -> str:
    """docs/results.md for `records`: per benchmark (sorted by name) a table of its runs, oldest first."""
    groups: dict[str, list[dict]] = {}
    for rec in records:
        groups.setdefault(rec["benchmark"], []).append(rec)
    lines = [PREAMBLE.format(cmd=RENDER_COMMAND).rstrip("\n"), ""]
    if not groups:
        lines += ["No records yet.", ""]
        return "\n".join(lines)
    lines += ["| benchmark | runs | latest |", "| --- | --- | --- |"]
    names = sorted(groups)
    for name in names:
        recs = groups[name]
        lines.append(f"| [{name}](#{_anchor(name)}) | {len(recs)} | {max(r['date'] for r in recs)[:10]} |")
    lines.append("")
    for name in names:
        recs = sorted(groups[name], key=lambda r: r["date"][:10])  # stable: same date keeps file order
        script = _script(recs[-1])
        doc = _doc_line(script, repo)
        lines += [f"## {name}", ""]
        if script:
            lines += [f"`{script}`" + (f": {doc}" if doc else ""), ""]
        lines += ["| date | commit | machine | command | key figures | source |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in recs:
            figs = key_figures(r)
            shown = "<br>".join(f"{_cell(p)} **{_cell(v)}**" for p, v in figs[:MAX_FIGURES])
            if len(figs) > MAX_FIGURES:
                shown += f"<br>... ({len(figs) - MAX_FIGURES} more in results.jsonl)"
            source = r.get("source") or "recorded"
            if r.get("note"):
                source += f": {r['note']}"
            lines.append("| " + " | ".join((
                _cell(r["date"][:10]), _cell(r.get("commit") or "-"), _cell(r.get("machine") or "-"),
                f"`{_cell(r['command'])}`", shown, _cell(source))) + " |")
        lines.append("")
    return "\n".join(lines)


def write_page(results: Path = RESULTS, page: Path = PAGE, repo: Path = REPO) -> Path:
    """Render `results` into `page` (docs/results.md); returns the page's path."""
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(render(load(results), repo), encoding="utf-8")
    return page


def record(result: dict, argv: list[str] | None = None) -> Path:
    """Append `result` (a benchmark's last JSON line) as a record and re-render docs/results.md."""
    append(make_record(result, list(argv if argv is not None else sys.argv)), RESULTS)
    return write_page(RESULTS, PAGE, REPO)
