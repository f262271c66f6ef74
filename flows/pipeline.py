"""The distillation flow for one skill: seeds -> teacher -> filters -> QLoRA -> gates -> registry.

Each task is a few lines around plain functions in teachers/, filters/, trainers/,
eval_gates/ and registry/. Tasks pass paths and small dicts, not datasets.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, field_validator

from core.records import (Example, Rejected, hash_examples, instant_key, read_examples, write_examples,
                          write_json, write_jsonl)
from core.skills import Skill, load_skill
from core.workdir import check_run_id, pool_dir, registry_root, run_dir as run_folder
from flows.limits import network_failure, registry_failure
from flows.progress import stage


class RunParams(BaseModel):
    """Parameters of one pipeline run (validated at the flow boundary)."""

    skill: str = Field(description="Skill folder name under seeds/.", pattern=r"^[A-Za-z0-9_-]+$")
    profile: str = Field("default", description="Named overrides from the skill file (e.g. smoke).")
    seed: int | None = Field(None, ge=0, le=2**31 - 1,
                             description="Seed for the teacher's sampling and shots; a fresh one per run when "
                                         "empty (recorded in params.json), so scheduled runs find new inputs.")
    run_id: str | None = Field(None, description="Run folder name; new timestamped id when empty.")
    stage_pool: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$",
                                   description="Work pool for training and evaluation (e.g. gpu-pool): when set, the "
                                               "run hands both stages to the deployment train-evaluate/<skill> on "
                                               "that pool and waits for it; empty: they run in this process.")

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str | None) -> str | None:
        return None if v is None else check_run_id(v)


@dataclass
class Models:
    teacher: str
    student: str
    student_revision: str


def _code_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


# --- tasks ---------------------------------------------------------------------------------------------------------


@task(name="provision-models", cache_policy=NO_CACHE)
def provision_models(skill: Skill) -> Models:
    from trainers.base_model import model_revision, resolve_model

    cfg = skill.config
    teacher = resolve_model(cfg.teacher.model) if cfg.teacher.backend == "local" else cfg.teacher.model
    student = resolve_model(cfg.student.base_model)
    return Models(teacher=teacher, student=student, student_revision=model_revision(student))


@task(name="teacher-audit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[30, 120],
      retry_jitter_factor=0.5, retry_condition_fn=network_failure)
def audit_teacher(skill: Skill, teacher_path: str, run_dir: Path, seed: int) -> dict:
    """The teacher answers the seeds k-fold under every open option (shots, calibration); the
    best option labels this run; below audit.floor the run stops. Writes teacher_audit.json."""
    from teachers import open_teacher
    from teachers.audit import run_audit
    from teachers.strategies import answerer

    with open_teacher(skill.config.teacher, teacher_path, log_dir=run_dir,
                      scoring=answerer(skill.config) == "score") as teacher:
        audit = run_audit(skill, teacher, seed, progress=stage)
        audit["accounting"] = teacher.report()
    write_json(run_dir / "teacher_audit.json", audit)
    log = get_run_logger()
    for o in audit["options"]:
        log.info("audit %-26s %s %.3f  (teacher %.1f s, %d sent)", o["option"], audit["metric"], o["score"] or 0.0,
                 o["teacher_seconds"], o["requests_sent"])
    (log.info if audit["passed"] else log.warning)(audit["reason"])
    return audit


# Retries only where the network is (teacher endpoint, registry storage); the deterministic
# stages (provision, filter, train, evaluate) would fail the same way again. A retried expansion
# re-sends nothing already answered (durable response cache); per-request retries with backoff
# and the endpoint's rpm/tpm budget live in the teacher client (teachers/client.py).
@task(name="teacher-expansion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[30, 120],
      retry_jitter_factor=0.5, retry_condition_fn=network_failure)
def expand(skill: Skill, teacher_path: str, run_dir: Path, seed: int, choice: dict | None = None) -> dict:
    """The configured strategies (default: new inputs in the style of the seeds, then labels
    from the few-shot teacher); writes generated.jsonl and teacher_accounting.json."""
    from flows.limits import teacher_expansion_slot
    from teachers import open_teacher
    from teachers.strategies import answerer, run_expansion

    # One slot of the global `teacher-expansion` limit across all runs (uncapped where the API has none).
    with teacher_expansion_slot(), open_teacher(skill.config.teacher, teacher_path, log_dir=run_dir,
                                                scoring=answerer(skill.config) == "score") as teacher:
        res = run_expansion(skill, teacher, run_dir, seed, progress=stage, choice=choice)
    acc = res.accounting
    get_run_logger().info("teacher wrote %d inputs, answered %d, dropped %d; %d requests (%d cached, %d retries)",
                          res.inputs, len(res.examples), len(res.rejected), acc["requests"], acc["cache_hits"],
                          acc["retries"])
    return {"requested": res.requested, "generated": res.inputs, "labeled": len(res.examples),
            "rejected": res.rejected, "teacher": res.teacher, "seconds": round(res.seconds, 1),
            "prompt_tokens": acc["prompt_tokens"], "accounting": acc}


@task(name="teacher-lane", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[30, 120],
      retry_jitter_factor=0.5, retry_condition_fn=network_failure)
def measure_teacher(skill: Skill, teacher_path: str, run_dir: Path, seed: int, replay_items: list[Example],
                    choice: dict | None = None) -> dict:
    """The teacher answers the frozen eval set and the replay sample with this run's option (the one that
    labelled it), so routing compares both lanes on the same items; writes teacher_answers.jsonl. Cached:
    a re-run sends nothing twice."""
    from eval_gates.lanes import measure_teacher_lane
    from teachers import open_teacher
    from teachers.strategies import answerer

    with open_teacher(skill.config.teacher, teacher_path, log_dir=run_dir,
                      scoring=answerer(skill.config) == "score") as teacher:
        res = measure_teacher_lane(skill, teacher, run_dir, seed, replay_items, choice, progress=stage)
    acc = res["accounting"]
    get_run_logger().info("teacher lane: answered %d of %d eval and replay items (%d requests, %d cached) in %.0f s",
                          res["answered"], res["n"], acc["requests"], acc["cache_hits"], res["seconds"])
    return res


@task(name="filter", cache_policy=NO_CACHE)
def filter_candidates(skill: Skill, run_dir: Path, replay_items: list[Example]) -> dict:
    """Quality, exact and MinHash near-dedup (vs seeds, everything accepted before, the batch),
    and contamination against every eval set. The persistent dedup index is not touched here:
    `filters.commit_index` appends this run's signatures next to the pool append."""
    from filters import filter_stage
    from filters.quality import FitsMaxLength

    candidates = read_examples(run_dir / "generated.jsonl")
    previous = _read_pool(skill.name)
    with stage("filters", len(candidates)) as advance:
        out = filter_stage(skill, candidates, replay_items, previous, run_dir,
                           fits=FitsMaxLength.for_student(skill.config))
        advance(len(candidates))
    kept, rejected, stats = out.kept, out.rejected, out.stats
    if stats["index"]["rebuilt_from_pool"]:
        get_run_logger().warning("dedup index of %s rebuilt from the accepted pool (%d examples)",
                                 skill.name, len(previous))
    return {"accepted": len(kept), "rejected": rejected, "stats": stats, "previous_pool": len(previous)}


