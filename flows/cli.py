"""`distill`: the command line.

    distill skills                          list and validate the skills under seeds/
    distill new-skill NAME --type TASK      start a skill folder (commented skill.yaml, empty data files)
    distill run SKILL [--profile P]         one manual run of the pipeline (Prefect, ephemeral API)
    distill serve                           serve the scheduled deployments from this process
    distill registry list|show|path|pull|promote|rollback ...
    distill gateway [--port N]              serve the registry's skills (OpenAI-compatible), capturing traffic
    distill traffic import|export|stats SKILL [FILE]   the captured-traffic store the runs read
    distill status [SKILL ...] [--json]     per skill: production version, drift signals against their bands, last trigger
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _environment() -> None:
    """Defaults that must be set before prefect/transformers are imported; the user's values win."""
    from core.workdir import work_dir

    home = work_dir()
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),  # the ephemeral server's SQLite lives here, not in ~
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # offline: telemetry look-ups only log errors
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # first start migrates the DB (~20 s)
        "PREFECT_LOGGING_LEVEL": "WARNING",  # the CLI shows progress bars; logs stay in the Prefect UI
        "HF_HUB_OFFLINE": "1",  # nothing is downloaded at run time
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for k, v in defaults.items():
        os.environ.setdefault(k, v)
    # Prefect creates only the last folder of PREFECT_HOME; on a fresh clone .distill/ does not exist yet.
    Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*")
    # bitsandbytes looks for optional CPU kernels from the hub and warns when it cannot: harmless offline.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _fail(msg: str, code: int = 2) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return code


def cmd_skills(args) -> int:
    """Validate every skill folder; list every problem with file and line (exit 1 if any)."""
    from core.skills import seeds_root, validate_all

    root = seeds_root()
    reports = validate_all(root)
    if not reports:
        return _fail(f"no skills found under {root} (set DISTILL_SEEDS_DIR to another folder, "
                     f"or start one with `distill new-skill NAME --type TASK`)")
    print(f"{'skill':24s} {'task':15s} {'seeds':>6s} {'eval':>6s} {'traffic':>8s}  {'schedule':12s} status")
    for r in reports:
        n = {k: str(r.counts.get(k, "-")) for k in ("seeds", "eval", "traffic")}
        status = "ok" if r.ok else f"{len(r.problems)} problem(s)"
        print(f"{r.name:24s} {r.task or '?':15s} {n['seeds']:>6s} {n['eval']:>6s} {n['traffic']:>8s}  "
              f"{r.schedule or '-':12s} {status}")
    bad = [r for r in reports if not r.ok]
    for r in bad:
        print(f"\n{r.name}: {len(r.problems)} problem(s)")
        for p in r.problems:
            print("  " + p.replace("\n", "\n    "))
    return 1 if bad else 0


def cmd_new_skill(args) -> int:
    from core.scaffold import create_skill
    from core.skills import seeds_root

    folder = create_skill(args.name, args.task, seeds_root())
    print(f"created {folder}/ (skill.yaml, empty seeds.jsonl, eval.jsonl, traffic.jsonl)")
    print(f"next: write examples, then `distill skills` to check them and `distill run {args.name} --profile smoke`")
    return 0


def _preflight(skill: str, profile: str):
    """Everything that can be checked before the flow starts, so bad input fails in one line."""
    from core.skills import load_skill
    from eval_gates.replay import load_traffic

    s = load_skill(skill, profile)
    load_traffic(s.traffic_path(), s.config)
    if s.config.teacher.backend == "openai":
        from teachers import resolve_api_key
        from teachers.http import OpenAIBackend

        tc = s.config.teacher
        OpenAIBackend(tc.base_url or "", tc.model, tc.endpoint, resolve_api_key(tc), tc.timeout_s).check()
    from trainers.base_model import check_model_spec

    if s.config.teacher.backend == "local":
        check_model_spec(s.config.teacher.model, "teacher.model")
    check_model_spec(s.config.student.base_model, "student.base_model")
    return s


