"""The accepted pool of one skill: what later runs train on and deduplicate against.

Layout under `pool_dir(skill)` (core.workdir):
  accepted.jsonl                 the pool: every example of a run that was promoted (or of any finished run
                                 with student.train.rejected_runs: admit), plus re-admitted held batches
  held/<run_id>.jsonl            a rejected run's accepted examples, kept apart
  held/<run_id>.json             why it was held (the blocking gates' reasons), when, how many
  held/<run_id>.dedup_pending.npz  its MinHash signatures, committed to the index if it is re-admitted
  held/readmitted/               held batches a promoted run re-admitted, moved out of held/

Invariants:
- The pool only grows, and only at the end of a run (`commit_run`), never while one is running: a run that
  fails earlier changes neither the pool nor the dedup index. Ids are unique in it (appends skip known ids).
- The dedup index (filters.index) grows at the same point as the pool and by the same examples, so the
  index never holds a signature whose example is not pooled, except while a commit is under way (both
  steps are idempotent, so a retry completes it).
- A rejected run's data never trains a later run (student.train.rejected_runs: hold) unless the later run
  re-admits it (student.train.readmit_held) and is promoted itself: only then does the batch join the pool
  and the index (`release_held`). A re-admitting run chooses its batches once (readmitted.json in its run
  folder), so a resumed run trains on the same ones.
- A held batch counts as held while its reason file (held/<run_id>.json) is in held/; it moves last.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from core.records import DataError, Example, instant_key, read_examples, write_examples, write_json
from core.skills import Skill
from core.workdir import pool_dir, run_dir as run_folder

HELD_SIGS = ".dedup_pending.npz"  # a held batch's MinHash signatures, committed if it is re-admitted


def read_pool(skill: str) -> list[Example]:
    """The skill's accepted pool ([] before its first committed run)."""
    path = pool_dir(skill) / "accepted.jsonl"
    return read_examples(path) if path.is_file() else []


def trained_traffic(skill: str) -> set[str]:
    """The traffic ids the pool already holds (refreshed traffic, and traffic inputs the teacher relabelled, that a
    run trained on): kept out of the replay sample."""
    return {e.meta["traffic_id"] for e in read_pool(skill)
            if e.source in ("traffic", "traffic_relabel") and e.meta.get("traffic_id")}


def append_pool(skill: str, new: list[Example]) -> int:
    """Add the examples whose ids the pool does not hold yet; returns the pool's size."""
    pool = read_pool(skill)
    seen = {e.id for e in pool}
    pool += [e for e in new if e.id not in seen]
    write_examples(pool_dir(skill) / "accepted.jsonl", pool)
    return len(pool)


def hold(skill: str, run_id: str, examples: list[Example], decision: dict) -> dict:
    """Keep a rejected run's accepted examples apart, with why (idempotent for a run id)."""
    from filters.index import PENDING_FILE

    folder = pool_dir(skill) / "held"
    reasons = [r for g in decision.get("gates", []) if not g.get("passed") and g.get("blocking", True)
               for r in g.get("reasons", [])]
    write_examples(folder / f"{run_id}.jsonl", examples)
    sigs = run_folder(skill, run_id) / PENDING_FILE
    if sigs.is_file():  # kept so a later promoted run that re-admits the batch can index it
        tmp = folder / f".{run_id}{HELD_SIGS}.tmp"
        shutil.copyfile(sigs, tmp)
        os.replace(tmp, folder / f"{run_id}{HELD_SIGS}")
    # Microseconds: two runs held within one second still order by when they were held, not by name.
    held_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    info = {"run_id": run_id, "examples": len(examples), "reasons": reasons, "held_at": held_at,
            "path": str(folder / f"{run_id}.jsonl")}
    write_json(folder / f"{run_id}.json", info)
    return info


def held_file(skill: str, run_id: str, suffix: str) -> Path:
    """A held batch's file: in held/, or in held/readmitted/ once a promoted run re-admitted it."""
    folder = pool_dir(skill) / "held"
    moved = folder / "readmitted" / f"{run_id}{suffix}"
    return moved if moved.exists() and not (folder / f"{run_id}{suffix}").exists() else folder / f"{run_id}{suffix}"