@task(name="traffic-refresh", cache_policy=NO_CACHE)
def refresh_traffic(skill: Skill, run_dir: Path, replay_items: list[Example]) -> dict:
    """Traffic that arrived since the last completed run -> seed candidates through the same filters
    as teacher data; kept ones join this run's accepted.jsonl (trained on now, pooled at the end)."""
    from filters.quality import FitsMaxLength
    from flows.refresh import refresh_stage

    with stage("traffic refresh", None):
        out = refresh_stage(skill, run_dir, replay_items, _read_pool(skill.name),
                            fits=FitsMaxLength.for_student(skill.config)).summary()
    get_run_logger().info("traffic refresh since %s: %d new records, %d candidates, kept %d; refused %d student "
                          "outputs, %d not accepted", out["since"] or "the beginning", out["new_records"],
                          out["candidates"], out["kept"], out["student_refused"], out["not_accepted"])
    return out


@task(name="train", cache_policy=NO_CACHE)
def train(skill: Skill, student_path: str, run_dir: Path) -> dict:
    """Fresh adapter on seeds + the whole accepted pool; resumes a killed run of the same run folder."""
    from trainers.data import cap_pool
    from trainers.stage import train_skill

    pool = _read_pool(skill.name)
    own = read_examples(run_dir / "accepted.jsonl")
    seen = {e.id for e in pool} | {e.id for e in own}
    held = [e for e in _readmitted_examples(skill, run_dir) if e.id not in seen]
    if held:
        get_run_logger().info("training also on %d held examples of earlier rejected runs (student.train.readmit_held)",
                              len(held))
    tc = skill.config.student.train
    accepted, capped = cap_pool(pool, own + held, tc.max_pool_examples, tc.pool_sampling, tc.seed)
    if capped["pool_used"] < capped["pool"]:
        get_run_logger().info("training on %d of %d pooled examples (student.train.max_pool_examples, %s)",
                              capped["pool_used"], capped["pool"], tc.pool_sampling)
    with stage("training (QLoRA)", None) as advance:
        last = [0]

        def progress(step: int, total: int, logs: dict) -> None:
            if step > last[0]:
                advance(step - last[0], total)
                last[0] = step

        out = train_skill(skill, student_path, run_dir, accepted, progress=progress)
    res = out["result"]
    for note in res["notes"]:
        get_run_logger().info("training: %s", note)
    get_run_logger().info("trained %d steps in %.0f s (%s, %s)", res["steps"], res["seconds"], res["quantization"],
                          res["device"])
    return out


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(skill: Skill, student_path: str, adapter_dir: str, champion_dir: str | None,
             replay_items: list[Example], run_dir: Path | None = None) -> dict:
    """Candidate and production answer the same frozen eval items and replayed traffic; gates,
    routing.json, eval_report.md and the comparison plot land in the run folder."""
    from eval_gates.evaluate import attach_artifacts, evaluate_candidate, run_dir_for

    out = evaluate_candidate(skill, student_path, adapter_dir, champion_dir, replay_items,
                             run_dir or run_dir_for(adapter_dir), progress=stage)
    attach_artifacts(out, skill.name)
    return out


