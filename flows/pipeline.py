"""The distillation flow for one skill: seeds -> teacher -> filters -> QLoRA -> gates -> registry.

Each task is a few lines around plain functions in teachers/, filters/, trainers/, eval_gates/ and
registry/; the accepted pool and what joins it when is filters/pool.py; the summary is flows/summary.py.
Tasks pass paths and small dicts, not datasets.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.records import Example, read_examples, write_json, write_jsonl
from core.skills import Skill, load_skill
from core.workdir import registry_root, run_dir as run_folder
from filters.pool import read_pool
from flows.limits import network_failure, registry_failure
from flows.params import Models, RunParams
from flows.progress import stage, step_progress

# --- tasks ---------------------------------------------------------------------------------------------------------


@task(name="provision-models", cache_policy=NO_CACHE)
def provision_models(skill: Skill) -> Models:
    from trainers.base_model import check_answer_caps, model_revision, resolve_model

    cfg = skill.config
    teacher = resolve_model(cfg.teacher.model) if cfg.teacher.backend == "local" else cfg.teacher.model
    student = resolve_model(cfg.student.base_model)
    check_answer_caps(skill, student)  # an explicit answer cap that cuts an allowed answer stops the run here
    return Models(teacher=teacher, student=student, student_revision=model_revision(student))


@task(name="teacher-audit", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[30, 120],
      retry_jitter_factor=0.5, retry_condition_fn=network_failure)
def audit_teacher(skill: Skill, teacher_path: str, run_dir: Path, seed: int) -> dict:
    """The teacher answers the seeds k-fold under every open option (shots, calibration); the
    best option labels this run; below audit.floor the run stops. Writes teacher_audit.json."""
    from teachers import open_skill_teacher
    from teachers.audit import run_audit

    with open_skill_teacher(skill, teacher_path, run_dir) as teacher:
        audit = run_audit(skill, teacher, seed, progress=stage)
        audit["accounting"] = teacher.report()
    write_json(run_dir / "teacher_audit.json", audit)
    log = get_run_logger()
    for o in audit["options"]:
        log.info("audit %-26s %s %.3f  (teacher %.1f s, %d sent)", o["option"], audit["metric"], o["score"] or 0.0,
                 o["teacher_seconds"], o["requests_sent"])
    (log.info if audit["passed"] else log.warning)(audit["reason"])
    return audit


# Retries only where the network is (teacher, registry); flows/limits.py says why.
@task(name="teacher-expansion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[30, 120],
      retry_jitter_factor=0.5, retry_condition_fn=network_failure)
def expand(skill: Skill, teacher_path: str, run_dir: Path, seed: int, choice: dict | None = None,
           skip: bool = False, replay_items: list[Example] | None = None) -> dict:
    """Recent traffic sampled as the teacher's context (flows/traffic_context.py), then the configured strategies
    (default: new inputs in the style of the seeds and of today's traffic, labelled by the few-shot teacher, which
    labels the sampled traffic inputs too); flows/expansion.py. `skip`: the teacher failed its audit and
    audit.on_fail is skip_expansion: no teacher data this run (an empty generated.jsonl)."""
    from flows.expansion import expansion_stage

    return expansion_stage(skill, teacher_path, run_dir, seed, choice, skip, replay_items or [], progress=stage,
                           logger=get_run_logger())


@task(name="teacher-lane", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[30, 120],
      retry_jitter_factor=0.5, retry_condition_fn=network_failure)
def measure_teacher(skill: Skill, teacher_path: str, run_dir: Path, seed: int, replay_items: list[Example],
                    choice: dict | None = None) -> dict:
    """The teacher answers the frozen eval set and the replay sample with this run's option (the one that
    labelled it), so routing compares both lanes on the same items; writes teacher_answers.jsonl. Cached:
    a re-run sends nothing twice."""
    from eval_gates.lanes import measure_teacher_lane
    from teachers import open_skill_teacher

    with open_skill_teacher(skill, teacher_path, run_dir) as teacher:
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
    from flows.refresh import by_source

    candidates = read_examples(run_dir / "generated.jsonl")
    previous = read_pool(skill.name)
    with stage("filters", len(candidates)) as advance:
        out = filter_stage(skill, candidates, replay_items, previous, run_dir,
                           fits=FitsMaxLength.for_student(skill.config))
        advance(len(candidates))
    if out.stats["index"]["rebuilt_from_pool"]:
        get_run_logger().warning("dedup index of %s rebuilt from the accepted pool (%d examples)",
                                 skill.name, len(previous))
    return {"accepted": len(out.kept), "rejected": out.rejected, "stats": out.stats, "previous_pool": len(previous),
            "by_source": by_source(out.kept)}


@task(name="traffic-refresh", cache_policy=NO_CACHE)
def refresh_traffic(skill: Skill, run_dir: Path, replay_items: list[Example]) -> dict:
    """Traffic that arrived since the last completed run -> seed candidates through the same filters
    as teacher data; kept ones join this run's accepted.jsonl (trained on now, pooled at the end)."""
    from filters.quality import FitsMaxLength
    from flows.refresh import refresh_stage

    with stage("traffic refresh", None):
        out = refresh_stage(skill, run_dir, replay_items, read_pool(skill.name),
                            fits=FitsMaxLength.for_student(skill.config)).summary()
    get_run_logger().info("traffic refresh since %s: %d new records, %d candidates, kept %d; refused %d student "
                          "outputs, %d not accepted", out["since"] or "the beginning", out["new_records"],
                          out["candidates"], out["kept"], out["student_refused"], out["not_accepted"])
    return out


