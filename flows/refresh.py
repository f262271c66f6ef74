"""Continuous refresh: traffic that arrived since the last completed run becomes seed candidates.

Plain functions, no Prefect (the `traffic-refresh` task in flows/pipeline.py wraps
`refresh_stage`). One run:

1. Read the skill's whole traffic log (JSONL file or SQL table, eval_gates.replay) and keep
   the records newer than the skill's watermark (`DISTILL_HOME/pool/<skill>/refresh_watermark.json`:
   the newest traffic timestamp consumed, plus the ids seen at exactly that timestamp, so
   a record logged in the same second as the last one consumed is not lost).
2. Refuse, with a recorded reason: the student's own outputs (`reference_source` student or
   similar; model collapse, see trainers/data.py), references nobody accepted, and the
   records of this run's replay hold-out (the gate must never score on training data).
3. The rest become `Example(source="traffic")` with lineage (meta: traffic_id,
   reference_source, timestamp, log) and go through the same quality / exact dedup /
   eval contamination / near-dedup steps as teacher data (filters.default_steps), against
   the seeds, the accepted pool and this run's accepted teacher examples, and against every
   eval set including the replay hold-out.
4. Kept ones are added to the run's `accepted.jsonl`: the run trains on them, and the pool
   append at the end of the run (flows/pipeline.py) adds them with the teacher data. Their
   dedup signatures join the run's pending signatures (filters.commit_index).
5. The new watermark is written to the run folder; `commit_refresh` moves it next to the
   pool only when the run completes, so a failed run reads the same traffic again next time.

Time: the watermark never passes the run's read time. A record stamped in the future (a
skewed clock, or a poisoned `2099-01-01` row) is reported as `future_timestamp` and neither
consumed nor allowed to move the watermark; it is read again by later runs. Late decisions:
a record seen while not yet accepted is remembered (`pending` in the watermark, with its
timestamp) for `gates.replay.settle_window_days`; a later run that finds it accepted (a
reviewer settled it, or feedback corrected it) takes it then, once.

Human share: traffic examples keep `source="traffic"` and count as NON-human for the
training pool's human floor (trainers.data.build_training_pool), even when a person
corrected the reference. The floor protects the curated seed set, the only examples whose
inputs and answers were both chosen and reviewed by people; a traffic surge (or a
correction queue worked in a hurry) must not be able to dilute it. Counting traffic as
non-human can only make the seeds weigh more, never less. `meta.reference_source` is kept
so a later policy can weigh human corrections differently.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

from core.records import Example, Rejected, iter_jsonl, now_iso, parse_instant, read_examples, write_examples, write_json, write_jsonl
from core.skills import Skill
from core.workdir import pool_dir
# STUDENT_SOURCES: values of `reference_source` that mean the small model answered, never training data.
from eval_gates.replay import STUDENT_SOURCES, TrafficLog, TrafficRecord, load_traffic

WATERMARK_FILE = "refresh_watermark.json"  # in the pool folder (committed) and in the run folder (pending)
STATS_FILE = "refresh_stats.json"
REJECTED_FILE = "refresh_rejected.jsonl"
STAGE = "refresh"


# --- the watermark ------------------------------------------------------------------------------------------------


parse_timestamp = parse_instant  # the one timestamp reader (core.records)


@dataclass
class Watermark:
    """The newest traffic timestamp consumed, the ids consumed at exactly that timestamp, and the
    records seen before they were accepted ({id: timestamp}), which a later run may still take."""

    timestamp: str | None = None
    ids_at_timestamp: list[str] = field(default_factory=list)
    pending: dict[str, str] = field(default_factory=dict)

    def is_new(self, ts: datetime, ident: str) -> bool:
        if self.timestamp is None:
            return True
        mark = parse_timestamp(self.timestamp)
        return ts > mark or (ts == mark and ident not in set(self.ids_at_timestamp))

    def advanced(self, seen: Sequence[tuple[datetime, str]]) -> "Watermark":
        """The watermark after consuming `seen` (timestamp, id) pairs; never moves backwards."""
        if not seen:
            return self
        newest = max(ts for ts, _ in seen)
        mark = parse_timestamp(self.timestamp) if self.timestamp else None
        if mark is not None and mark > newest:
            return self
        ids = sorted({i for ts, i in seen if ts == newest})
        if mark is not None and mark == newest:
            ids = sorted(set(ids) | set(self.ids_at_timestamp))
        return Watermark(newest.isoformat(), ids, dict(self.pending))

    def to_dict(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "ids_at_timestamp": self.ids_at_timestamp, "pending": self.pending}


def read_watermark(path: Path) -> Watermark:
    if not path.is_file():
        return Watermark()
    obj = json.loads(path.read_text())
    return Watermark(obj.get("timestamp"), list(obj.get("ids_at_timestamp") or []), dict(obj.get("pending") or {}))


def committed_watermark(skill: str) -> Watermark:
    return read_watermark(pool_dir(skill) / WATERMARK_FILE)


def commit_refresh(skill: str, run_dir: Path) -> dict[str, Any]:
    """Move the run's pending watermark next to the pool (call it next to the pool append, at the
    end of a successful run). Idempotent; a run without a pending watermark commits nothing."""
    pending = Path(run_dir) / WATERMARK_FILE
    if not pending.is_file():
        return {"committed": False, "watermark": committed_watermark(skill).timestamp}
    new = read_watermark(pending)
    old = committed_watermark(skill)
    if old.timestamp and new.timestamp and parse_timestamp(old.timestamp) > parse_timestamp(new.timestamp):
        new = old  # never move backwards (a stale run folder committed late)
    write_json(pool_dir(skill) / WATERMARK_FILE, {**new.to_dict(), "run_dir": str(run_dir), "updated_at": now_iso()})
    return {"committed": True, "watermark": new.timestamp}


# --- reading the traffic --------------------------------------------------------------------------------------------


def read_all_traffic(skill: Skill) -> TrafficLog:
    """The whole traffic log: the replay's `recent` cap (rows read from SQL) does not apply here,
    since everything since the watermark must be seen."""
    cfg = skill.config
    r = cfg.gates.replay
    if r.source in ("sql", "gateway") and r.recent is not None:
        replay = r.model_copy(update={"recent": None})
        cfg = cfg.model_copy(update={"gates": cfg.gates.model_copy(update={"replay": replay})})
    return load_traffic(skill.traffic_path(), cfg, folder=skill.folder)


def student_records(skill: Skill) -> Iterator[tuple[str, str, str]]:
    """(id, timestamp, where) of every traffic record answered by the student.

    The replay reader skips them as malformed (their reference_source is not llm/human), so
    they are looked up here to be refused by name. SQL tables need
    `gates.replay.columns.reference_source`; without it every row reads as 'unknown'.
    """
    r = skill.config.gates.replay
    if r.source != "sql":
        path = skill.traffic_path()
        if r.source != "gateway" or (r.initial and path.is_file()):
            for lineno, obj, _ in iter_jsonl(path):  # bad lines are reported by the traffic reader
                if obj is not None and str(obj.get("reference_source", "")).lower() in STUDENT_SOURCES:
                    yield str(obj.get("id")), str(obj.get("timestamp")), f"{path}:{lineno}"
        if r.source != "gateway":
            return
        from eval_gates.replay import gateway_replay

        r = gateway_replay(skill.config)  # and the gateway's table, where its kept answers are
    if not r.columns.reference_source:
        return
    import sqlalchemy as sa

    from eval_gates.replay import default_sql_url, sqlite_file_missing

    cols = r.columns
    url = r.url or default_sql_url(skill.folder)
    if sqlite_file_missing(url):
        return
    engine = sa.create_engine(url)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            schema, _, name = r.table.rpartition(".")
            if not sa.inspect(conn).has_table(name, schema=schema or None):
                return  # the reader reported it (source sql) or it is not created yet (source gateway)
            table = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=conn)
            src = sa.func.lower(table.c[cols.reference_source])
            rows = conn.execute(sa.select(table.c[cols.id], table.c[cols.created_at])
                                .where(src.in_(sorted(STUDENT_SOURCES)))).all()
    finally:
        engine.dispose()
    for ident, ts in rows:
        yield str(ident), ts.isoformat() if isinstance(ts, datetime) else str(ts), f"{shown}#{r.table}:{ident}"


def traffic_example(skill: str, rec: TrafficRecord, log_source: str, scrub=None) -> Example:
    """A seed candidate from one accepted interaction, with its lineage. `scrub` (core.privacy.Scrubber):
    personal data in the request and the reference becomes placeholders (logs the gateway did not write)."""
    request, reference = (scrub.value(rec.request), scrub.value(rec.reference)) if scrub else (rec.request, rec.reference)
    return Example(id=f"traffic:{rec.id}", skill=skill, input=request, output=reference, source="traffic",
                   meta={"traffic_id": rec.id, "reference_source": rec.reference_source,
                         "traffic_timestamp": rec.timestamp, "traffic_log": rec.log or log_source})


# --- the stage ------------------------------------------------------------------------------------------------------


def by_source(examples: Sequence[Example]) -> dict[str, int]:
    return dict(sorted(Counter(e.source for e in examples).items()))


def pool_growth(before: dict[str, int], after: Sequence[Example]) -> dict[str, Any]:
    """The pool's size by source before the run and after the pool append, and what the run added."""
    now = by_source(after)
    added = {k: now.get(k, 0) - before.get(k, 0) for k in sorted(set(now) | set(before))}
    return {"before": before, "after": now, "added": {k: v for k, v in added.items() if v},
            "total_before": sum(before.values()), "total_after": sum(now.values())}