@task(name="publish", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[10, 60], retry_jitter_factor=0.5,
      retry_condition_fn=registry_failure)
def publish(skill: Skill, run_id: str, adapter_dir: str, evaluation: dict, decision: dict, lineage: dict,
            data_summary: dict) -> dict:
    from registry import Registry
    from registry.stage import publish_run

    # routing.json from the eval gates (run folder) when present; skill.json from core.prompting.template_spec.
    return publish_run(Registry(registry_root()), skill, run_id, run_folder(skill.name, run_id), adapter_dir,
                       evaluation, decision, lineage, data_summary)


# --- helpers -------------------------------------------------------------------------------------------------------


def _read_pool(skill: str) -> list[Example]:
    path = pool_dir(skill) / "accepted.jsonl"
    return read_examples(path) if path.is_file() else []


def _append_pool(skill: str, new: list[Example]) -> int:
    pool = _read_pool(skill)
    seen = {e.id for e in pool}
    pool += [e for e in new if e.id not in seen]
    write_examples(pool_dir(skill) / "accepted.jsonl", pool)
    return len(pool)


HELD_SIGS = ".dedup_pending.npz"  # a held batch's MinHash signatures, committed if it is re-admitted


def _hold(skill: str, run_id: str, examples: list[Example], decision: dict) -> dict:
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


def _held_file(skill: str, run_id: str, suffix: str) -> Path:
    """A held batch's file: in held/, or in held/readmitted/ once a promoted run re-admitted it."""
    folder = pool_dir(skill) / "held"
    moved = folder / "readmitted" / f"{run_id}{suffix}"
    return moved if moved.exists() and not (folder / f"{run_id}{suffix}").exists() else folder / f"{run_id}{suffix}"


