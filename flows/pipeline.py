"""The distillation flow for one skill: seeds -> teacher -> filters -> QLoRA -> gates -> registry.

Each task is a few lines around plain functions in teachers/, filters/, trainers/,
eval_gates/ and registry/. Tasks pass paths and small dicts, not datasets.
"""

from __future__ import annotations

import platform
import random
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from core.records import (Example, Rejected, hash_examples, read_examples, write_examples, write_json,
                          write_jsonl)
from core.skills import Skill, load_skill
from core.workdir import pool_dir, registry_root, runs_dir
from flows.progress import stage


class RunParams(BaseModel):
    """Parameters of one pipeline run (validated at the flow boundary)."""

    skill: str = Field(description="Skill folder name under seeds/.", pattern=r"^[A-Za-z0-9_-]+$")
    profile: str = Field("default", description="Named overrides from the skill file (e.g. smoke).")
    seed: int | None = Field(None, ge=0, le=2**31 - 1,
                             description="Seed for the teacher's sampling and shots; a fresh one per run when "
                                         "empty (recorded in params.json), so scheduled runs find new inputs.")
    run_id: str | None = Field(None, description="Run folder name; new timestamped id when empty.")


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


@task(name="teacher-expansion", cache_policy=NO_CACHE)
def expand(skill: Skill, teacher_path: str, run_dir: Path, seed: int) -> dict:
    """New inputs in the style of the seeds, then labels from the few-shot teacher."""
    from teachers import make_teacher
    from teachers.expand import label_inputs, new_inputs

    n = skill.config.expansion.target_examples
    teacher = make_teacher(skill.config.teacher, teacher_path)
    t0 = time.time()
    with stage("teacher: new inputs", n) as advance:
        inputs, rej_gen = new_inputs(skill, teacher, n, seed=seed, progress=advance)
    with stage("teacher: labels", len(inputs)) as advance:
        labeled, rej_lab = label_inputs(skill, teacher, inputs, seed=seed, progress=advance)
    # Confidence: do the two teacher signals agree (the label whose seeds inspired the
    # input, and the few-shot label)? 1.0 when they do, 0.5 when they split.
    for ex in labeled:
        ex.confidence = 1.0 if ex.output == ex.meta.get("seed_label") else 0.5
    write_examples(run_dir / "generated.jsonl", labeled)
    rejected = rej_gen + rej_lab
    prompt_tokens = sum(e.meta.get("prompt_tokens", 0) + e.meta.get("label_prompt_tokens", 0) for e in labeled)
    get_run_logger().info("teacher wrote %d inputs, labeled %d, dropped %d", len(inputs), len(labeled), len(rejected))
    return {"requested": n, "generated": len(inputs), "labeled": len(labeled), "rejected": rejected,
            "teacher": teacher.name, "seconds": round(time.time() - t0, 1), "prompt_tokens": prompt_tokens}


@task(name="filter", cache_policy=NO_CACHE)
def filter_candidates(skill: Skill, run_dir: Path, replay_items: list[Example]) -> dict:
    """Quality, exact and MinHash near-dedup (vs seeds, everything accepted before, the batch),
    and n-gram contamination against the eval set and the replay hold-out."""
    from filters import default_steps, run_filters
    from filters.quality import MinConfidence

    cfg = skill.config
    candidates = read_examples(run_dir / "generated.jsonl")
    previous = _read_pool(skill.name)
    steps = default_steps(cfg.filters, cfg.labels, reference=skill.seeds + previous,
                          eval_sets={"eval": skill.eval_set, "replay": replay_items})
    if cfg.filters.min_confidence > 0:
        steps.insert(1, MinConfidence(cfg.filters.min_confidence))
    with stage("filters", len(candidates)) as advance:
        kept, rejected, stats = run_filters(candidates, steps)
        advance(len(candidates))
    write_examples(run_dir / "accepted.jsonl", kept)
    write_json(run_dir / "filter_stats.json", stats)
    return {"accepted": len(kept), "rejected": rejected, "stats": stats, "previous_pool": len(previous)}


