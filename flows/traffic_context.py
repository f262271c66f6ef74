"""Traffic as the teacher's context (issue 34 item 2): recent served inputs of every lane feed a run's teacher.

Plain functions, no Prefect (flows/expansion.py calls `gather` inside the teacher-expansion task). One run:

1. Read the most recent `gates.replay.context.recent` traffic inputs of every lane (kept by the student,
   escalated, degraded; settled or not) from the sources the refresh reads (gates.replay.source). Only the id,
   the time, the request and, where the log has them, the lane, reference_source and accepted are read: never
   the answer, the student's output or the reference, which are no context. Each request is scrubbed
   (core/privacy.py) before it leaves the reader: the gateway's rows are scrubbed at capture already
   (a placeholder stays a placeholder), a JSONL log copied in by hand may not be.
2. Relabel sample: `context.relabel` inputs drawn, seeded by the run's seed, among the window minus
   - the replay hold-out (`in_replay_holdout`: the gate scores on them; a replayed request never trains),
   - rows an earlier committed run sent to the teacher (`relabelled_before`, the ledger next to the pool) or
     that the pool holds (`in_pool`),
   - accepted rows the refresh takes in this run (`taken_by_refresh`: a person's or the teacher's reference
     is there already; flows/refresh.py),
   - repeats of one request (`repeated_request`: the newest row stands for them).
   `context.prefer: novel` (the default) picks them farthest-first from what training covers (the seeds and
   the pool): greedy k-center on MinHash word-set similarity (filters.novelty.farthest_first), so after a
   shift the teacher labels the inputs the pool lacks, not a sample that is mostly what it has; `random`: a
   seeded uniform sample. The teacher labels them with the run's audited option, in the call that labels its own new inputs
   (teachers.strategies.run_expansion); the student's answer is never read, let alone used as a label. They
   become source "traffic_relabel" candidates and go through the filter stage with the teacher's data
   (quality, dedup against the pool, contamination against every eval set and the replay hold-out).
3. Style pool: the window minus the replay hold-out, repeats, and inputs that overlap an eval set (the filters'
   contamination check: the teacher must not imitate an eval item); under `prefer: novel`, only its novel
   inputs (nearest covered input less similar than the eval set's drift.novelty_quantile, as the drift
   monitor judges) when there are at least teacher.style_shots of them. self_instruct shows
   `context.style_share` of each request's style shots from it, and for one-label tasks turns
   `context.cross_share` of its requests into counterfactual ones: an input of the request's label about what one
   style input names (teachers.strategies.cross_prompt), so the shift's words come with every label.
4. `traffic_context.json` in the run folder records the ids and the counts (no text). `commit_context` adds
   the relabelled ids to the ledger (`<pool>/traffic_relabelled.json`) when the run completes, with the
   refresh watermark: a later run never sends the same row to the teacher again. A re-run of this run folder
   keeps the sample it recorded (as it keeps its seed): the same prompts, which the teacher cache answers.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from core.records import DataError, Example, iter_jsonl, now_iso, parse_instant, write_json
from core.skills import Skill, SkillConfig
from core.text import normalize
from core.workdir import pool_dir

CONTEXT_FILE = "traffic_context.json"  # in the run folder: what this run sampled
LEDGER_FILE = "traffic_relabelled.json"  # in the pool folder: every row a committed run sent to the teacher


@dataclass
class TrafficInput:
    """One served request as context: `request` is scrubbed; lane, reference_source and accepted are None
    where the log does not say (a JSONL log has no lane)."""

    id: str
    timestamp: str
    request: str
    lane: str | None = None
    reference_source: str | None = None
    accepted: bool | None = None
    log: str = ""

    @property
    def instant(self) -> datetime:
        """The timestamp as an aware UTC datetime (validated when the row was read)."""
        return parse_instant(self.timestamp)  # type: ignore[return-value]  # validated when read

    def as_example(self, skill: str) -> Example:
        """An input without an output, its lineage in meta (traffic_id, traffic_timestamp, traffic_lane, traffic_log)."""
        return Example(id=f"traffic_input:{self.id}", skill=skill, input=self.request, output=None, source="traffic",
                       meta={"traffic_id": self.id, "traffic_timestamp": self.timestamp, "traffic_lane": self.lane,
                             "traffic_log": self.log})


# --- reading ------------------------------------------------------------------------------------------------------


def _jsonl_inputs(path: Path, cfg: SkillConfig) -> tuple[list[TrafficInput], int]:
    """(inputs, lines skipped) of a JSONL log: lines with an id, an ISO-8601 timestamp and a request."""
    from eval_gates.replay import canonical_request

    out, skipped = [], 0
    for _, obj, _problem in iter_jsonl(path):
        if obj is None or not isinstance(obj.get("id"), str) or not obj["id"].strip() \
                or parse_instant(obj.get("timestamp")) is None:
            skipped += 1
            continue
        try:
            request = canonical_request(obj.get("request"), cfg)
        except ValueError:
            skipped += 1
            continue
        acc = obj.get("accepted")
        out.append(TrafficInput(obj["id"], str(obj["timestamp"]), request, obj.get("lane"),
                                obj.get("reference_source"), acc if isinstance(acc, bool) else None, str(path)))
    return out, skipped


def _sql_inputs(url: str, replay, cfg: SkillConfig, limit: int, missing_ok: bool,
                url_key: str) -> tuple[list[TrafficInput], int, str]:
    """(inputs, rows skipped, where) of a SQL traffic table: the newest rows first, about `limit` of them."""
    import sqlalchemy as sa

    from eval_gates.replay import canonical_request, sqlite_file_missing

    cols = replay.columns
    if missing_ok and sqlite_file_missing(url):
        return [], 0, f"{url}#{replay.table}"
    engine = sa.create_engine(url)
    shown = engine.url.render_as_string(hide_password=True)
    where = f"{shown}#{replay.table}"
    try:
        with engine.connect() as conn:
            schema, _, name = replay.table.rpartition(".")
            if not sa.inspect(conn).has_table(name, schema=schema or None):
                if missing_ok:
                    return [], 0, where
                raise DataError(f"{shown}: no table {replay.table!r} (gates.replay.table)")
            table = sa.Table(name, sa.MetaData(), schema=schema or None, autoload_with=conn)
            wanted = {"id": cols.id, "request": cols.request, "timestamp": cols.created_at}
            missing = [f"gates.replay.columns.{'created_at' if k == 'timestamp' else k}={c!r}"
                       for k, c in wanted.items() if c not in table.c]
            if missing:
                raise DataError(f"{where}: no column(s) {', '.join(missing)} (set gates.replay.columns)")
            for k, c in (("accepted", cols.accepted), ("reference_source", cols.reference_source), ("lane", "lane")):
                if c and c in table.c:
                    wanted[k] = c
            created = table.c[cols.created_at]
            query = sa.select(*(table.c[c].label(k) for k, c in wanted.items())).order_by(created.desc().nulls_last())
            if isinstance(created.type, sa.DateTime):
                query = query.limit(limit * 2)  # a margin for malformed rows; text timestamps: the table is read whole
            rows = conn.execute(query).mappings().all()
    except sa.exc.OperationalError as e:
        raise DataError(f"{shown}: cannot read traffic ({e.orig}) ({url_key})") from None
    finally:
        engine.dispose()
    out, skipped = [], 0
    for row in rows:
        ts = parse_instant(row["timestamp"])
        if row["id"] is None or ts is None:
            skipped += 1
            continue
        try:
            request = canonical_request(row["request"], cfg)
        except ValueError:
            skipped += 1
            continue
        acc = row.get("accepted")
        out.append(TrafficInput(str(row["id"]), ts.isoformat(), request, row.get("lane"), row.get("reference_source"),
                                bool(acc) if acc is not None else None, where))
    return out, skipped, where


def read_traffic_inputs(skill: Skill, recent: int, now: datetime | None = None) -> tuple[list[TrafficInput], dict]:
    """The most recent `recent` traffic inputs of every lane, oldest first, each request scrubbed per the skill's
    privacy block; and {"log": where, "skipped": malformed lines/rows, "future": rows stamped after `now`}.

    Sources as gates.replay.source says (gateway: the initial JSONL beside the gateway's table; sql; a JSONL
    file); one id read once (the newer copy wins). A missing gateway table or initial file is no traffic; an
    unreachable database raises DataError naming the key."""
    from core.privacy import scrubber_for
    from eval_gates.replay import default_sql_url, gateway_replay

    cfg = skill.config
    r = cfg.gates.replay
    found: list[TrafficInput] = []
    logs, skipped = [], 0
    if r.source in ("gateway", "sql"):
        if r.source == "gateway":
            path = skill.traffic_path()
            if r.initial and path.is_file():
                got, bad = _jsonl_inputs(path, cfg)
                found, skipped = found + got, skipped + bad
                logs.append(str(path))
            g = gateway_replay(cfg)
            key = "gates.replay.url" if r.url else "DISTILL_TRAFFIC_URL, or set gates.replay.url"
            got, bad, where = _sql_inputs(g.url, g, cfg, recent, missing_ok=True, url_key=key)
        else:
            got, bad, where = _sql_inputs(r.url or default_sql_url(skill.folder), r, cfg, recent, missing_ok=False,
                                          url_key="gates.replay.url")
        found, skipped = found + got, skipped + bad
        logs.append(where)
    elif skill.traffic_path().is_file():
        found, skipped = _jsonl_inputs(skill.traffic_path(), cfg)
        logs.append(str(skill.traffic_path()))
    newest: dict[str, TrafficInput] = {}
    for t in found:  # one id once: the newer copy wins (equal times: the one read later, the table)
        if t.id not in newest or t.instant >= newest[t.id].instant:
            newest[t.id] = t
    now = now or datetime.now(timezone.utc)
    ordered = sorted(newest.values(), key=lambda t: (t.instant, t.id))
    window = [t for t in ordered if t.instant <= now][-recent:]
    scrub = scrubber_for(cfg.privacy)  # nothing leaves this function raw, whoever wrote the log
    if scrub is not None:
        window = [dataclasses.replace(t, request=scrub.value(t.request)) for t in window]
    return window, {"log": " + ".join(logs), "skipped": skipped, "future": len(ordered) - sum(
        t.instant <= now for t in ordered)}


# --- the ledger ---------------------------------------------------------------------------------------------------


def relabelled_ledger(skill: str) -> set[str]:
    """The traffic ids committed runs sent to the teacher to label (never sent again)."""
    path = pool_dir(skill) / LEDGER_FILE
    return set(json.loads(path.read_text()).get("ids", [])) if path.is_file() else set()


def commit_context(skill: str, run_dir: Path) -> dict[str, Any]:
    """Add the run's relabelled traffic ids to the ledger (at the end of a completed run, with the refresh
    watermark). Idempotent; a run that sampled nothing commits nothing. Returns {"committed", "ledger"}."""
    path = Path(run_dir) / CONTEXT_FILE
    ids = json.loads(path.read_text()).get("relabel_ids", []) if path.is_file() else []
    if not ids:
        return {"committed": False, "ledger": len(relabelled_ledger(skill))}
    ledger = relabelled_ledger(skill) | set(ids)
    write_json(pool_dir(skill) / LEDGER_FILE, {"ids": sorted(ledger), "updated_at": now_iso(), "run_dir": str(run_dir)})
    return {"committed": True, "ledger": len(ledger)}


# --- one run's context --------------------------------------------------------------------------------------------


def covered_index(skill: Skill, pool: Sequence[Example]):
    """What training covers, as a filters.novelty.NoveltyIndex: the MinHash signatures of the seeds' and the
    pool's inputs (the task type's matching text; at most drift.novelty_pool, a seeded sample beyond) and the
    threshold below which an input counts as novel, calibrated on the eval set as a version's novelty.json is
    (drift.novelty_quantile of the eval inputs' nearest similarities; None with fewer than 20 eval inputs)."""
    from filters import dedup_text
    from filters.novelty import NoveltyIndex, build_novelty

    d = skill.config.drift
    match = dedup_text(skill.config)  # the matching text dedup, contamination and novelty.json compare
    covered = [match(e.input) for e in [*skill.seeds, *pool] if isinstance(e.input, str)]
    return NoveltyIndex.from_dict(build_novelty(covered, [match(e.input) for e in skill.eval_set],
                                                quantile=d.novelty_quantile, max_pool=d.novelty_pool))


def gather(skill: Skill, run_dir: Path, seed: int, replay_items: Sequence[Example], pool: list[Example] | None = None,
           now: datetime | None = None):
    """This run's traffic context: (teachers.strategies.TrafficContext, stats dict). Writes traffic_context.json
    (ids and counts, no text) into `run_dir`. `pool`: the accepted pool (default: read from the pool folder).

    Stats: read (inputs in the window), log, skipped, eligible, relabel_sampled, style_pool, style_contaminated,
    excluded {reason: n}, the config (recent, relabel, style_share, prefer), and under prefer novel style_novel
    (novel inputs among the style candidates) or style_novel_why (no threshold: too few eval inputs). With
    relabel 0 and style_share 0 nothing is read. Cost under prefer novel: MinHash signatures of the window, the
    seeds and the pool (at most drift.novelty_pool), then relabel x window x 128 comparisons."""
    from filters import Contamination, dedup_text, eval_sets_for
    from filters.pool import read_pool
    from filters.novelty import farthest_first
    from flows.refresh import STUDENT_SOURCES, committed_watermark
    from teachers.strategies import TrafficContext

    cfg = skill.config
    c = cfg.gates.replay.context
    stats: dict[str, Any] = {"recent": c.recent, "relabel": c.relabel, "style_share": c.style_share,
                             "cross_share": c.cross_share,
                             "prefer": c.prefer, "read": 0,
                             "log": None, "skipped": 0, "eligible": 0, "relabel_sampled": 0, "style_pool": 0,
                             "style_contaminated": 0, "excluded": {}}
    if c.relabel == 0 and c.style_share == 0:
        write_json(Path(run_dir) / CONTEXT_FILE, {**stats, "relabel_ids": [], "style_ids": []})
        return TrafficContext(), stats
    window, info = read_traffic_inputs(skill, c.recent, now)
    stats.update(read=len(window), log=info["log"], skipped=info["skipped"], future=info["future"])
    holdout = {e.meta.get("traffic_id", e.id) for e in replay_items if e.source == "traffic"}
    pool = read_pool(skill.name) if pool is None else pool
    in_pool = {str(e.meta["traffic_id"]) for e in pool if e.meta.get("traffic_id")}
    ledger = relabelled_ledger(skill.name)
    mark = committed_watermark(skill.name)
    text = dedup_text(cfg)
    excluded: Counter[str] = Counter()
    eligible: list[TrafficInput] = []
    style: list[TrafficInput] = []
    seen_relabel: set[str] = set()
    seen_style: set[str] = set()
    for t in reversed(window):  # newest first: the newest row stands for its repeats
        key = normalize(text(t.request))
        if t.id in holdout:
            excluded["in_replay_holdout"] += 1
            continue
        if key not in seen_style:
            seen_style.add(key)
            style.append(t)
        if t.id in ledger:
            excluded["relabelled_before"] += 1
        elif t.id in in_pool:
            excluded["in_pool"] += 1
        elif t.accepted and str(t.reference_source or "").lower() not in STUDENT_SOURCES \
                and mark.is_new(t.instant, t.id):
            excluded["taken_by_refresh"] += 1
        elif key in seen_relabel:
            excluded["repeated_request"] += 1
        else:
            seen_relabel.add(key)
            eligible.append(t)
    eligible.sort(key=lambda t: (t.instant, t.id))
    cover = covered_index(skill, pool) if c.prefer == "novel" and (eligible or style) else None
    if cover is None:
        picked = random.Random(seed).sample(eligible, min(c.relabel, len(eligible)))
    else:  # what training covers least first, each pick also covering the ones after it
        order, _ = farthest_first(cover.hasher.signatures([text(t.request) for t in eligible]), cover.pool,
                                  c.relabel, seed)
        picked = [eligible[i] for i in order]
    style_examples: list[Example] = []
    if c.style_share > 0 and style:
        candidates = [t.as_example(skill.name) for t in sorted(style, key=lambda t: (t.instant, t.id))]
        check = Contamination.from_config(eval_sets_for(skill, replay_items), cfg.filters, text)
        verdicts = check.check_batch(candidates)
        style_examples = [e for e, v in zip(candidates, verdicts) if v is None]
        stats["style_contaminated"] = len(candidates) - len(style_examples)
        if cover is not None and style_examples:
            if cover.threshold is None:
                stats["style_novel_why"] = cover.unavailable
            else:
                sims = cover.similarity([text(e.input) for e in style_examples])
                novel = [e for e, sim in zip(style_examples, sims) if sim < cover.threshold]
                stats["style_novel"] = len(novel)
                if len(novel) >= cfg.teacher.style_shots:  # enough to vary the shots: show what moved
                    style_examples = novel
    previous = Path(run_dir) / CONTEXT_FILE
    if previous.is_file():
        # A re-run of this run folder (a crash, a retry, a completed run run again) keeps its sample, as it keeps
        # its seed: the same prompts, answered by the cache, although its own rows are in the ledger by now.
        # Rows that have left the window since are not sent again.
        before = json.loads(previous.read_text())
        by_id = {t.id: t for t in window}
        picked = [by_id[i] for i in before.get("relabel_ids", []) if i in by_id]
        shown = set(before.get("style_ids", []))
        style_examples = [t.as_example(skill.name) for t in window if t.id in shown]
        stats["reused_sample"] = True
    picked.sort(key=lambda t: (t.instant, t.id))
    relabel = [t.as_example(skill.name) for t in picked]
    stats.update(eligible=len(eligible), relabel_sampled=len(relabel), style_pool=len(style_examples),
                 excluded=dict(sorted(excluded.items())))
    write_json(Path(run_dir) / CONTEXT_FILE, {**stats, "relabel_ids": [t.id for t in picked],
                                              "style_ids": [e.meta["traffic_id"] for e in style_examples]})
    return TrafficContext(relabel=relabel, style=style_examples, style_share=c.style_share,
                          cross_share=c.cross_share), stats


__all__ = ["CONTEXT_FILE", "LEDGER_FILE", "TrafficInput", "commit_context", "covered_index", "gather", "read_traffic_inputs",
           "relabelled_ledger"]
