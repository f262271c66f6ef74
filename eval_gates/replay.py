"""Live-traffic replay: read the skill's traffic (JSONL file or SQL table), sample requests reproducibly.

A malformed line or row is skipped, never fatal: it is counted and recorded with where it is
(file:line, or url#table:id) and why, so one bad log line cannot stop the gate, and an empty
sample fails the gate closed instead.

Time: timestamps are parsed and compared as instants (naive ones are UTC), never as strings; a
record whose timestamp is not a time is skipped with that reason. Duplicate ids resolve one way
on every source: the newest copy wins (a later copy is a correction; on equal timestamps, the
later line of a JSONL file), and the older copy is recorded as skipped.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.records import DataError, Example, iter_jsonl, parse_instant
from core.skills import SkillConfig
from core.tasks import get_task

log = logging.getLogger("distill")


@dataclass
class TrafficRecord:
    id: str
    timestamp: str
    request: str
    reference: str
    reference_source: str  # "llm" (the large model's answer), "human" (a person's correction) or "unknown"
    accepted: bool
    log: str = ""  # the log it was read from (a JSONL path, or url#table): lineage when two are read together

    @property
    def instant(self) -> datetime:
        """The timestamp as an aware UTC datetime (validated when the record was read)."""
        return parse_instant(self.timestamp)

    def as_example(self, skill: str) -> Example:
        return Example(id=self.id, skill=skill, input=self.request, output=self.reference, source="traffic",
                       meta={"accepted": self.accepted, "reference_source": self.reference_source})


@dataclass
class Skipped:
    where: str  # file:line, or url#table:id
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


class TrafficLog(list):
    """The valid records (a list), plus where they came from and what was skipped and why."""

    def __init__(self, records=(), source: str = "", skipped: list[Skipped] | None = None):
        super().__init__(records)
        self.source = source
        self.skipped: list[Skipped] = skipped or []

    def summary(self, limit: int = 20) -> dict:
        return {"source": self.source, "records": len(self), "accepted": sum(r.accepted for r in self),
                "skipped": len(self.skipped), "skipped_examples": [s.to_dict() for s in self.skipped[:limit]]}


def _canonical(value: Any, what: str, json_task: bool) -> str:
    """Requests/references as stored in Example: text, or canonical JSON text for JSON task types."""
    if json_task:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueError(f"'{what}' is not valid JSON") from None
        if not isinstance(value, dict):
            raise ValueError(f"'{what}' must be a JSON object")
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"'{what}' must be a non-empty string")
    return value.strip()


def canonical_request(value: Any, cfg: SkillConfig) -> str:
    """A logged request as Example inputs hold it: stripped text, or canonical JSON text for JSON-input task
    types. ValueError says what is wrong (not a non-empty string, not a JSON object)."""
    return _canonical(value, "request", get_task(cfg).json_input)


def _accepted(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):  # SQL engines without a boolean type
        return bool(value)
    raise ValueError("'accepted' must be true or false")


# Values of `reference_source` that mean the small model answered (compared lower-case): such a row is the gateway's
# own kept answer, never a reference; the readers skip it without calling it malformed.
STUDENT_SOURCES = frozenset({"student", "slm", "adapter", "distilled", "small_model"})
STUDENT_ROW = "the small model's own answer (reference_source student): never a reference"


def parse_record(obj: dict, cfg: SkillConfig) -> TrafficRecord:
    """One traffic record from a dict with the JSONL keys; ValueError says what is wrong."""
    for key in ("id", "timestamp"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise ValueError(f"'{key}' must be a non-empty string")
    if parse_instant(obj["timestamp"]) is None:
        raise ValueError(f"'timestamp' {obj['timestamp'][:40]!r} is not an ISO-8601 time (e.g. 2026-11-20T10:00:00Z)")
    # JSON fields (a function call's request, JSON answers) as canonical JSON text.
    task = get_task(cfg)
    request = _canonical(obj.get("request"), "request", task.json_input)
    reference = _canonical(obj.get("reference"), "reference", task.json_output)
    accepted = _accepted(obj.get("accepted"))
    source = obj.get("reference_source", "unknown")
    if isinstance(source, str) and source.lower() in STUDENT_SOURCES:
        raise ValueError(STUDENT_ROW)
    if source not in ("llm", "human", "unknown"):
        raise ValueError("'reference_source' must be 'llm' or 'human'")
    reference = task.canonical_output(reference)  # a label as declared, whatever its Unicode form or case
    if task.one_label and reference not in cfg.labels:
        raise ValueError(f"reference {reference!r} is not one of the labels {cfg.labels}")
    return TrafficRecord(id=obj["id"], timestamp=obj["timestamp"], request=request, reference=reference,
                         reference_source=source, accepted=accepted)


def _take(out: TrafficLog, seen: dict[str, tuple[int, str]], where: str, cfg: SkillConfig, obj: dict | None,
          problem: str | None) -> None:
    """Append a valid record to `out`, or record why it is skipped (never raises). Of two records
    with one id the newer stays (equal times: the one read later); the other is skipped."""
    try:
        if problem:
            raise ValueError(problem)
        rec = parse_record(obj, cfg)
    except ValueError as e:
        out.skipped.append(Skipped(where, str(e)))
        return
    if rec.id in seen:
        pos, first_where = seen[rec.id]
        old = out[pos]
        if rec.instant >= old.instant:
            out[pos] = rec
            seen[rec.id] = (pos, where)
            out.skipped.append(Skipped(first_where, f"duplicate id {rec.id!r}: superseded by the newer copy at {where}"))
        else:
            out.skipped.append(Skipped(where, f"duplicate id {rec.id!r}: older than the copy at {first_where}"))
        return
    seen[rec.id] = (len(out), where)
    out.append(rec)


def read_traffic_jsonl(path: Path, cfg: SkillConfig) -> TrafficLog:
    if not path.is_file():
        raise DataError(f"{path}: missing traffic log for skill {cfg.name} (gates.replay.source)")
    out = TrafficLog(source=str(path))
    seen: dict[str, tuple[int, str]] = {}
    for lineno, obj, problem in iter_jsonl(path):
        _take(out, seen, f"{path}:{lineno}", cfg, obj, problem)
    for rec in out:
        rec.log = out.source
    return out


def default_sql_url(folder: Path) -> str:
    return f"sqlite:///{(folder / 'traffic.db').resolve()}"


def gateway_replay(cfg: SkillConfig):
    """gates.replay as a SQL source on the gateway's table (source gateway): gates.replay.url, else the gateway's
    store (core.workdir.traffic_url); table traffic_<skill>; its reference_source column read."""
    from core.workdir import traffic_table_name, traffic_url

    r = cfg.gates.replay
    columns = r.columns if r.columns.reference_source else r.columns.model_copy(update={"reference_source": "reference_source"})
    return r.model_copy(update={"source": "sql", "url": r.url or traffic_url(), "table": traffic_table_name(cfg.name),
                                "columns": columns})


def _with_replay(cfg: SkillConfig, replay) -> SkillConfig:
    return cfg.model_copy(update={"gates": cfg.gates.model_copy(update={"replay": replay})})


def sqlite_file_missing(url: str) -> bool:
    """True for a sqlite URL whose database file does not exist (connecting would create an empty one)."""
    import sqlalchemy as sa

    u = sa.engine.make_url(url)
    return u.get_backend_name() == "sqlite" and bool(u.database) and u.database != ":memory:" \
        and not Path(u.database).is_file()


def read_traffic_sql(url: str, cfg: SkillConfig, missing_ok: bool = False, url_key: str = "gates.replay.url") -> TrafficLog:
    """Rows of the traffic table (newest first, at most `recent`... all rows when recent is None).
    `missing_ok`: a SQLite file or a table that does not exist yet reads as no rows (the gateway has not
    served the skill yet); an unreachable database still raises."""
    import sqlalchemy as sa

    r = cfg.gates.replay
    cols = r.columns
    if missing_ok and sqlite_file_missing(url):
        return TrafficLog(source=f"{url}#{r.table}")
    engine = sa.create_engine(url)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            schema, _, name = r.table.rpartition(".")
            try:
                table = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=conn)
            except sa.exc.NoSuchTableError:
                if missing_ok:
                    return TrafficLog(source=f"{shown}#{r.table}")
                raise DataError(f"{shown}: no table {r.table!r} (gates.replay.table)") from None
            wanted = {"id": cols.id, "request": cols.request, "reference": cols.reference, "accepted": cols.accepted,
                      "timestamp": cols.created_at}
            if cols.reference_source:
                wanted["reference_source"] = cols.reference_source
            missing = [f"gates.replay.columns.{'created_at' if k == 'timestamp' else k}={c!r}"
                       for k, c in wanted.items() if c not in table.c]
            if missing:
                raise DataError(f"{shown}#{r.table}: no column(s) {', '.join(missing)}; columns are "
                                f"{', '.join(table.c.keys())} (set gates.replay.columns)")
            created = table.c[cols.created_at]
            # NULLs last on every engine (PostgreSQL sorts them first in descending order, SQLite last).
            query = sa.select(*(table.c[c].label(k) for k, c in wanted.items())).order_by(created.desc().nulls_last())
            if r.recent and isinstance(created.type, sa.DateTime):
                # Malformed and rejected rows are skipped after the query: read a margin beyond `recent`.
                # Text timestamps ("...+05:00") do not sort as instants in SQL: those tables are read whole.
                query = query.limit(r.recent * 4)
            rows = conn.execute(query).mappings().all()
    except sa.exc.OperationalError as e:
        raise DataError(f"{shown}: cannot read traffic ({e.orig}) ({url_key})") from None
    finally:
        engine.dispose()
    out = TrafficLog(source=f"{shown}#{r.table}")
    seen: dict[str, tuple[int, str]] = {}
    for i, row in enumerate(rows, 1):
        obj = dict(row)
        ident = obj.get("id")
        where = f"{shown}#{r.table}:{ident if ident is not None else f'row {i}'}"
        if obj.get("accepted") is None and "accepted" in obj:
            obj["accepted"] = False  # NULL: nobody settled it yet (the gateway's rows before feedback): not accepted
        if ident is not None:
            obj["id"] = str(ident)
            ts = obj.get("timestamp")
            # A naive DATETIME column is read as UTC, like a naive ISO timestamp in a JSONL log.
            obj["timestamp"] = parse_instant(ts).isoformat() if isinstance(ts, datetime) else \
                (str(ts) if ts is not None else None)
        _take(out, seen, where, cfg, obj, "'id' is null" if ident is None else None)
    for rec in out:
        rec.log = out.source
    return out


def merge_logs(first: TrafficLog, then: TrafficLog) -> TrafficLog:
    """One log of two sources, each id once: the newer copy wins (equal times: the one in `then`), the
    other is recorded as skipped, as duplicates within one source are."""
    out = TrafficLog(source=" + ".join(x for x in (first.source, then.source) if x),
                     skipped=[*first.skipped, *then.skipped])
    where: dict[str, tuple[int, str]] = {}
    for log_, rec in [(first, r) for r in first] + [(then, r) for r in then]:
        if rec.id in where:
            pos, src = where[rec.id]
            if rec.instant >= out[pos].instant:
                out[pos] = rec
                where[rec.id] = (pos, log_.source)
                out.skipped.append(Skipped(src, f"duplicate id {rec.id!r}: superseded by the copy in {log_.source}"))
            else:
                out.skipped.append(Skipped(log_.source, f"duplicate id {rec.id!r}: older than the copy in {src}"))
            continue
        where[rec.id] = (len(out), log_.source)
        out.append(rec)
    return out


def load_traffic(path: Path | None, cfg: SkillConfig, folder: Path | None = None) -> TrafficLog:
    """The skill's traffic: per gates.replay.source, the gateway's table plus the JSONL file `path` beside it
    ('gateway', the default), the JSONL file at `path` alone, or a SQL table ('sql').

    Malformed lines/rows are skipped and recorded (TrafficLog.skipped); a missing file or an
    unreachable database raises DataError naming the config key to fix. Source gateway: a missing
    initial file or a table the gateway has not created yet is no traffic, not an error.
    """
    r = cfg.gates.replay
    if r.source == "gateway":
        initial = Path(path) if path is not None and r.initial else None
        first = read_traffic_jsonl(initial, cfg) if initial is not None and initial.is_file() else TrafficLog()
        g = gateway_replay(cfg)
        key = "gates.replay.url" if r.url else "DISTILL_TRAFFIC_URL, or set gates.replay.url"
        out = merge_logs(first, read_traffic_sql(g.url, _with_replay(cfg, g), missing_ok=True, url_key=key))
    elif r.source == "sql":
        base = folder or (Path(path).parent if path else Path("."))
        out = read_traffic_sql(r.url or default_sql_url(base), cfg)
    else:
        out = read_traffic_jsonl(Path(path), cfg)
    bad = [s for s in out.skipped if s.reason != STUDENT_ROW]  # the gateway's kept answers are not malformed
    for s in bad[:5]:
        log.warning("traffic: skipped %s: %s", s.where, s.reason)
    if len(bad) > 5:
        log.warning("traffic: skipped %d more malformed record(s)", len(bad) - 5)
    return out


def load_skill_traffic(skill) -> TrafficLog:
    """load_traffic for a loaded Skill (its folder and config)."""
    return load_traffic(skill.traffic_path(), skill.config, folder=skill.folder)


def replay_sample(records: list[TrafficRecord], n: int, seed: int = 0, recent: int | None = None) -> list[TrafficRecord]:
    """n accepted requests sampled reproducibly among the `recent` most recent ones, in time order.

    Only accepted references (the large model's answer a person let stand, or a
    person's correction) count as ground truth; rejected answers are not.
    """
    accepted = sorted((r for r in records if r.accepted), key=lambda r: (r.instant, r.id))
    if recent:
        accepted = accepted[-recent:]
    if len(accepted) <= n:
        return accepted
    return sorted(random.Random(seed).sample(accepted, n), key=lambda r: (r.instant, r.id))


def replay_items(skill, trained_ids: set[str] | frozenset[str] = frozenset()) -> tuple[list[Example], TrafficLog]:
    """The replay hold-out of a run (as Examples) and the log it was drawn from, per gates.replay.

    Traffic already in the training pool (`trained_ids`: traffic ids that continuous refresh
    accepted in earlier runs) is never replayed: the gate would score the candidate on its own
    training data. Items held out once stay out of the pool, so they remain replayable."""
    r = skill.config.gates.replay
    traffic = load_skill_traffic(skill)
    eligible = TrafficLog([t for t in traffic if t.id not in trained_ids], source=traffic.source,
                          skipped=traffic.skipped) if trained_ids else traffic
    from core.privacy import scrubber_for

    scrub = scrubber_for(skill.config.privacy)  # the hold-out is written into the run folder: no raw personal data
    items = [t.as_example(skill.name) for t in replay_sample(eligible, r.sample, seed=r.seed, recent=r.recent)]
    if scrub is not None:
        import dataclasses

        items = [dataclasses.replace(e, input=scrub.value(e.input), output=scrub.value(e.output)) for e in items]
    return items, traffic
