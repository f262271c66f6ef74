"""The teacher lane, measured: the teacher answers the frozen eval set and the replay sample with the
option its audit chose (the one that labelled the run), so routing can compare both lanes on the same
items. Plain functions; the flow's `teacher-lane` task opens the teacher and calls `measure_teacher_lane`.

Files in the run folder: teacher_option.json (the recipe, published beside the adapter for the gateway's
escalate and verify lanes) and teacher_answers.jsonl (one row per item: set, id, answer, confidence, error).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

from core.records import Example, read_jsonl, write_json, write_jsonl

Progress = Callable[[str, int | None], ContextManager[Callable[..., None]]]

OPTION_FILE = "teacher_option.json"
ANSWERS_FILE = "teacher_answers.jsonl"


def eval_items(skill) -> list[Example]:
    """The frozen eval items the gates score (gates.eval_limit applied)."""
    cfg = skill.config
    return skill.eval_set[: cfg.gates.eval_limit] if cfg.gates.eval_limit else list(skill.eval_set)


def measure_teacher_lane(skill, teacher, run_dir: str | Path, seed: int, replay_items: Sequence[Example],
                         choice: dict | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Answer the eval set and `replay_items` with the run's teacher option (teacher_option.json, written by
    the expansion; made here from the audit's `choice` when the expansion did not run). Writes
    teacher_answers.jsonl and returns {"option", "n", "answered", "seconds", "accounting"} (requests, cache
    hits: a re-run pays nothing twice)."""
    from teachers.strategies import answer_inputs, teacher_option

    run_dir = Path(run_dir)
    t0 = time.perf_counter()
    opt_path = run_dir / OPTION_FILE
    if opt_path.is_file():
        option = json.loads(opt_path.read_text(encoding="utf-8"))
    else:
        option = teacher_option(skill, teacher, choice, seed, progress)
        write_json(opt_path, option)
    rows = []
    for name, items in (("eval", eval_items(skill)), ("replay", list(replay_items))):
        if not items:
            continue
        if progress is not None:
            with progress(f"teacher lane: {name} set", len(items)) as advance:
                got = answer_inputs(skill, teacher, [e.input for e in items], option, advance=advance)
        else:
            got = answer_inputs(skill, teacher, [e.input for e in items], option)
        rows += [{"set": name, "id": e.id, "answer": v.answer, "confidence": v.confidence, "error": v.error}
                 for e, v in zip(items, got)]
    write_jsonl(run_dir / ANSWERS_FILE, rows)
    return {"option": {k: v for k, v in option.items() if k != "prior"}, "n": len(rows),
            "answered": sum(r["answer"] is not None for r in rows), "seconds": round(time.perf_counter() - t0, 2),
            "accounting": teacher.report()}


def read_teacher_answers(run_dir: str | Path) -> dict[tuple[str, str], str | None] | None:
    """{(set, id): answer or None} from the run folder's teacher_answers.jsonl; None when the teacher lane
    was not measured in this run."""
    path = Path(run_dir) / ANSWERS_FILE
    if not path.is_file():
        return None
    return {(r["set"], r["id"]): r.get("answer") for _, r in read_jsonl(path)}


def read_option(run_dir: str | Path) -> dict | None:
    """The run's teacher option (teacher_option.json), or None."""
    path = Path(run_dir) / OPTION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def live_verify(skill_name: str, url: str | None = None, level: float = 0.95) -> dict[str, Any]:
    """What the gateway's verify lane measured since the last runs: per served version, how many kept answers
    the teacher re-answered and how many it agreed with, with an exact (Clopper-Pearson) interval, read from
    the gateway's traffic table (default sqlite:///<DISTILL_HOME>/traffic.db, table traffic_<skill>). The run
    records it beside its own curve (routing.json `live_verify`): the measured agreement of the version in
    production against the teacher it escalates to. {"versions": {}} when nothing was verified; {"error"} when
    the store cannot be read (never fails the run)."""
    from core.workdir import traffic_url
    from core.workdir import traffic_table_name
    from eval_gates.stats import clopper_pearson

    url = url or traffic_url()
    table = traffic_table_name(skill_name)
    try:
        import sqlalchemy as sa

        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
            return {"source": url, "versions": {}}
        eng = sa.create_engine(url)
        try:
            with eng.connect() as c:
                if not sa.inspect(c).has_table(table):
                    return {"source": url, "versions": {}}
                t = sa.Table(table, sa.MetaData(), autoload_with=c)
                rows = c.execute(sa.select(t.c.version, t.c.verified, sa.func.count())
                                 .where(t.c.verified.is_not(None)).group_by(t.c.version, t.c.verified)).all()
        finally:
            eng.dispose()
    except Exception as e:
        return {"source": url, "error": f"{type(e).__name__}: {e}"}
    counts: dict[str, list[int]] = {}
    for version, verified, n in rows:
        c = counts.setdefault(str(version), [0, 0])
        c[0 if verified else 1] += int(n)
    out = {}
    for v, (agree, disagree) in sorted(counts.items()):
        n = agree + disagree
        lo, hi = clopper_pearson(agree, n, level)
        out[v] = {"verified": n, "agreed": agree, "agreement": round(agree / n, 4), "low": round(lo, 4),
                  "high": round(hi, 4)}
    return {"source": url, "table": table, "versions": out}
