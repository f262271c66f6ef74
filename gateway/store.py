"""The traffic store from the command line: `distill traffic import|export|stats SKILL`.

The store is the table the gateway writes (gateway/traffic.py: url $DISTILL_TRAFFIC_URL, else
sqlite:///<DISTILL_HOME>/traffic.db; table traffic_<skill>), which the replay gate and the refresh read
by default (gates.replay.source: gateway). Import brings logs from elsewhere in, in the traffic.jsonl
format (id, timestamp, request, reference, reference_source, accepted): every line is checked first and
the file is refused whole, naming each bad line as file:line, so nothing is half-written; ids already in
the table are left as they are (importing twice adds nothing); text is scrubbed of personal data per the
skill's privacy block before it is written. Export writes the table back out in the same format.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from core.records import DataError, iter_jsonl, parse_instant
# The small model's own answers: imported as 'student', never trained on.
from eval_gates.replay import STUDENT_SOURCES as _STUDENT
IMPORTED_LANE = "imported"  # the lane column of imported rows (the gateway writes keep | escalate | degraded | unanswered)
MAX_LISTED = 20  # bad lines named in the error; the count says how many more


def _engine(url: str):
    import sqlalchemy as sa

    kw: dict[str, Any] = {}
    if url.startswith("postgresql"):
        kw["connect_args"] = {"connect_timeout": 3}
    return sa.create_engine(url, **kw)


def _shown(engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def _existing_table(conn, name: str):
    """The table as it is in the database (None when it does not exist)."""
    import sqlalchemy as sa

    if not sa.inspect(conn).has_table(name):
        return None
    return sa.Table(name, sa.MetaData(), autoload_with=conn)


def _check_line(obj: dict, cfg) -> dict[str, Any]:
    """One traffic.jsonl record as a row of the gateway's table; ValueError says what is wrong."""
    from core.tasks import get_task
    from eval_gates.replay import parse_record

    source = obj.get("reference_source", "unknown")
    student = isinstance(source, str) and source.lower() in _STUDENT
    reference_missing = student and obj.get("reference") is None
    if student:
        # The small model's own answer: kept for the counts, refused as a label by the readers. A missing
        # reference (no valid answer) is allowed; a present one is checked as any other.
        obj = {**obj, "reference_source": "llm"}
        if reference_missing:
            task = get_task(cfg)
            obj["reference"] = cfg.labels[0] if task.one_label else ({} if task.json_output else "-")
    rec = parse_record(obj, cfg)
    return {"id": rec.id, "created_at": parse_instant(rec.timestamp), "skill": cfg.name, "version": None,
            "request": rec.request, "answer": None, "lane": IMPORTED_LANE,
            "reference": None if reference_missing else rec.reference,
            "reference_source": "student" if student else rec.reference_source, "accepted": rec.accepted}


def import_jsonl(skill, path: str | Path, url: str, table: str) -> dict[str, int]:
    """Import a JSONL traffic log into `table` at `url` for the loaded Skill `skill`. Returns counts (read,
    inserted, already: ids that were in the table). Raises DataError naming every bad line (file:line)
    before anything is written; the insert is one transaction."""
    import sqlalchemy as sa

    from core.privacy import scrubber_for
    from gateway.traffic import clean_row, ensure_sqlite_dir, traffic_table

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (distill traffic import SKILL FILE)")
    cfg = skill.config
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, obj, problem in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        try:
            row = _check_line(obj, cfg)
        except ValueError as e:
            problems.append(f"{where}: {e}")
            continue
        if row["id"] in first_line:
            problems.append(f"{where}: duplicate id {row['id']!r} (first on line {first_line[row['id']]})")
            continue
        first_line[row["id"]] = lineno
        rows.append(row)
    if problems:
        more = f"\n... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{path}: {len(problems)} bad line(s), nothing imported:\n" + "\n".join(problems[:MAX_LISTED]) + more)
    scrub = scrubber_for(cfg.privacy)
    if scrub is not None:
        rows = [scrub.row(r) for r in rows]
    rows = [clean_row(r)[0] for r in rows]  # what no store can hold as text (lone surrogates, NUL)
    ensure_sqlite_dir(url)
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            t = _existing_table(conn, table)
            if t is None:
                t = traffic_table(sa.MetaData(), table)
                t.create(conn)
            have: set[str] = set()
            ids = [r["id"] for r in rows]
            for i in range(0, len(ids), 500):  # bounded IN lists
                have |= {str(x) for x in conn.execute(sa.select(t.c.id).where(t.c.id.in_(ids[i:i + 500]))).scalars()}
            new = [r for r in rows if r["id"] not in have]
            if new:
                conn.execute(sa.insert(t), new)
    except sa.exc.OperationalError as e:
        raise DataError(f"{_shown(engine)}: cannot write traffic ({e.orig}) (--url or DISTILL_TRAFFIC_URL)") from None
    finally:
        engine.dispose()
    return {"read": len(rows), "inserted": len(new), "already": len(rows) - len(new)}