def print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    t = Table(title=f"{s['skill']} · run {s['run_id']} · profile {s['profile']}")
    t.add_column("stage")
    t.add_column("count", justify="right")
    for k, v in s["counts"].items():
        if not isinstance(v, dict):
            t.add_row(k, str(v))
    con.print(t)
    if s["drops"]:
        d = Table(title="drops by reason")
        d.add_column("stage/reason")
        d.add_column("n", justify="right")
        for k, v in s["drops"].items():
            d.add_row(k, str(v))
        con.print(d)
    num = lambda x: f"{x:.3f}" if isinstance(x, (int, float)) else "n/a"  # noqa: E731
    audit = s.get("audit")
    if audit:
        a = Table(title=f"teacher audit ({audit['n']} seeds, {audit['folds']}-fold)")
        for col in ("option", audit["metric"], "teacher s", ""):
            a.add_column(col)
        for o in audit["options"]:
            a.add_row(o["option"], num(o["score"]), str(o["teacher_seconds"]),
                      "used" if o["option"] == audit["chosen"] else "")
        con.print(a)
    if s.get("evaluation"):
        metric = s["evaluation"].get("metric", "accuracy")
        e = Table(title="evaluation")
        for col in ("model", f"eval {metric}", "invalid", "replay agreement", "p50 s"):
            e.add_column(col)
        for name in ("candidate", "champion"):
            m = s["evaluation"].get(name)
            if m:
                e.add_row(name, num(m["eval"].get(metric)), num(m["eval"].get("invalid_rate")),
                          num(m["replay"].get("agreement")), str(m["replay"].get("p50_s")))
        con.print(e)
    dec = s["decision"]
    con.print(f"[bold]{'PROMOTED' if dec['promote'] else 'REJECTED'}[/bold]: " + "; ".join(dec["reasons"]))
    for g in dec["gates"]:
        con.print(f"  {g['name']}: {'pass' if g['passed'] else 'FAIL'} — " + "; ".join(g["reasons"]))
    pub = s["published"]
    con.print(f"registry: {pub['path'] + ' (' + pub['alias'] + ')' if pub else 'unchanged'}")
    con.print(f"run folder: {s['run_dir']}   wall time: {s['seconds']} s")


