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


def render_model_card(
    skill: str,
    version: int,
    base_model: str,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    data_summary: dict[str, Any],
    limits: list[str],
) -> str:
    """README.md for a registry version: YAML front matter + what/how/data/metrics/limits.

    `metrics` may be nested (e.g. per-gate ``{"value", "threshold", "passed"}``); nested
    keys are shown dotted. If `data_summary` has a ``description`` it leads the
    "What it does" section; its other keys are listed under "Training data".
    """
    front = {
        "base_model": base_model,
        "library_name": "peft",
        "tags": ["lora", "qlora", "distillation", skill],
        "pipeline_tag": "text-generation",
    }
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, default_flow_style=False)

    summary = dict(data_summary)
    description = summary.pop("description", None)
    teacher = lineage.get("teacher")

    what = [f"A LoRA adapter (QLoRA-trained) for the `{skill}` skill, version {version}, on top of `{base_model}`."]
    if description:
        what.append(str(description))
    what.append(
        "It was distilled from "
        + (f"the teacher `{teacher}`" if teacher else "a teacher model")
        + " on synthetic examples filtered for duplicates and eval contamination; its evaluation-gate results "
        "are below. The prompt template and labels it was trained with are in `skill.json`; "
        "use exactly that template at inference time."
    )

    how = (
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "\n"
        f'base = AutoModelForCausalLM.from_pretrained("{base_model}")\n'
        f'tokenizer = AutoTokenizer.from_pretrained("{base_model}")\n'
        f'model = PeftModel.from_pretrained(base, "<registry>/{skill}/versions/{version}")\n'
        "model.eval()\n"
        "```\n\n"
        "Or through the registry's consumer API, which downloads, checks the sha256 of every file, "
        "formats inputs with `skill.json` and parses the answers:\n\n"
        "```python\n"
        "from registry import load, predict, resolve\n"
        "\n"
        f'folder = resolve("{skill}", alias="production")  # verified local folder\n'
        f'model, tokenizer = load("{skill}")\n'
        f'answers = predict("{skill}", ["..."])\n'
        "```\n\n"
        "### Serving with vLLM\n\n"
        "The folder is a standard PEFT LoRA adapter, accepted as-is by vLLM's `--lora-modules NAME=PATH` "
        "(`--max-lora-rank` must be at least `r` in `adapter_config.json`):\n\n"
        "```bash\n"
        f"vllm serve {base_model} --enable-lora --max-lora-rank 64 \\\n"
        f"    --lora-modules {skill}=<registry>/{skill}/versions/{version}\n"
        "```\n\n"
        f'Requests then name the adapter as the model (`"model": "{skill}"`) and build the prompt with '
        "`prompt_template` from `skill.json`."
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

    limits_md = "\n".join(f"- {str(x).strip()}" for x in limits if str(x).strip()) or "- None recorded."

    sections = [
        f"---\n{header}---",
        f"# {skill} LoRA adapter (v{version})",
        "## What it does\n\n" + "\n\n".join(what),
        "## How to load\n\n" + how,
        "## Training data\n\n" + "\n\n".join(data_parts),
        "## Evaluation metrics\n\n" + metrics_md,
        "## Limits\n\n" + limits_md,
    ]
    return "\n\n".join(sections) + "\n"