@dataclass
class RefreshOutcome:
    kept: list[Example]
    rejected: list[Rejected]  # refused before filtering (stage "refresh") and dropped by a filter step
    stats: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        drops: Counter[str] = Counter(f"{r.stage}/{r.reason}" for r in self.rejected)
        return {**self.stats, "kept": len(self.kept), "rejected": len(self.rejected),
                "drops": dict(sorted(drops.items()))}


def _refusal(skill: str, ident: str, ts: str, reason: str, where: str, rec: TrafficRecord | None = None) -> Rejected:
    ex = Example(id=f"traffic:{ident}", skill=skill, input=rec.request if rec else "", source="traffic",
                 output=rec.reference if rec else None,
                 meta={"traffic_id": ident, "traffic_timestamp": ts, "reference_source":
                       rec.reference_source if rec else None})
    return Rejected(ex, STAGE, reason, {"traffic_id": ident, "where": where})


def refresh_stage(skill: Skill, run_dir: Path, replay_items: Sequence[Example], pool: list[Example],
                  traffic: TrafficLog | None = None, fits=None) -> RefreshOutcome:
    """Turn the traffic that arrived since the committed watermark into filtered seed candidates.

    Writes into `run_dir`: accepted.jsonl (this run's teacher examples plus the kept traffic),
    dedup_pending.npz (their signatures), refresh_rejected.jsonl, refresh_stats.json and the
    pending watermark. Idempotent for one run folder (a re-run replaces its traffic examples).
    """
    from filters import DedupIndex, dedup_text, default_steps, eval_sets_for, run_filters

    from core.privacy import scrubber_for

    t0 = time.time()
    cfg = skill.config
    scrub = scrubber_for(cfg.privacy)  # never train on raw personal data, whoever wrote the log
    run_dir = Path(run_dir)
    mark = committed_watermark(skill.name)
    log = traffic if traffic is not None else read_all_traffic(skill)
    holdout = {e.meta.get("traffic_id", e.id) for e in replay_items if e.source == "traffic"}
    rejected: list[Rejected] = []
    seen: list[tuple[datetime, str]] = []
    candidates: list[Example] = []
    new_records = not_accepted = bad_time = future = settled_late = 0
    read_time = datetime.now(timezone.utc)
    horizon = read_time - timedelta(days=cfg.gates.replay.settle_window_days)
    pending = {i: t for i, t in mark.pending.items() if (parse_timestamp(t) or read_time) >= horizon}
    for rec in sorted(log, key=lambda r: (parse_timestamp(r.timestamp) or read_time, r.id)):
        ts = parse_timestamp(rec.timestamp)
        if ts is None:
            bad_time += 1  # cannot be placed against the watermark: never consumed, never advances it
            rejected.append(_refusal(skill.name, rec.id, rec.timestamp, "invalid_timestamp", log.source, rec))
            continue
        if ts > read_time:
            future += 1  # reported, not consumed: the watermark never passes the read time
            rejected.append(_refusal(skill.name, rec.id, rec.timestamp, "future_timestamp", log.source, rec))
            continue
        if not mark.is_new(ts, rec.id):
            if rec.id in pending and rec.accepted:  # settled after an earlier run first saw it
                pending.pop(rec.id)
                settled_late += 1
                if rec.reference_source.lower() in STUDENT_SOURCES:
                    rejected.append(_refusal(skill.name, rec.id, rec.timestamp, "student_output", log.source, rec))
                elif rec.id in holdout:
                    rejected.append(_refusal(skill.name, rec.id, rec.timestamp, "in_replay_holdout", log.source, rec))
                else:
                    candidates.append(traffic_example(skill.name, rec, log.source, scrub))
            continue
        new_records += 1
        seen.append((ts, rec.id))
        if not rec.accepted:
            not_accepted += 1
            if ts >= horizon:
                pending[rec.id] = rec.timestamp  # a reviewer may accept it later
            rejected.append(_refusal(skill.name, rec.id, rec.timestamp, "not_accepted", log.source, rec))
        elif rec.reference_source.lower() in STUDENT_SOURCES:  # the reader refuses these today; kept as a guard
            rejected.append(_refusal(skill.name, rec.id, rec.timestamp, "student_output", log.source, rec))
        elif rec.id in holdout:
            rejected.append(_refusal(skill.name, rec.id, rec.timestamp, "in_replay_holdout", log.source, rec))
        else:
            candidates.append(traffic_example(skill.name, rec, log.source, scrub))
    students = list(student_records(skill))
    for ident, ts_text, where in students:
        ts = parse_timestamp(ts_text)
        if ts is not None and mark.is_new(ts, ident) and ts <= read_time:
            new_records += 1
            seen.append((ts, ident))
            if ts >= horizon:  # a reviewer may still correct it (feedback): then it is a human answer
                pending[ident] = ts_text
            rejected.append(_refusal(skill.name, ident, ts_text, "student_output", where))

    # The same steps as teacher data, against seeds + pool + this run's teacher examples.
    accepted_path = run_dir / "accepted.jsonl"
    run_accepted = [e for e in read_examples(accepted_path) if e.source != "traffic"] if accepted_path.is_file() else []
    text = dedup_text(cfg)
    eval_sets = eval_sets_for(skill, replay_items)
    index = DedupIndex.open(skill.name, cfg.filters, pool=pool, reference=skill.seeds, text=text)
    if run_accepted:
        # This run's teacher examples sit in the run layer, as they did in the filter stage, so
        # write_pending below saves their signatures and the kept traffic's together.
        index.run.add([e.id for e in run_accepted], index.signatures(run_accepted))
    steps = default_steps(cfg.filters, skill.seeds + pool + run_accepted, eval_sets, skill=cfg, index=index,
                          text=text)
    if fits is not None:  # what the trainer could not fit into student.train.max_length (too_long)
        steps.insert(1, fits)
    kept, dropped, filter_stats = run_filters(candidates, steps)
    rejected += dropped
    index.write_pending(run_dir, keep_ids=[e.id for e in run_accepted] + [e.id for e in kept])
    write_examples(accepted_path, run_accepted + kept)

    new_mark = mark.advanced(seen)
    new_mark.pending = dict(sorted(pending.items()))
    write_json(run_dir / WATERMARK_FILE, new_mark.to_dict())
    stats = {"log": log.source, "since": mark.timestamp, "until": new_mark.timestamp, "log_records": len(log),
             "new_records": new_records, "not_accepted": not_accepted,
             "student_refused": sum(r.reason == "student_output" for r in rejected),
             "invalid_timestamp": bad_time, "future_timestamp": future, "settled_late": settled_late,
             "pending": len(pending), "read_time": read_time.isoformat(timespec="seconds"),
             "candidates": len(candidates),
             # Lines/rows the reader skipped, other than the student's (those are refused by name above).
             "malformed_in_log": max(0, len(log.skipped) - len(students)), "filters": filter_stats,
             "pool_before": by_source(pool), "seconds": round(time.time() - t0, 3)}
    out = RefreshOutcome(kept, rejected, stats)
    write_jsonl(run_dir / REJECTED_FILE, (r.to_dict() for r in rejected))
    write_json(run_dir / STATS_FILE, out.summary())
    return out


__all__ = ["RefreshOutcome", "STUDENT_SOURCES", "Watermark", "by_source", "commit_refresh", "committed_watermark",
           "parse_timestamp", "pool_growth", "read_all_traffic", "refresh_stage", "student_records",
           "traffic_example"]