def _read_held_info(path: Path) -> dict:
    from core.records import DataError

    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a held batch's record ({e}); restore it or move the batch out of held/") from None
    if not isinstance(info, dict) or not isinstance(info.get("examples"), int) or info["examples"] < 0:
        raise DataError(f"{path}: not a held batch's record (a JSON object with a count 'examples' expected)")
    return info


def _readmitted_examples(skill: Skill, run_dir: Path) -> list[Example]:
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
        info = {r: _read_held_info(folder / f"{r}.json") for r in found}
        order = sorted(found, key=lambda r: (instant_key(info[r].get("held_at")), r))  # instants
        cap, total, runs = skill.config.student.train.max_pool_examples, 0, []
        for r in reversed(order):
            if cap is None or total + info[r]["examples"] <= cap:
                total += info[r]["examples"]
                runs.append(r)
        runs = [r for r in order if r in runs]
    batches = {r: read_examples(_held_file(skill.name, r, ".jsonl")) for r in runs}
    if not record.is_file():
        write_json(record, {"runs": [{"run_id": r, "examples": len(b)} for r, b in batches.items()]})
    return [e for b in batches.values() for e in b]


def _release_held(skill: Skill, run_dir: Path) -> dict | None:
    """After a promotion: the held batches this run trained with join the pool and the dedup index, and
    their files move to held/readmitted/. Idempotent (ids already pooled or indexed are skipped, moved
    files are found where they went), so a retry after a crash here does nothing twice."""
    from filters import commit_index

    record = run_dir / "readmitted.json"
    if not record.is_file():
        return None
    runs = [r["run_id"] for r in json.loads(record.read_text())["runs"]]
    examples = [e for r in runs for e in read_examples(_held_file(skill.name, r, ".jsonl"))]
    _append_pool(skill.name, examples)  # one rewrite of the pool for every batch
    for r in runs:
        sigs = _held_file(skill.name, r, HELD_SIGS)
        if sigs.is_file():
            commit_index(skill.name, skill.config.filters, run_dir, pending=sigs)
    for r in runs:  # the reason file last: while it is in held/, the batch still counts as held
        for suffix in (HELD_SIGS, ".jsonl", ".json"):
            src = pool_dir(skill.name) / "held" / f"{r}{suffix}"
            if src.exists():
                (src.parent / "readmitted").mkdir(exist_ok=True)
                os.replace(src, src.parent / "readmitted" / src.name)
    return {"runs": runs, "examples": len(examples)}


def _champion(skill: str) -> tuple[int | None, str | None]:
    from registry import Registry

    reg = Registry(registry_root())
    version = reg.aliases(skill).get("production")
    if version is None:
        return None, None
    return version, str(reg.resolve(skill, version=version))  # a local folder, also for s3:// registries