def _iso(ts: Any) -> str | None:
    t = parse_instant(ts)
    return t.isoformat().replace("+00:00", "Z") if t is not None else None


def export_jsonl(url: str, table: str, out: TextIO, cfg=None) -> int:
    """Write every row of `table` to `out` as traffic.jsonl lines, oldest first (accepted: false for a row
    nobody settled; lane, version, verified and answer kept as extra keys). JSON skills (`cfg`) get their
    requests and references back as JSON objects. Returns the number of lines."""
    import sqlalchemy as sa

    json_in = json_out = False
    if cfg is not None:
        from core.tasks import get_task

        task = get_task(cfg)
        json_in, json_out = task.json_input, task.json_output
    engine = _engine(url)
    n = 0
    try:
        with engine.connect() as conn:
            t = _existing_table(conn, table)
            if t is None:
                raise DataError(f"{_shown(engine)}: no table {table!r} (nothing captured for this skill yet)")
            for row in conn.execute(sa.select(t).order_by(t.c.created_at, t.c.id)).mappings():
                request, reference = row["request"], row["reference"]
                if json_in and isinstance(request, str):
                    request = _maybe_json(request)
                if json_out and isinstance(reference, str):
                    reference = _maybe_json(reference)
                rec = {"id": row["id"], "timestamp": _iso(row["created_at"]), "request": request, "reference": reference,
                       "reference_source": row["reference_source"], "accepted": bool(row["accepted"])}
                for extra in ("lane", "version", "verified", "answer"):
                    if extra in row and row[extra] is not None:
                        rec[extra] = row[extra]
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
    except sa.exc.OperationalError as e:
        raise DataError(f"{_shown(engine)}: cannot read traffic ({e.orig}) (--url or DISTILL_TRAFFIC_URL)") from None
    finally:
        engine.dispose()
    return n


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def stats(url: str, table: str) -> dict[str, Any]:
    """Counts of `table`: rows, by lane, by reference_source, accepted and verified (true/false/null), and
    the first and last created_at. {"rows": 0} when the table does not exist yet."""
    import sqlalchemy as sa

    engine = _engine(url)
    try:
        from eval_gates.replay import sqlite_file_missing

        if sqlite_file_missing(url):
            return {"store": url, "table": table, "rows": 0}
        with engine.connect() as conn:
            t = _existing_table(conn, table)
            if t is None:
                return {"store": _shown(engine), "table": table, "rows": 0}

            def counts(col) -> dict[str, int]:
                got = conn.execute(sa.select(col, sa.func.count()).group_by(col)).all()
                return {("null" if k is None else str(bool(k)).lower() if isinstance(k, (bool, int)) and
                         col.name in ("accepted", "verified") else str(k)): int(v) for k, v in sorted(got, key=lambda x: str(x[0]))}

            total = conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            first, last = conn.execute(sa.select(sa.func.min(t.c.created_at), sa.func.max(t.c.created_at))).one()
            return {"store": _shown(engine), "table": table, "rows": int(total), "lane": counts(t.c.lane),
                    "reference_source": counts(t.c.reference_source), "accepted": counts(t.c.accepted),
                    "verified": counts(t.c.verified), "first": _iso(first), "last": _iso(last)}
    except sa.exc.OperationalError as e:
        raise DataError(f"{_shown(engine)}: cannot read traffic ({e.orig}) (--url or DISTILL_TRAFFIC_URL)") from None
    finally:
        engine.dispose()


__all__ = ["IMPORTED_LANE", "export_jsonl", "import_jsonl", "stats"]