def read_held_info(path: Path) -> dict:
    """A held batch's reason file; DataError naming the file and the fix when it is not one."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a held batch's record ({e}); restore it or move the batch out of held/") from None
    if not isinstance(info, dict) or not isinstance(info.get("examples"), int) or info["examples"] < 0:
        raise DataError(f"{path}: not a held batch's record (a JSON object with a count 'examples' expected)")
    return info


def readmitted_examples(skill: Skill, run_dir: Path) -> list[Example]:
    """The held batches this run trains with (student.train.readmit_held), chosen once per run folder:
    a resumed run reads readmitted.json and trains on the same batches. [] when the key is off.
    Raises core.records.DataError naming file and line for a held file that is not Example records."""
    if not skill.config.student.train.readmit_held:
        return []
    record = run_dir / "readmitted.json"
    if record.is_file():
        runs = [r["run_id"] for r in json.loads(record.read_text())["runs"]]
    else:
        folder = pool_dir(skill.name) / "held"
        found = [p.name[:-len(".json")] for p in folder.glob("*.json")] if folder.is_dir() else []
        found = [r for r in found if r != run_dir.name and (folder / f"{r}.jsonl").is_file()]
        # Newest batches first, whole batches only, at most student.train.max_pool_examples examples in all:
        # fifty rejected runs do not make the next run fifty times as long.
        info = {r: read_held_info(folder / f"{r}.json") for r in found}
        order = sorted(found, key=lambda r: (instant_key(info[r].get("held_at")), r))  # instants
        cap, total, runs = skill.config.student.train.max_pool_examples, 0, []
        for r in reversed(order):
            if cap is None or total + info[r]["examples"] <= cap:
                total += info[r]["examples"]
                runs.append(r)
        runs = [r for r in order if r in runs]
    batches = {r: read_examples(held_file(skill.name, r, ".jsonl")) for r in runs}
    if not record.is_file():
        write_json(record, {"runs": [{"run_id": r, "examples": len(b)} for r, b in batches.items()]})
    return [e for b in batches.values() for e in b]


def training_examples(skill: Skill, run_dir: Path) -> tuple[list[Example], dict, int]:
    """What a run trains on besides its seeds: the pool (capped by student.train.max_pool_examples) with this
    run's accepted.jsonl and the held batches it re-admits. Returns (examples, cap_pool's counts, held count)."""
    from trainers.data import cap_pool

    pool = read_pool(skill.name)
    own = read_examples(run_dir / "accepted.jsonl")
    seen = {e.id for e in pool} | {e.id for e in own}
    held = [e for e in readmitted_examples(skill, run_dir) if e.id not in seen]
    tc = skill.config.student.train
    examples, capped = cap_pool(pool, own + held, tc.max_pool_examples, tc.pool_sampling, tc.seed)
    return examples, capped, len(held)


def release_held(skill: Skill, run_dir: Path) -> dict | None:
    """After a promotion: the held batches this run trained with join the pool and the dedup index, and
    their files move to held/readmitted/. Idempotent (ids already pooled or indexed are skipped, moved
    files are found where they went), so a retry after a crash here does nothing twice."""
    from filters.index import commit_index

    record = run_dir / "readmitted.json"
    if not record.is_file():
        return None
    runs = [r["run_id"] for r in json.loads(record.read_text())["runs"]]
    examples = [e for r in runs for e in read_examples(held_file(skill.name, r, ".jsonl"))]
    append_pool(skill.name, examples)  # one rewrite of the pool for every batch
    for r in runs:
        sigs = held_file(skill.name, r, HELD_SIGS)
        if sigs.is_file():
            commit_index(skill.name, skill.config.filters, run_dir, pending=sigs)
    for r in runs:  # the reason file last: while it is in held/, the batch still counts as held
        for suffix in (HELD_SIGS, ".jsonl", ".json"):
            src = pool_dir(skill.name) / "held" / f"{r}{suffix}"
            if src.exists():
                (src.parent / "readmitted").mkdir(exist_ok=True)
                os.replace(src, src.parent / "readmitted" / src.name)
    return {"runs": runs, "examples": len(examples)}


def commit_run(skill: Skill, run_dir: Path, decision: dict) -> dict:
    """The end of a finished run: a promoted run (or any, with student.train.rejected_runs: admit) joins the
    pool and the dedup index together, with the held batches it re-admitted; a rejected one is held apart.
    Returns pool_size, index_commit, held (the hold record or None) and readmitted (or None)."""
    from filters.index import commit_index

    accepted = read_examples(run_dir / "accepted.jsonl")
    # Held batches this run trained with (student.train.readmit_held) join the pool only if it is promoted.
    readmitted = release_held(skill, run_dir) if decision["promote"] else None
    if decision["promote"] or skill.config.student.train.rejected_runs == "admit":
        pool_size = append_pool(skill.name, accepted)
        return {"pool_size": pool_size, "index_commit": commit_index(skill.name, skill.config.filters, run_dir),
                "held": None, "readmitted": readmitted}
    held = hold(skill.name, run_dir.name, accepted, decision)
    return {"pool_size": len(read_pool(skill.name)), "index_commit": {"committed": 0, "held": held["examples"]},
            "held": held, "readmitted": readmitted}