@task(name="train", cache_policy=NO_CACHE)
def train(skill: Skill, student_path: str, run_dir: Path) -> dict:
    from trainers.data import build_training_pool
    from trainers.qlora import train_adapter

    tc = skill.config.student.train
    accepted = _read_pool(skill.name) + read_examples(run_dir / "accepted.jsonl")
    pool = build_training_pool(skill.seeds, accepted, human_share=tc.human_share, seed=tc.seed)
    write_examples(run_dir / "train.jsonl", pool.train)
    write_examples(run_dir / "val.jsonl", pool.val)
    with stage("training (QLoRA)", None) as advance:
        last = [0]

        def progress(step: int, total: int, logs: dict) -> None:
            if step > last[0]:
                advance(step - last[0], total)
                last[0] = step

        result = train_adapter(student_path, skill.config, pool.train, pool.val, run_dir / "train", progress=progress)
    get_run_logger().info("trained %d steps in %.0f s (%s)", result.steps, result.seconds, result.quantization)
    return {"pool": pool.summary(), "result": {k: v for k, v in result.to_dict().items() if k != "log_history"},
            "dataset_hash": hash_examples(pool.train)}


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate(skill: Skill, student_path: str, adapter_dir: str, champion_dir: str | None,
             replay_items: list[Example]) -> dict:
    """Candidate and production answer the same frozen eval items and replayed traffic."""
    from eval_gates.metrics import classification_metrics
    from eval_gates.predict import predict
    from teachers.local import LocalModel

    cfg = skill.config
    items = skill.eval_set[: cfg.gates.eval_limit] if cfg.gates.eval_limit else skill.eval_set
    out: dict = {"eval_items": len(items), "replay_items": len(replay_items)}
    for role, adapter in (("candidate", adapter_dir), ("champion", champion_dir)):
        if adapter is None:
            out[role] = None
            continue
        model = LocalModel(student_path, adapter_path=adapter, name=role)
        with stage(f"eval: {role} on eval set", len(items)) as advance:
            p = predict(model, cfg, [e.input for e in items], progress=advance)
        m = classification_metrics([e.output for e in items], p.preds, cfg.labels)
        m["prompt_tokens_per_call"] = p.mean_prompt_tokens()
        with stage(f"eval: {role} on replayed traffic", len(replay_items)) as advance:
            r = predict(model, cfg, [e.input for e in replay_items], progress=advance)
        agree = sum(p_ == e.output for p_, e in zip(r.preds, replay_items))
        replay = {"n": len(replay_items), "agreement": round(agree / max(1, len(replay_items)), 4),
                  "invalid_rate": round(sum(x is None for x in r.preds) / max(1, len(replay_items)), 4),
                  **r.latency()}
        out[role] = {"eval": m, "replay": replay}
        del model
    return out


@task(name="publish", cache_policy=NO_CACHE)
def publish(skill: Skill, run_id: str, adapter_dir: str, evaluation: dict, decision: dict, lineage: dict,
            data_summary: dict) -> dict:
    from core.prompting import template_spec
    from registry import Registry, render_model_card

    reg = Registry(registry_root())
    cand = evaluation["candidate"]
    metrics = {"eval": cand["eval"], "replay": cand["replay"], "champion": evaluation.get("champion"),
               "decision": decision}
    routing = {
        "expected_accuracy": cand["eval"]["accuracy"],
        "replay_agreement": cand["replay"]["agreement"],
        # No calibrated confidence yet: route everything to the adapter, escalate invalid outputs.
        "escalation": {"on_invalid_output": True, "confidence_threshold": None},
        "latency_s": {"p50": cand["replay"]["p50_s"], "p95": cand["replay"]["p95_s"]},
    }
    limits = [
        f"Trained on {data_summary['train']} examples ({data_summary['train_by_source']}); the teacher's labels are noisy.",
        "Evaluated on a frozen hand-written set; live traffic may drift.",
        "Outputs outside the label set are possible: parse them with skill.json and escalate when invalid.",
    ]
    version = reg.publish(
        skill.name, adapter_dir, metrics=metrics, lineage=lineage, routing=routing,
        skill_spec={**template_spec(skill.config), "base_model": skill.config.student.base_model},
        model_card=lambda v: render_model_card(skill.name, v, skill.config.student.base_model, metrics, lineage,
                                               data_summary, limits),
        alias=skill.config.gates.publish_alias, reason=f"run {run_id}: every gate passed",
    )
    return {"version": version, "alias": skill.config.gates.publish_alias, "path": str(reg.path(skill.name, version))}


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


