"""What the documented serving stacks (vLLM, PEFT) accept from an adapter, checked before a card
promises a command that would fail.

* vLLM's ``--max-lora-rank`` takes one of :data:`VLLM_MAX_LORA_RANKS` and must be at least the
  adapter's largest rank (``r``, and any ``rank_pattern`` entry).
* vLLM loads only LoRA factors of its supported layers: tensor names
  ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` (``lora_embedding_A/B`` for an
  embedding LoRA). With an embedding layer in ``target_modules`` PEFT also saves the whole base
  embedding (``...embed_tokens.weight``: 262144 x 640 floats for Gemma 3 270M), which vLLM refuses.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from registry.store import RegistryError

from core.lora_serving import EMBEDDING_MODULES, VLLM_MAX_LORA_RANKS, target_modules_problem  # noqa: F401
# Tensor names vLLM's LoRA loader accepts (vllm/lora/utils.py parse_fine_tuned_lora_name).
# Whole name (\Z, and vllm_tensor_problems uses fullmatch): no trailing newline.
VLLM_LORA_TENSOR = re.compile(
    r"base_model\.model\.(?P<module>[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*)\."
    r"(?:lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)\Z"
)


def vllm_max_lora_rank(rank: int) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that fits an adapter of this rank.

    Raises RegistryError above vLLM's largest (512)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise RegistryError(f"LoRA rank {rank!r} is not a positive integer")
    for allowed in VLLM_MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise RegistryError(f"LoRA rank {rank} is above vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})")


def adapter_rank(adapter_config: dict[str, Any]) -> int:
    """The largest LoRA rank in an adapter_config.json: ``r`` and every ``rank_pattern`` value."""
    ranks = [adapter_config.get("r")] + list((adapter_config.get("rank_pattern") or {}).values())
    ranks = [r for r in ranks if isinstance(r, int) and not isinstance(r, bool)]
    if not ranks:
        raise RegistryError("adapter_config.json has no integer rank 'r'")
    return max(ranks)


def vllm_tensor_problems(names: Iterable[str]) -> list[str]:
    """The tensor names vLLM's LoRA loader refuses (empty: it loads every one), each with the reason."""
    out = []
    for name in sorted(names):
        if not VLLM_LORA_TENSOR.fullmatch(name):
            what = ("a whole base-model weight (an embedding or head in target_modules makes PEFT save it)"
                    if any(f".{m}." in f".{name}" for m in EMBEDDING_MODULES) else "not a LoRA factor")
            out.append(f"{name}: {what}; vLLM accepts only base_model.model.<module>.lora_A.weight/lora_B.weight")
    return out


def serving_info(adapter_dir: str | Path) -> dict[str, Any]:
    """{"rank", "max_lora_rank" (None when vLLM cannot serve it), "problems": [...]} for an adapter folder
    (adapter_config.json + adapter_model.safetensors)."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RegistryError(f"{adapter_dir / 'adapter_config.json'}: cannot read ({e})") from None
    rank = adapter_rank(cfg)
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="numpy") as f:
        names = list(f.keys())
    problems = vllm_tensor_problems(names)
    try:
        max_rank = vllm_max_lora_rank(rank)
    except RegistryError as e:
        problems.append(str(e))
        max_rank = None
    return {"rank": rank, "max_lora_rank": None if problems else max_rank, "problems": problems}