def cmd_run(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from flows import progress as prog

    _preflight(args.skill, args.profile)
    from flows.pipeline import RunParams, distill_skill

    params = RunParams(skill=args.skill, profile=args.profile, seed=args.seed, run_id=args.run_id,
                       stage_pool=args.stage_pool)
    import logging

    # Prefect configures the root logger at import; the pipeline's own logger gets its handler.
    lg = logging.getLogger("distill")
    lg.setLevel(logging.INFO)
    lg.propagate = False
    if args.no_progress or not sys.stdout.isatty():
        # No terminal (a CI log, a deployment): progress as log lines instead of bars.
        args.no_progress = True
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    else:
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False)
    lg.addHandler(handler)
    columns = [TextColumn("{task.description:34s}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, disable=args.no_progress) as bar:
        prog.set_progress(None if args.no_progress else bar)
        summary = distill_skill(params)
    prog.set_progress(None)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print_summary(summary)
    return 0


def cmd_serve(args) -> int:
    """Serve every skill's scheduled deployment (and refresh-all) from this process until Ctrl-C."""
    from flows.deployments import serve, skill_deployment_specs, train_evaluate_specs

    specs = train_evaluate_specs() if args.train_evaluate_only else skill_deployment_specs()
    for spec in specs:
        print(f"deployment {spec['flow']}/{spec['name']:20s} cron={spec['cron'] or '-'}")
    if args.stage_pool:
        print(f"training and evaluation go to train-evaluate/<skill> (stage_pool={args.stage_pool}); serve those "
              f"on the training machine: distill serve --train-evaluate-only")
    print("trigger one by hand: prefect deployment run 'distill-skill/<skill>'  (Ctrl-C stops serving)")
    serve(limit=args.limit, teacher_slots=args.teacher_slots, stage_pool=args.stage_pool,
          train_evaluate_only=args.train_evaluate_only)
    return 0


def cmd_registry(args) -> int:
    from core.workdir import registry_root
    from registry import Registry, parse_ref

    reg = Registry(args.root or registry_root())
    skill, version = parse_ref(args.target) if args.target else (None, None)
    if args.action in ("promote", "rollback") and version is not None:
        return _fail(f"registry {args.action} takes SKILL, not SKILL@VERSION: "
                     f"distill registry {args.action} {skill}{' VERSION' if args.action == 'promote' else ''}")
    if args.action != "promote" and args.version is not None:
        return _fail(f"registry {args.action} takes no VERSION argument (write {args.target}@{args.version})")
    if args.to is not None and args.action != "pull":
        return _fail("--to only applies to: distill registry pull SKILL[@VERSION] --to DIR")
    if args.action == "list":
        skills = reg.skills()
        if not skills:
            print(f"(registry {reg.location} is empty)")
        for s in skills:
            print(f"{s:24s} versions={reg.versions(s)} aliases={reg.aliases(s)}")
    elif args.action == "show":
        print(json.dumps(reg.show(skill, version, alias=args.alias), indent=2, default=str))
    elif args.action == "path":
        print(reg.path(skill, version, alias=args.alias))
    elif args.action == "pull":
        # Without --to: into the local cache (remote registries) or the verified folder itself (local).
        folder = (reg.pull(skill, version, alias=args.alias, to=args.to) if args.to
                  else reg.resolve(skill, alias=args.alias, version=version))
        print(folder)
    elif args.action == "promote":
        if args.version is None:
            return _fail("promote needs a VERSION: distill registry promote SKILL VERSION")
        from registry.store import is_version_name

        if not is_version_name(args.version):
            return _fail(f"invalid VERSION {args.version!r}: versions are integers 1, 2, 3, ...")
        reg.promote(skill, int(args.version), reason=args.reason)
        print(f"{skill}: production -> {int(args.version)}")
    elif args.action == "rollback":
        v = reg.rollback(skill, reason=args.reason)
        print(f"{skill}: production -> {v}")
    return 0


def cmd_traffic(args) -> int:
    """The traffic store the gateway writes and the runs read (gateway/store.py)."""
    from core.workdir import traffic_table_name, traffic_url
    from gateway import store

    url = args.url or traffic_url()
    table = args.table or traffic_table_name(args.skill)
    if args.traffic_action == "stats":
        if args.file:
            return _fail("traffic stats takes no FILE")
        print(json.dumps(store.stats(url, table), indent=2))
        return 0
    from core.skills import load_skill

    if args.traffic_action == "import":
        if not args.file:
            return _fail("traffic import needs a FILE: distill traffic import SKILL FILE")
        got = store.import_jsonl(load_skill(args.skill, args.profile), args.file, url, table)
        print(f"{args.skill}: {got['inserted']} imported, {got['already']} already in {table} (of {got['read']} lines)")
        return 0
    try:
        cfg = load_skill(args.skill, args.profile).config  # JSON skills: requests back as objects
    except Exception:
        cfg = None
    if args.file:
        with open(args.file, "w", encoding="utf-8") as f:
            n = store.export_jsonl(url, table, f, cfg)
        print(f"{args.skill}: {n} rows -> {args.file}", file=sys.stderr)
    else:
        store.export_jsonl(url, table, sys.stdout, cfg)
    return 0


def _fmt(x, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _band_text(band: dict | None) -> str:
    if not band:
        return "-"
    lo, hi = band.get("low"), band.get("high")
    return f"<= {_fmt(hi)}" if lo is None else f">= {_fmt(lo)}" if hi is None else f"[{_fmt(lo)}, {_fmt(hi)}]"


def cmd_status(args) -> int:
    """Per skill of the registry: its production version, each drift signal against its band (from the traffic
    table's latest rows of that version, as the gateway's monitor computes them) and the last drift trigger."""
    from core.workdir import registry_root, traffic_url
    from gateway.drift import SIGNALS, TriggerStore, skill_status
    from registry import Registry

    reg = Registry(args.registry or registry_root())
    url = args.url or traffic_url()
    skills = args.skill or reg.skills()
    try:
        store = TriggerStore(url)
        triggers = store.last()
        store.close()
    except Exception as e:
        print(f"warning: cannot read the drift triggers from {url} ({type(e).__name__}: {e})", file=sys.stderr)
        triggers = {}
    rows = []
    for name in skills:
        try:
            rows.append(skill_status(name, reg, url, args.profile, triggers=triggers))
        except Exception as e:  # one skill that cannot be read must not hide the others
            rows.append({"skill": name, "version": None, "signals": None, "last_trigger": None,
                         "cooldown_until": None, "error": f"{type(e).__name__}: {e}"})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no skills in registry {reg.location}")
    for r in rows:
        lt = r["last_trigger"]
        trig = (f"last trigger {lt['at']} ({lt['signal']} {_fmt(lt['value'])}, version {lt['version']}, "
                f"{'emitted' if lt['emitted'] else 'not emitted: no Prefect API'})" if lt else "last trigger: never")
        cool = f"; cool-down until {r['cooldown_until']}" if lt and r.get("cooldown_until") else ""
        print(f"{r['skill']}  version {_fmt(r['version'])}  {trig}{cool}")
        if r.get("enabled") is False:
            print("  drift.enabled is false: no event is emitted")
        if r["signals"] is None:
            print(f"  no signals: {r['error']}")
            continue
        print(f"  {'signal':14s} {'value':>6s}  {'exact 95% interval':18s}  {'band':16s} {'n':>5s}  state")
        for sig in SIGNALS:
            f = r["signals"][sig]
            iv = f"[{_fmt(f['interval'][0])}, {_fmt(f['interval'][1])}]" if f.get("interval") else "-"
            state = f["state"]
            if state == "out":
                state += f" since {f['out_since']} ({f['out_requests']} requests)"
            elif state == "insufficient":
                state += f" (needs {f['least']})"
            elif state == "no_band" and f.get("why"):
                state += f" ({f['why']})"
            print(f"  {sig:14s} {_fmt(f['value']):>6s}  {iv:18s}  {_band_text(f['band']):16s} {f['n']:>5d}  {state}")
    return 0


def cmd_gateway(args) -> int:
    """Serve the registry's skills over an OpenAI-compatible API (gateway/, docs/gateway.md)."""
    from core.workdir import registry_root
    from gateway import GatewayConfig
    from gateway.app import serve

    overrides: dict[str, dict] = {}
    for flag, key in (("escalation", "escalation"), ("routing_policy", "policy"), ("max_teacher_share", "max_teacher_share")):
        for item in getattr(args, flag, None) or []:
            skill, sep, value = item.partition("=")
            if not sep or not skill or not value:
                raise SystemExit(f"--{flag.replace('_', '-')} {item!r}: expected SKILL=VALUE, e.g. ticket-triage=budget")
            overrides.setdefault(skill, {})[key] = value
    cfg = GatewayConfig.model_validate({
        "registry": args.registry or str(registry_root()), "skills": args.skill or None, "host": args.host,
        "port": args.port, "backend": args.backend, "backend_url": args.backend_url,
        "backend_api_key_env": args.backend_api_key_env, "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms, "poll_s": args.poll_s, "max_versions": args.max_versions, "verify_fraction": args.verify_fraction,
        "budget_window": args.budget_window,
        "traffic_url": args.traffic_url, "auth_tokens_env": args.auth_tokens_env, "profile": args.profile,
        "overrides": overrides, "drift": not args.no_drift})
    print(f"gateway on http://{cfg.host}:{cfg.port} (registry {cfg.registry}; Ctrl-C stops)")
    try:
        from registry import Registry

        published = Registry(cfg.registry).skills()
    except Exception as e:  # the gateway reports it per request too; say it once here
        published, reason = [], f"cannot read it ({e})"
    else:
        reason = "it has no published skill yet"
    if not published:
        print(f"warning: registry {cfg.registry}: {reason}; run `make demo` (or `distill run SKILL`) first. "
              f"Requests get 404 until a skill is published; it is picked up within --poll-s.",
              file=sys.stderr, flush=True)
    serve(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from core.tasks import task_names

    p = argparse.ArgumentParser(prog="distill", description="Continuous synthetic-data distillation pipeline.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("skills", help="validate every skill under seeds/ and list problems with file and line"
                   ).set_defaults(fn=cmd_skills)
    n = sub.add_parser("new-skill", help="create seeds/NAME/ with a commented skill.yaml and empty data files")
    n.add_argument("name", help="lowercase letters, digits and '-' (the folder name)")
    n.add_argument("--type", dest="task", required=True,
                   choices=task_names(), help="task type (one file per type in core/tasks/)")
    n.set_defaults(fn=cmd_new_skill)
    r = sub.add_parser("run", help="run the pipeline once for one skill")
    r.add_argument("skill")
    r.add_argument("--profile", default="default", help="named overrides in the skill file (default, smoke)")
    r.add_argument("--seed", type=int, default=None, help="teacher sampling seed (default: a fresh one, recorded)")
    r.add_argument("--run-id", default=None, help="name of the run folder (default: a timestamp)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    r.add_argument("--stage-pool", default=None,
                   help="hand training + evaluation to the deployment train-evaluate/SKILL on this work pool "
                        "(needs a Prefect server: PREFECT_API_URL)")
    r.set_defaults(fn=cmd_run)
    v = sub.add_parser("serve", help="serve the scheduled deployments (one per skill, plus refresh-all) locally")
    v.add_argument("--limit", type=int, default=1, help="flow runs at once in this process (default 1: 2 cores)")
    v.add_argument("--teacher-slots", type=int, default=None,
                   help="teacher expansions at once across all runs (global limit 'teacher-expansion'; "
                        "default: keep the existing limit, or create it with 2)")
    mode = v.add_mutually_exclusive_group()
    mode.add_argument("--stage-pool", default=None,
                      help="scheduled runs hand training + evaluation to train-evaluate/<skill> (served elsewhere "
                           "with --train-evaluate-only, or deployed on this work pool from prefect.yaml)")
    mode.add_argument("--train-evaluate-only", action="store_true",
                      help="serve only the train-evaluate deployments (run this on the GPU machine)")
    v.set_defaults(fn=cmd_serve)
    g = sub.add_parser("registry", help="list, inspect, pull, promote and roll back published adapters")
    g.add_argument("action", choices=["list", "show", "path", "pull", "promote", "rollback"])
    g.add_argument("target", nargs="?", help="SKILL or SKILL@VERSION")
    g.add_argument("version", nargs="?", help="VERSION (promote only)")
    g.add_argument("--alias", default="production", help="alias to use when no @VERSION is given")
    g.add_argument("--to", default=None, help="pull: copy the verified version into this new folder")
    g.add_argument("--reason", default="manual")
    g.add_argument("--root", default=None, help="registry location (default: $DISTILL_REGISTRY or .distill/registry)")
    g.set_defaults(fn=cmd_registry)
    w = sub.add_parser("gateway", help="serve the registry's skills: OpenAI-compatible API with keep/escalate/verify lanes")
    w.add_argument("--host", default="127.0.0.1")
    w.add_argument("--port", type=int, default=8080)
    w.add_argument("--registry", default=None, help="registry location (default: $DISTILL_REGISTRY or .distill/registry)")
    w.add_argument("--skill", action="append", help="serve only this skill (repeatable; default: every skill)")
    w.add_argument("--backend", choices=["local", "openai"], default="local",
                   help="local: transformers + PEFT in this process; openai: a vLLM server started with "
                        "--lora-modules SKILL@VERSION=FOLDER")
    w.add_argument("--backend-url", default=None, help="the vLLM server's base URL (backend openai)")
    w.add_argument("--backend-api-key-env", default=None,
                   help="environment variable holding the vLLM server's key (backend openai; never logged)")
    w.add_argument("--max-batch", type=int, default=16, help="most requests of one skill per decoded batch")
    w.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill, in ms")
    w.add_argument("--poll-s", type=float, default=10.0, help="seconds between reads of the registry's aliases")
    w.add_argument("--max-versions", type=int, default=4,
                   help="most versions loaded on demand (SKILL@N, SKILL@ALIAS) at once; the least recently used idle one is unloaded")
    w.add_argument("--verify-fraction", type=float, default=0.0, help="share of kept answers checked by the teacher")
    w.add_argument("--traffic-url", default=None,
                   help="SQLAlchemy URL of the traffic database (default $DISTILL_TRAFFIC_URL, else "
                        "sqlite:///$DISTILL_HOME/traffic.db: the store `distill run` reads)")
    w.add_argument("--auth-tokens-env", default=None, help="environment variable with comma-separated bearer tokens")
    w.add_argument("--profile", default="default", help="skill profile for the teacher block of each skill.yaml")
    w.add_argument("--escalation", action="append", metavar="SKILL=MODE",
                   help="per-skill override: threshold | never | always (repeatable)")
    w.add_argument("--routing-policy", action="append", metavar="SKILL=POLICY",
                   help="per-skill override: re-pick the routing point on routing.json's both-lanes curve with "
                        "quality | budget | target_error (repeatable)")
    w.add_argument("--no-drift", action="store_true",
                   help="do not watch the skills' drift signals (no distill.drift.detected events; docs/scheduling-and-refresh.md \"Drift "
                        "triggers a run\")")
    w.add_argument("--max-teacher-share", action="append", metavar="SKILL=SHARE",
                   help="per-skill override for the budget policy, e.g. ticket-triage=0.1 (repeatable)")
    w.add_argument("--budget-window", type=int, default=100,
                   help="budget policy: hold max_teacher_share over the last N requests of a version (0: the "
                        "published threshold alone)")
    w.set_defaults(fn=cmd_gateway)
    t = sub.add_parser("traffic", help="the captured-traffic store the runs read: import a JSONL log (scrubbed), "
                                       "export it, count it")
    t.add_argument("traffic_action", choices=["import", "export", "stats"])
    t.add_argument("skill")
    t.add_argument("file", nargs="?", help="import: the JSONL log (traffic.jsonl format); export: the output file "
                                           "(default: standard output)")
    t.add_argument("--url", default=None, help="SQLAlchemy URL of the store (default: $DISTILL_TRAFFIC_URL, else "
                                               "sqlite:///$DISTILL_HOME/traffic.db, as the gateway)")
    t.add_argument("--table", default=None, help="table (default: traffic_<skill>, '-' as '_', as the gateway)")
    t.add_argument("--profile", default="default", help="skill profile (import: its labels and privacy block)")
    t.set_defaults(fn=cmd_traffic)
    st = sub.add_parser("status", help="per skill: production version, drift signals against their bands, last "
                                       "drift trigger")
    st.add_argument("skill", nargs="*", help="skills to show (default: every skill in the registry)")
    st.add_argument("--registry", default=None, help="registry folder or URL (default: DISTILL_REGISTRY or "
                                                     "$DISTILL_HOME/registry)")
    st.add_argument("--url", default=None, help="SQLAlchemy URL of the traffic store (default: $DISTILL_TRAFFIC_URL, "
                                                "else sqlite:///$DISTILL_HOME/traffic.db, as the gateway)")
    st.add_argument("--profile", default="default", help="skill profile whose drift block is read")
    st.add_argument("--json", action="store_true", help="one JSON list, a dict per skill")
    st.set_defaults(fn=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) not in (None, "list") and not args.target:
        return _fail(f"registry {args.action} needs a SKILL")
    _environment()
    from core.records import DataError
    from core.skills import SkillError
    from registry import RegistryError
    from teachers.base import TeacherError
    from flows.locks import SkillBusy
    from flows.stages import StageHandOffError
    from trainers.base_model import ModelError

    try:
        return args.fn(args)
    except (SkillError, DataError, ModelError, TeacherError, RegistryError, SkillBusy, StageHandOffError, ValueError,
            OSError) as e:
        if os.environ.get("DISTILL_DEBUG"):
            raise  # the whole traceback, for bug reports
        return _fail(str(e).strip().splitlines()[0] if "\n" not in str(e) else str(e).strip())
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