def _champion(skill: str) -> tuple[int | None, str | None]:
    from registry import Registry

    reg = Registry(registry_root())
    version = reg.aliases(skill).get("production")
    if version is None:
        return None, None
    return version, str(reg.path(skill, version))


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
    from eval_gates.gates import decide, regression_gate, replay_gate
    from eval_gates.replay import load_traffic, replay_sample

    t0 = time.time()
    skill = load_skill(params.skill, params.profile)
    cfg = skill.config
    run_id = params.run_id or time.strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir(skill.name) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    if params.seed is None:
        params = params.model_copy(update={"seed": random.SystemRandom().randrange(2**31)})
    replay_items = [r.as_example(skill.name) for r in
                    replay_sample(load_traffic(skill.traffic_path(), cfg), cfg.gates.replay.sample, seed=0)]
    write_json(run_dir / "params.json", params.model_dump())

    models = provision_models(skill)
    expansion = expand(skill, models.teacher, run_dir, params.seed)
    filtered = filter_candidates(skill, run_dir, replay_items)
    training = train(skill, models.student, run_dir)
    champion_version, champion_dir = _champion(skill.name)
    evaluation = evaluate(skill, models.student, training["result"]["adapter_dir"], champion_dir, replay_items)

    cand, champ = evaluation["candidate"], evaluation["champion"]
    gates = [regression_gate(cfg.gates, cand["eval"], champ["eval"] if champ else None),
             replay_gate(cfg.gates, cand["replay"], champ["replay"] if champ else None)]
    decision = decide(gates)
    write_json(run_dir / "decision.json", {**decision.to_dict(), "run_id": run_id, "champion_version": champion_version})
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
    if decision.promote:
        published = publish(skill, run_id, training["result"]["adapter_dir"], evaluation, decision.to_dict(),
                            lineage, training["pool"])
    pool_size = _append_pool(skill.name, read_examples(run_dir / "accepted.jsonl"))

    summary = {
        "skill": skill.name, "profile": params.profile, "run_id": run_id, "run_dir": str(run_dir),
        "counts": {"seeds": len(skill.seeds), "teacher_requested": expansion["requested"],
                   "teacher_generated": expansion["generated"], "teacher_labeled": expansion["labeled"],
                   "accepted": filtered["accepted"], "pool_after_run": pool_size, **training["pool"]},
        "drops": _drops(rejected),
        "teacher": {"model": expansion["teacher"], "seconds": expansion["seconds"],
                    "prompt_tokens": expansion["prompt_tokens"]},
        "training": training["result"],
        "evaluation": evaluation,
        "decision": decision.to_dict(),
        "champion_version": champion_version,
        "published": published,
        "seconds": round(time.time() - t0, 1),
    }
    write_json(run_dir / "summary.json", summary)
    (run_dir / "summary.md").write_text(render_summary_md(summary))
    _artifact(summary)
    return summary


def render_summary_md(s: dict) -> str:
    cand = s["evaluation"]["candidate"]
    champ = s["evaluation"]["champion"]
    lines = [f"# {s['skill']} run {s['run_id']} ({s['profile']})", "",
             f"**Decision: {'PROMOTED' if s['decision']['promote'] else 'REJECTED'}** — "
             + "; ".join(s["decision"]["reasons"]), "", "## Counts", "", "| stage | n |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["counts"].items() if not isinstance(v, dict)]
    lines += ["", "## Drops by reason", "", "| stage/reason | n |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s["drops"].items()] or ["| (none) | 0 |"]
    lines += ["", "## Evaluation", "", "| model | eval accuracy | macro-F1 | replay agreement | invalid |", "|---|---|---|---|---|"]
    for name, m in (("candidate", cand), ("production", champ)):
        if m:
            lines.append(f"| {name} | {m['eval']['accuracy']:.3f} | {m['eval']['macro_f1']:.3f} | "
                         f"{m['replay']['agreement']:.3f} | {m['eval']['invalid_rate']:.3f} |")
    lines += ["", "## Gates", ""]
    for g in s["decision"]["gates"]:
        lines.append(f"- **{g['name']}**: {'pass' if g['passed'] else 'FAIL'} — " + "; ".join(g["reasons"]))
    lines += ["", f"Registry: {s['published']['path'] if s['published'] else 'unchanged'}",
              f"Run folder: {s['run_dir']}", f"Wall time: {s['seconds']} s"]
    return "\n".join(lines) + "\n"


def _artifact(summary: dict) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(render_summary_md(summary), key=f"{summary['skill']}-summary".lower(),
                                 description="Distillation run summary")
    except Exception as e:  # an artifact is a convenience; never fail a run for it
        get_run_logger().warning("could not attach the summary artifact: %s", e)