def _drops(rejected: list[Rejected]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rejected:
        key = f"{r.stage}/{r.reason}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


# --- the flow ------------------------------------------------------------------------------------------------------


@flow(name="distill-skill", flow_run_name="{params.skill}-{params.profile}")
def distill_skill(params: RunParams) -> dict:
    """One run of the pipeline for one skill; returns the run summary."""
    from flows.locks import skill_lock

    with skill_lock(params.skill):
        return _distill(params)


def _distill(params: RunParams) -> dict:
    from eval_gates.replay import replay_items as sample_replay
    from filters import commit_index
    from flows.refresh import commit_refresh, pool_growth

    t0 = time.time()
    skill = load_skill(params.skill, params.profile)
    cfg = skill.config
    run_id = params.run_id or time.strftime("%Y%m%d-%H%M%S")
    run_dir = run_folder(skill.name, run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    if params.seed is None:
        # Re-running a run id (after a crash) reuses its seed, so the cached teacher answers and
        # the training checkpoints match; a new run draws a fresh seed so it finds new inputs.
        earlier = run_dir / "params.json"
        seed = json.loads(earlier.read_text()).get("seed") if earlier.is_file() else None
        params = params.model_copy(update={"seed": seed if seed is not None else random.SystemRandom().randrange(2**31)})
    # The replay hold-out is drawn first: the contamination filter keeps it out of training.
    trained_traffic = {e.meta.get("traffic_id") for e in _read_pool(skill.name) if e.source == "traffic"}
    replay_items, traffic = sample_replay(skill, trained_traffic - {None})
    write_json(run_dir / "params.json", params.model_dump())

    models = provision_models(skill)
    audit = audit_teacher(skill, models.teacher, run_dir, params.seed) if cfg.audit.enabled else None
    refused = audit is not None and not audit["passed"]
    if refused and cfg.audit.on_fail == "stop":
        return _refuse(skill, params, run_id, run_dir, audit, t0)
    expansion = (_no_expansion(skill, run_dir) if refused else
                 expand(skill, models.teacher, run_dir, params.seed, audit["use"] if audit else None))
    teacher_lane = measure_teacher(skill, models.teacher, run_dir, params.seed, replay_items,
                                   audit["use"] if audit else None)
    filtered = filter_candidates(skill, run_dir, replay_items)
    refreshed = refresh_traffic(skill, run_dir, replay_items)
    if params.stage_pool:
        from flows.stages import hand_off_train_evaluate

        champion_version, _ = _champion(skill.name)
        training, evaluation = hand_off_train_evaluate(skill, params.profile, run_id, run_dir, params.stage_pool,
                                                       champion_version, replay_items)
    else:
        training = train(skill, models.student, run_dir)
        champion_version, champion_dir = _champion(skill.name)
        evaluation = evaluate(skill, models.student, training["result"]["adapter_dir"], champion_dir, replay_items,
                              run_dir=run_dir)
    decision = evaluation["decision"]  # every check with its value, bound and verdict
    if refused:  # recorded beside the gates; it did not block (audit.on_fail: skip_expansion)
        note = f"{audit['reason']}; trained without teacher data (audit.on_fail: skip_expansion)"
        decision = {**decision, "gates": [*decision["gates"], {"name": "teacher_audit", "passed": False,
                                                               "blocking": False, "reasons": [note]}]}
    write_json(run_dir / "decision.json", {**decision, "data": evaluation.get("data"), "run_id": run_id,
                                           "champion_version": champion_version})
    rejected = expansion["rejected"] + filtered["rejected"]
    write_jsonl(run_dir / "rejected.jsonl", (r.to_dict() for r in rejected))
    lineage = {
        "skill": skill.name, "run_id": run_id, "profile": params.profile, "seed": params.seed,
        "seeds_hash": hash_examples(skill.seeds), "dataset_hash": training["dataset_hash"],
        "teacher": expansion["teacher"], "teacher_backend": cfg.teacher.backend,
        "base_model": cfg.student.base_model, "base_model_revision": models.student_revision,
        "champion_version": champion_version, "code_revision": _code_revision(),
        "python": platform.python_version(),
    }
    published = None
    if decision["promote"]:
        published = publish(skill, run_id, training["result"]["adapter_dir"], evaluation, decision,
                            lineage, training["pool"])
    held = None
    # Held batches this run trained with (student.train.readmit_held) join the pool only if it is promoted.
    readmitted = _release_held(skill, run_dir) if decision["promote"] else None
    if decision["promote"] or cfg.student.train.rejected_runs == "admit":
        pool_size = _append_pool(skill.name, read_examples(run_dir / "accepted.jsonl"))
        # The dedup index grows with the pool, at the same point: a run that fails earlier changes neither.
        index_commit = commit_index(skill.name, cfg.filters, run_dir)
    else:  # a rejected run's data is held apart: it never trains a later run (student.train.rejected_runs)
        held = _hold(skill.name, run_id, read_examples(run_dir / "accepted.jsonl"), decision)
        pool_size, index_commit = len(_read_pool(skill.name)), {"committed": 0, "held": held["examples"]}
    # The traffic watermark advances with the pool too: a failed run reads the same traffic again.
    refreshed["commit"] = commit_refresh(skill.name, run_dir)
    refreshed["pool"] = pool_growth(refreshed["pool_before"], _read_pool(skill.name))

    summary = {
        "skill": skill.name, "profile": params.profile, "run_id": run_id, "run_dir": str(run_dir),
        "counts": {"seeds": len(skill.seeds), "teacher_requested": expansion["requested"],
                   "teacher_generated": expansion["generated"], "teacher_labeled": expansion["labeled"],
                   "accepted": filtered["accepted"], "traffic_new": refreshed["new_records"],
                   "traffic_accepted": refreshed["kept"], "pool_after_run": pool_size, **training["pool"]},
        "drops": _drops(rejected),
        "audit": _audit_summary(audit),
        "teacher": {"model": expansion["teacher"], "seconds": expansion["seconds"],
                    "prompt_tokens": expansion["prompt_tokens"], "accounting": expansion.get("accounting"),
                    "lane": teacher_lane},
        "routing": routing_summary(evaluation.get("routing")),
        "filters": {"stats": filtered.get("stats"), "index_commit": index_commit},
        "refresh": refreshed,
        "training": {**training["result"], "record": training.get("record"), "loss_curve": training.get("loss_curve")},
        "evaluation": evaluation,
        "decision": decision,
        "champion_version": champion_version,
        "published": published,
        "held": held,
        "readmitted": readmitted,
        "seconds": round(time.time() - t0, 1),
    }
    _write_summary(run_dir, summary)
    return summary


def _write_summary(run_dir: Path, summary: dict) -> None:
    """summary.json, summary.md, and the same summary as the flow run's artifact."""
    write_json(run_dir / "summary.json", summary)
    (run_dir / "summary.md").write_text(render_summary_md(summary))
    _artifact(summary)


def _audit_summary(audit: dict | None) -> dict | None:
    """The audit without its per-item answers (those stay in teacher_audit.json)."""
    return None if audit is None else {k: v for k, v in audit.items() if k not in ("items", "accounting")}


def _no_expansion(skill: Skill, run_dir: Path) -> dict:
    """The teacher failed its audit and audit.on_fail is skip_expansion: no teacher data this run."""
    write_examples(run_dir / "generated.jsonl", [])
    get_run_logger().warning("teacher expansion skipped: the teacher is below audit.floor")
    return {"requested": 0, "generated": 0, "labeled": 0, "rejected": [], "teacher": skill.config.teacher.model,
            "seconds": 0.0, "prompt_tokens": 0, "accounting": None}


def _refuse(skill: Skill, params: RunParams, run_id: str, run_dir: Path, audit: dict, t0: float) -> dict:
    """The teacher failed its audit: no expansion, no training, nothing published; the decision
    record says why. The pool, the dedup index and the traffic watermark are untouched."""
    gate = {"name": "teacher_audit", "passed": False, "reasons": [audit["reason"]],
            "value": audit["score"], "bound": audit["floor"]}
    decision = {"promote": False, "stage": "teacher_audit", "reasons": [audit["reason"]], "gates": [gate]}
    write_json(run_dir / "decision.json", {**decision, "run_id": run_id, "champion_version": None})
    summary = {
        "skill": skill.name, "profile": params.profile, "run_id": run_id, "run_dir": str(run_dir),
        "counts": {"seeds": len(skill.seeds), "audited_seeds": audit["n"]}, "drops": {},
        "audit": _audit_summary(audit), "decision": decision, "evaluation": {}, "champion_version": None,
        "published": None, "seconds": round(time.time() - t0, 1),
    }
    _write_summary(run_dir, summary)
    get_run_logger().warning("run %s stopped before expansion: %s", run_id, audit["reason"])
    return summary


def render_summary_md(s: dict) -> str:
    ev = s.get("evaluation") or {}
    lines = [f"# {s['skill']} run {s['run_id']} ({s['profile']})", "",
             f"**Decision: {'PROMOTED' if s['decision']['promote'] else 'REJECTED'}** — "
             + "; ".join(s["decision"]["reasons"]), "", "## Counts", "", "| stage | n |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["counts"].items() if not isinstance(v, dict)]
    lines += _audit_md(s.get("audit"))
    acc = (s.get("teacher") or {}).get("accounting") or {}
    if acc:
        lat = f"{acc.get('latency_p50_s')} / {acc.get('latency_p95_s')}"
        lines += ["", "## Teacher", "", "| requests | cached | retries | failures | prompt tok | completion tok "
                  "| latency p50 / p95 s | est. cost |", "|---|---|---|---|---|---|---|---|",
                  f"| {acc.get('requests')} | {acc.get('cache_hits')} | {acc.get('retries')} | "
                  f"{acc.get('failures') or 0} | {acc.get('prompt_tokens')} | {acc.get('completion_tokens')} | {lat} | "
                  f"{acc.get('estimated_cost')} |"]
    lines += _confidence_md(((s.get("filters") or {}).get("stats") or {}).get("confidence"))
    if "drops" in s and s.get("teacher"):
        lines += ["", "## Drops by reason", "", "| stage/reason | n |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in s["drops"].items()] or ["| (none) | 0 |"]
    lines += _refresh_md(s.get("refresh"))
    if ev:
        metric = ev.get("metric", "accuracy")
        lines += ["", "## Evaluation", "", f"| model | eval {metric} | invalid | replay agreement | replay p50 s |",
                  "|---|---|---|---|---|"]
        for name, m in (("candidate", ev.get("candidate")), ("production", ev.get("champion"))):
            if m:
                lines.append(f"| {name} | {_num(m['eval'].get(metric))} | {_num(m['eval'].get('invalid_rate'))} | "
                             f"{_num(m['replay'].get('agreement'))} | {m['replay'].get('p50_s')} |")
    lines += _routing_md(s.get("routing"))
    lines += ["", "## Gates", ""]
    for g in s["decision"]["gates"]:
        lines.append(f"- **{g['name']}**: {'pass' if g['passed'] else 'FAIL'} — " + "; ".join(g["reasons"]))
    lines += ["", f"Registry: {s['published']['path'] if s['published'] else 'unchanged'}",
              f"Run folder: {s['run_dir']}", f"Wall time: {s['seconds']} s"]
    return "\n".join(lines) + "\n"


def routing_summary(r: dict | None) -> dict | None:
    """The routing profile without its curve and per-item confidences (those stay in routing.json)."""
    if not r:
        return None
    return {k: v for k, v in r.items() if k not in ("curve", "confidences", "signals", "teacher_option")}


def _routing_md(r: dict | None) -> list[str]:
    if not r:
        return []
    if r.get("error"):
        return ["", "## Routing", "", f"Unavailable: {r['error']}"]
    served, st, te = r.get("served") or {}, r.get("student_alone") or {}, r.get("teacher_alone") or {}
    out = ["", "## Routing", "", f"Policy **{r.get('policy')}** on {r.get('n')} items (eval set and replay sample), "
           f"signal {r.get('signal')}: {r.get('reason')}.", "",
           "| lane | served quality | 95% interval | teacher share |", "|---|---|---|---|",
           f"| routed ({r.get('mode')}, threshold {_num(r.get('threshold'))}) | {_num(served.get('quality'))} | "
           f"{_num(served.get('low'))}-{_num(served.get('high'))} | {_num(r.get('teacher_share'))} |",
           f"| student alone | {_num(st.get('served'))} | {_num(st.get('served_low'))}-{_num(st.get('served_high'))} | 0 |"]
    if te:
        out.append(f"| teacher alone | {_num(te.get('served'))} | {_num(te.get('served_low'))}-"
                   f"{_num(te.get('served_high'))} | 1 |")
    if r.get("certified") is False:
        out += ["", f"**target_error not certified**: {r.get('reason')}"]
    return out


def _audit_md(a: dict | None) -> list[str]:
    if not a:
        return []
    out = ["", "## Teacher audit", "",
           f"{a['n']} seeds, {a['folds']}-fold (each answered once with shots from the other folds), answerer "
           f"`{a['answerer']}`. {a['reason']}.", "",
           f"| option | {a['metric']} | invalid | teacher s | sent | |", "|---|---|---|---|---|---|"]
    for o in a["options"]:
        out.append(f"| {o['option']} | {_num(o['score'])} | {_num(o.get('invalid_rate'))} | {o['teacher_seconds']} | "
                   f"{o['requests_sent']} | {'**used**' if o['option'] == a['chosen'] else ''} |")
    best = next(o for o in a["options"] if o["option"] == a["chosen"])
    if "per_label_precision" in best:
        seeds = a.get("seed_distribution") or {}
        out += ["", f"Per-label bias of the chosen option ({a['chosen']}):", "",
                "| label | seeds | predicted | precision | recall |", "|---|---|---|---|---|"]
        pred = best.get("predicted_distribution", {})
        for lab in best["per_label_precision"]:
            out.append(f"| {lab} | {seeds.get(lab, 0)} | {pred.get(lab, 0)} | {_num(best['per_label_precision'][lab])} "
                       f"| {_num(best['per_label_recall'].get(lab))} |")
        if pred.get("<invalid>"):
            out.append(f"| (invalid) | 0 | {pred['<invalid>']} | | |")
    return out


def _confidence_md(c: dict | None) -> list[str]:
    if not c:
        return []
    out = ["", "## Confidence and label balance", ""]
    if c.get("thresholds"):
        out += [f"Per-label thresholds from the audit, for precision >= {c['target_precision']}:", "",
                "| label | threshold | audit precision | audit support | teacher examples kept |",
                "|---|---|---|---|---|"]
        for lab, t in c["thresholds"].items():
            thr = _num(t["threshold"]) if t["reachable"] else "unreachable"
            out.append(f"| {lab} | {thr} | {_num(t['precision'])} | {t['support']} | {t['kept']} |")
    elif c.get("thresholds_skipped"):
        out.append(f"Thresholds not applied: {c['thresholds_skipped']}.")
    d = c.get("label_distribution")
    if d:
        labs = sorted(set(d["seeds"]) | set(d["generated"]) | set(d["accepted"]))
        out += ["", "| label distribution | " + " | ".join(labs) + " | TV distance to seeds |",
                "|---|" + "---|" * (len(labs) + 1)]
        for name, dist_key, dkey in (("seeds", "seeds", None), ("generated", "generated", "distance_generated"),
                                     ("accepted", "accepted", "distance_accepted")):
            row = " | ".join(_num(d[dist_key].get(lab, 0.0)) for lab in labs)
            out.append(f"| {name} | {row} | {_num(d.get(dkey)) if dkey else ''} |")
        b = d.get("bound")
        if b:
            out.append("")
            out.append(f"Bound: TV <= {b['max_distance']}: {b['distance_before']} -> {b['distance_after']} after "
                       f"dropping {b['dropped']} least-confident examples of over-represented labels"
                       + ("" if b["reached"] else " (not reachable by dropping: a label has too few teacher examples)")
                       + ".")
    return out


def _refresh_md(r: dict | None) -> list[str]:
    if not r:
        return []
    g = r.get("pool") or {}
    out = ["", "## Continuous refresh", "",
           f"Traffic since {r['since'] or 'the beginning'} until {r['until'] or '-'}: {r['new_records']} new records, "
           f"{r['candidates']} candidates, {r['kept']} kept; refused {r['student_refused']} student outputs and "
           f"{r['not_accepted']} not accepted.", "", "| pool by source | before | after |", "|---|---|---|"]
    for src in sorted(set(g.get("before", {})) | set(g.get("after", {}))):
        out.append(f"| {src} | {g['before'].get(src, 0)} | {g['after'].get(src, 0)} |")
    out += ["", "| refresh stage/reason | n |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in r.get("drops", {}).items()] or ["| (none) | 0 |"]
    return out


def _num(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "n/a"


def _artifact(summary: dict) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(render_summary_md(summary), key=f"{summary['skill']}-summary".lower(),
                                 description="Distillation run summary")
    except Exception as e:  # an artifact is a convenience; never fail a run for it
        get_run_logger().warning("could not attach the summary artifact: %s", e)