@task(name="train", cache_policy=NO_CACHE)
def train(skill: Skill, student_path: str, run_dir: Path) -> dict:
    """Fresh adapter on seeds + the whole accepted pool; resumes a killed run of the same run folder."""
    from filters.pool import training_examples
    from trainers.stage import train_skill

    accepted, capped, held = training_examples(skill, run_dir)
    get_run_logger().info("training on %d of %d pooled examples (student.train.max_pool_examples, %s), and %d held "
                          "ones of earlier rejected runs (student.train.readmit_held)", capped["pool_used"],
                          capped["pool"], skill.config.student.train.pool_sampling, held)
    with stage("training (QLoRA)", None) as advance:
        out = train_skill(skill, student_path, run_dir, accepted, progress=step_progress(advance))
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


# --- the flow ------------------------------------------------------------------------------------------------------


@flow(name="distill-skill", flow_run_name="{params.skill}-{params.profile}")
def distill_skill(params: RunParams) -> dict:
    """One run of the pipeline for one skill; returns the run summary."""
    from flows.locks import skill_lock

    with skill_lock(params.skill):
        return _distill(params)


def _distill(params: RunParams) -> dict:
    from eval_gates.replay import replay_items as sample_replay
    from filters.pool import commit_run, trained_traffic
    from flows.params import start_run
    from flows.refresh import commit_refresh, pool_growth
    from flows.summary import lineage, refused_run, run_summary, write_decision
    from flows.traffic_context import commit_context
    from registry import Registry
    from registry.stage import production

    t0 = time.time()
    skill = load_skill(params.skill, params.profile)
    cfg = skill.config
    params, run_id, run_dir = start_run(params, skill.name)  # run folder and params.json; a re-run keeps its seed
    # The replay hold-out is drawn first: the contamination filter keeps it out of training.
    replay_items, _ = sample_replay(skill, trained_traffic(skill.name))

    models = provision_models(skill)
    audit = audit_teacher(skill, models.teacher, run_dir, params.seed) if cfg.audit.enabled else None
    refused = audit is not None and not audit["passed"]
    if refused and cfg.audit.on_fail == "stop":
        get_run_logger().warning("run %s stopped before expansion: %s", run_id, audit["reason"])
        return refused_run(skill, params, run_id, run_dir, audit, t0)
    choice = audit["use"] if audit else None
    expansion = expand(skill, models.teacher, run_dir, params.seed, choice, skip=refused, replay_items=replay_items)
    teacher_lane = measure_teacher(skill, models.teacher, run_dir, params.seed, replay_items, choice)
    filtered = filter_candidates(skill, run_dir, replay_items)
    refreshed = refresh_traffic(skill, run_dir, replay_items)
    if params.stage_pool:
        from flows.stages import hand_off_train_evaluate

        champion_version, _ = production(Registry(registry_root()), skill.name)
        training, evaluation = hand_off_train_evaluate(skill, params.profile, run_id, run_dir, params.stage_pool,
                                                       champion_version, replay_items)
    else:
        training = train(skill, models.student, run_dir)
        champion_version, champion_dir = production(Registry(registry_root()), skill.name)
        evaluation = evaluate(skill, models.student, training["result"]["adapter_dir"], champion_dir, replay_items,
                              run_dir=run_dir)
    # Every check with its value, bound and verdict (and the audit's, when it refused the teacher's data).
    decision = write_decision(run_dir, run_id, evaluation, champion_version, audit if refused else None)
    write_jsonl(run_dir / "rejected.jsonl", (r.to_dict() for r in expansion["rejected"] + filtered["rejected"]))
    published = publish(skill, run_id, training["result"]["adapter_dir"], evaluation, decision,
                        lineage(skill, params, run_id, training, expansion, models.student_revision,
                                champion_version), training["pool"]) if decision["promote"] else None
    # The pool and the dedup index grow here, together, or the batch is held (filters/pool.py's invariants).
    committed = commit_run(skill, run_dir, decision)
    # The traffic watermark advances with the pool too: a failed run reads the same traffic again.
    refreshed["commit"] = commit_refresh(skill.name, run_dir)
    expansion["traffic_context"]["commit"] = commit_context(skill.name, run_dir)  # never sent to the teacher again
    refreshed["pool"] = pool_growth(refreshed["pool_before"], read_pool(skill.name))
    return run_summary(skill, params, run_id, run_dir, t0, audit=audit, expansion=expansion,
                       teacher_lane=teacher_lane, filtered=filtered, refreshed=refreshed, training=training,
                       evaluation=evaluation, decision=decision, champion_version=champion_version,
                       published=published, committed=committed)
