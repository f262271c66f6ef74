"""What the documented serving stacks (vLLM with LoRA modules, PEFT) can load, checked when a skill
file is validated (core.config) and again when a version is published (registry/serving.py)."""

from __future__ import annotations

import re

# vllm/config/lora.py: MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Module names of token embeddings / output heads across the architectures transformers ships.
EMBEDDING_MODULES = ("embed_tokens", "lm_head", "embed_in", "embed_out", "wte", "word_embeddings", "shared",
                     "output")


def target_modules_problem(target_modules: str | list[str] | None, rank: int | None = None) -> str | None:
    """Why the documented serving stacks cannot load adapters trained with these LoRA settings, or None.

    For skill validation (``student.lora``): an embedding or output head (embed_tokens, lm_head, ...)
    in `target_modules` (names, or a regex string matched like PEFT does) makes PEFT save the whole
    base embedding into the adapter, which vLLM refuses; a rank above 512 exceeds vLLM's
    ``--max-lora-rank``. "all-linear" excludes the head and is fine."""
    problems = []
    if isinstance(target_modules, str) and target_modules != "all-linear":
        hits = [m for m in EMBEDDING_MODULES if re.fullmatch(target_modules, m)
                or re.fullmatch(target_modules, f"model.{m}")]
    elif isinstance(target_modules, (list, tuple)):
        hits = sorted({m for t in target_modules for m in EMBEDDING_MODULES
                       if isinstance(t, str) and (t == m or t.endswith(f".{m}"))})
    else:
        hits = []
    if hits:
        problems.append(
            f"target_modules includes {', '.join(hits)}: PEFT then saves the whole base embedding/head weights "
            "into the adapter, which vLLM refuses to load (it serves LoRA on linear layers only); use "
            "all-linear or linear layer names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"
        )
    if isinstance(rank, int) and rank > VLLM_MAX_LORA_RANKS[-1]:
        problems.append(f"lora.r {rank} is above vLLM's largest --max-lora-rank ({VLLM_MAX_LORA_RANKS[-1]})")
    return "; ".join(problems) or None
