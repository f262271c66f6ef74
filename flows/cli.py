"""`distill`: the command line.

    distill skills                          list and validate the skills under seeds/
    distill run SKILL [--profile P]         one manual run of the pipeline (Prefect, ephemeral API)
    distill registry list|show|path|promote|rollback ...
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
    from core.skills import SkillError, list_skills, load_skill
    from eval_gates.replay import load_traffic

    names = list_skills()
    if not names:
        return _fail("no skills found under seeds/ (set DISTILL_SEEDS_DIR to another folder)")
    bad = 0
    for name in names:
        try:
            s = load_skill(name)
            traffic = load_traffic(s.traffic_path(), s.config)
            print(f"{name:24s} ok   task={s.config.task} seeds={len(s.seeds)} eval={len(s.eval_set)} "
                  f"traffic={len(traffic)} schedule={s.config.schedule.cron or '-'}")
        except (SkillError, ValueError) as e:
            bad += 1
            print(f"{name:24s} FAIL {e}")
    return 1 if bad else 0


def _preflight(skill: str, profile: str):
    """Everything that can be checked before the flow starts, so bad input fails in one line."""
    from core.skills import load_skill
    from eval_gates.replay import load_traffic

    s = load_skill(skill, profile)
    load_traffic(s.traffic_path(), s.config)
    if s.config.teacher.backend == "openai":
        from teachers.openai_http import OpenAITeacher

        OpenAITeacher(s.config.teacher.base_url or "", s.config.teacher.model, s.config.teacher.api_key_env).check()
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
    e = Table(title="evaluation")
    for col in ("model", "eval accuracy", "macro-F1", "invalid", "replay agreement", "p50 s"):
        e.add_column(col)
    for name in ("candidate", "champion"):
        m = s["evaluation"].get(name)
        if m:
            e.add_row(name, f"{m['eval']['accuracy']:.3f}", f"{m['eval']['macro_f1']:.3f}",
                      f"{m['eval']['invalid_rate']:.3f}", f"{m['replay']['agreement']:.3f}", str(m["replay"]["p50_s"]))
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

    params = RunParams(skill=args.skill, profile=args.profile, seed=args.seed, run_id=args.run_id)
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


def cmd_registry(args) -> int:
    from core.workdir import registry_root
    from registry import Registry

    reg = Registry(args.root or registry_root())
    if args.action == "list":
        skills = reg.skills()
        if not skills:
            print(f"(registry {reg.root} is empty)")
        for s in skills:
            print(f"{s:24s} versions={reg.versions(s)} aliases={reg.aliases(s)}")
    elif args.action == "show":
        skill, _, ver = args.target.partition("@")
        print(json.dumps(reg.show(skill, int(ver) if ver else None, alias=args.alias), indent=2, default=str))
    elif args.action == "path":
        print(reg.path(args.target, alias=args.alias))
    elif args.action == "promote":
        if args.version is None:
            return _fail("promote needs a VERSION: distill registry promote SKILL VERSION")
        reg.promote(args.target, args.version, reason=args.reason)
        print(f"{args.target}: production -> {args.version}")
    elif args.action == "rollback":
        v = reg.rollback(args.target, reason=args.reason)
        print(f"{args.target}: production -> {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distill", description="Continuous synthetic-data distillation pipeline.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("skills", help="list and validate the skills under seeds/").set_defaults(fn=cmd_skills)
    r = sub.add_parser("run", help="run the pipeline once for one skill")
    r.add_argument("skill")
    r.add_argument("--profile", default="default", help="named overrides in the skill file (default, smoke)")
    r.add_argument("--seed", type=int, default=None, help="teacher sampling seed (default: a fresh one, recorded)")
    r.add_argument("--run-id", default=None, help="name of the run folder (default: a timestamp)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    r.set_defaults(fn=cmd_run)
    g = sub.add_parser("registry", help="list, inspect, promote and roll back published adapters")
    g.add_argument("action", choices=["list", "show", "path", "promote", "rollback"])
    g.add_argument("target", nargs="?", help="SKILL or SKILL@VERSION")
    g.add_argument("version", nargs="?", type=int)
    g.add_argument("--alias", default="production")
    g.add_argument("--reason", default="manual")
    g.add_argument("--root", default=None, help="registry location (default: $DISTILL_REGISTRY or .distill/registry)")
    g.set_defaults(fn=cmd_registry)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) not in (None, "list") and not args.target:
        return _fail(f"registry {args.action} needs a SKILL")
    _environment()
    from core.records import DataError
    from core.skills import SkillError
    from registry import RegistryError
    from teachers.openai_http import TeacherUnreachable
    from trainers.base_model import ModelError

    try:
        return args.fn(args)
    except (SkillError, DataError, ModelError, TeacherUnreachable, RegistryError, ValueError, OSError) as e:
        if os.environ.get("DISTILL_DEBUG"):
            raise  # the whole traceback, for bug reports
        return _fail(str(e).strip().splitlines()[0] if "\n" not in str(e) else str(e).strip())
    except KeyboardInterrupt:
        return _fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
