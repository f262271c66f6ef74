"""The pipeline's publish stage as a plain function (the Prefect task only calls it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from registry.model_card import render_model_card
from registry.serving import serving_info
from registry.store import Registry, RegistryError

ROUTING_FILE = "routing.json"  # written into the run folder by the eval gates when they profile routing


def _fallback_routing(cand: dict[str, Any]) -> dict[str, Any]:
    """Routing hints from the candidate's evaluation when the gates wrote no routing.json."""
    ev, rp = cand.get("eval", {}), cand.get("replay", {})
    return {
        "expected_accuracy": ev.get("accuracy"),
        "replay_agreement": rp.get("agreement"),
        # No calibrated confidence: route everything to the adapter, escalate invalid outputs.
        "escalation": {"on_invalid_output": True, "confidence_threshold": None},
        "latency_s": {"p50": rp.get("p50_s"), "p95": rp.get("p95_s")},
    }


def run_routing(run_dir: str | Path, cand: dict[str, Any]) -> dict[str, Any]:
    """The run folder's routing.json when present (eval gates), else hints from the evaluation."""
    f = Path(run_dir) / ROUTING_FILE
    if not f.is_file():
        return _fallback_routing(cand)
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RegistryError(f"{f}: cannot read the routing profile ({e})") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{f}: expected a JSON object, got {type(data).__name__}")
    return data


def skill_spec(cfg) -> dict[str, Any]:
    """skill.json: the prompt template/labels/schema from core.prompting plus the base model."""
    from core.prompting import template_spec

    spec = dict(template_spec(cfg))
    spec.setdefault("task_type", cfg.task)
    schema = getattr(cfg, "output_schema", None)
    if schema is not None and "output_schema" not in spec:
        spec["output_schema"] = schema
    spec["base_model"] = cfg.student.base_model
    from eval_gates.predict import answer_tokens

    spec["max_new_tokens"] = answer_tokens(cfg)  # what the gates decoded with; consumers decode the same
    from teachers.constrained import engine_version

    spec["decoding"] = {"constrained": cfg.decoding.constrained,  # consumers decode the same way
                        **({"engine": engine_version()} if cfg.decoding.constrained else {}),
                        **({"max_string_chars": cfg.decoding.max_string_chars}
                           if cfg.decoding.constrained and cfg.decoding.max_string_chars else {})}
    # The privacy block travels with the version: a gateway without the skill's skill.yaml scrubs the same way.
    spec["privacy"] = cfg.privacy.model_dump()
    spec["drift"] = cfg.drift.model_dump()  # and the drift monitor's windows and bands
    return spec


def novelty_profile(skill, run_dir: str | Path) -> dict[str, Any] | None:
    """novelty.json for the version a run publishes (filters/novelty.py): signatures of the inputs it trained on
    (train.jsonl and val.jsonl of the run folder, the task type's matching text) and the novelty threshold
    calibrated on the skill's eval set, which is never trained on. None when the run folder has no train.jsonl
    (the version then has no novelty signal; the gateway says so)."""
    from core.records import read_examples
    from core.tasks import get_task
    from filters.novelty import build_novelty

    folder = Path(run_dir)
    if not (folder / "train.jsonl").is_file():
        return None
    text = get_task(skill.config).match_text
    train = [text(e.input) for name in ("train.jsonl", "val.jsonl") if (folder / name).is_file()
             for e in read_examples(folder / name)]
    d = skill.config.drift
    return build_novelty(train, [text(e.input) for e in skill.eval_set], quantile=d.novelty_quantile,
                         max_pool=d.novelty_pool)


def production(reg: Registry, skill: str) -> tuple[int | None, str | None]:
    """(version, local folder) of the skill's production alias, (None, None) without one. The folder is
    local also for remote registries (pulled into the cache), so the eval gates can load it."""
    version = reg.aliases(skill).get("production")
    if version is None:
        return None, None
    return version, str(reg.resolve(skill, version=version))


def publish_run(reg: Registry, skill, run_id: str, run_dir: str | Path, adapter_dir: str, evaluation: dict,
                decision: dict, lineage: dict, data_summary: dict) -> dict[str, Any]:
    """Publish a run's adapter with its metrics, lineage, routing, skill.json and model card.

    Returns {"version", "alias", "path"} (path: the version folder, or its URL on remote storage).
    """
    cfg = skill.config
    cand = evaluation["candidate"]
    metrics = {"eval": cand["eval"], "replay": cand["replay"], "champion": evaluation.get("champion"),
               "decision": decision}
    routing = run_routing(run_dir, cand)
    lineage = dict(lineage)
    if "teachers" not in lineage and lineage.get("teacher"):
        lineage["teachers"] = [lineage["teacher"]]
    limits = [
        f"Trained on {data_summary.get('train')} examples ({data_summary.get('train_by_source')}); "
        "the teacher's labels are noisy.",
        "Evaluated on a frozen hand-written set; live traffic may drift.",
        "Invalid outputs are possible: parse them with skill.json and escalate when invalid.",
    ]
    base = cfg.student.base_model
    alias = cfg.gates.publish_alias
    serving = serving_info(adapter_dir)  # the card's vLLM command fits this adapter (or says why none does)
    spec = skill_spec(cfg)
    novelty = novelty_profile(skill, run_dir)
    version = reg.publish(
        skill.name, adapter_dir, metrics=metrics, lineage=lineage, routing=routing, skill_spec=spec,
        model_card=lambda v: render_model_card(skill.name, v, base, metrics, lineage, data_summary, limits, serving,
                                               decoding=spec.get("decoding"), routing=routing),
        alias=alias, reason=f"run {run_id}: every gate passed",
        extra={"novelty.json": novelty} if novelty is not None else None,
    )
    # No storage call after the commit: a transient error here would make the task retry a done publish.
    return {"version": version, "alias": alias, "path": str(reg.version_location(skill.name, version))}
