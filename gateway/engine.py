"""Where the small model runs. `LocalEngine`: transformers + PEFT in this process, one base model
loaded once and every served adapter on it (unmerged, `set_adapter` per batch), decoded by
`eval_gates.predict.decode`, the path the eval gates measured. `OpenAIEngine` (engine_openai.py):
a vLLM server started with `--lora-modules SKILL@VERSION=FOLDER`."""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Answer:
    """One decoded answer of the small model."""

    raw: str  # the text before the stop newline
    parsed: str | None  # canonical answer (core.prompting.parse_output), None when unparseable
    confidence: float | None  # routing.json's `signal` of the answer (default: mean answer-token log-probability)
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


def finite_or_none(x: float | None) -> float | None:
    """A confidence as a float, or None when there is none or it is NaN/inf (a -inf token logprob):
    None routes as "no usable confidence" (escalate) and serializes as JSON null."""
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def adapter_name(key: str) -> str:
    """A PEFT-safe adapter name for 'skill@version' (module-dict keys cannot hold '.')."""
    return re.sub(r"[^A-Za-z0-9_]", "_", key)


class LocalEngine:
    """One LocalModel per base model; adapters keyed 'skill@version'."""

    # Every routing confidence (eval_gates.routing.SIGNALS): the decode reads them all from its own scores.
    signals = ("mean_logprob", "min_logprob", "mean_grammar_logprob", "min_grammar_logprob", "min_margin")

    def __init__(self):
        self.models: dict[str, Any] = {}  # resolved base path -> teachers.local.LocalModel
        self.where: dict[str, str] = {}  # key -> base path
        self._lock = threading.Lock()

    def load(self, key: str, folder: Path, spec: dict) -> None:
        """Load the version folder's adapter on its base (loading the base once). Raises RegistryError
        for a folder without a safetensors adapter or a base that cannot be found."""
        from registry.consumer import base_model_of
        from registry.store import RegistryError
        from teachers.local import LocalModel
        from trainers.base_model import resolve_model

        if not (Path(folder) / "adapter_model.safetensors").is_file():
            raise RegistryError(f"{folder}: no adapter_model.safetensors (only safetensors adapters are loaded)")
        base = resolve_model(spec.get("base_model") or base_model_of(folder), "base_model")
        with self._lock:
            model = self.models.get(base)
            if model is None:
                model = self.models[base] = LocalModel(base, name=base, safetensors_only=True)
            model.add_adapter(adapter_name(key), str(folder))
            self.where[key] = base

    def unload(self, key: str) -> None:
        with self._lock:
            base = self.where.pop(key, None)
            if base is not None:
                self.models[base].remove_adapter(adapter_name(key))

    def tokenizer(self, key: str):
        """The tokenizer of the base `key`'s adapter sits on (chat-template prompts need it)."""
        return self.models[self.where[key]].tokenizer

    def decode(self, key: str, cfg, prompts: Sequence[str], max_new_tokens: int,
               inputs: Sequence[str] | None = None, signal: str = "mean_logprob") -> list[Answer]:
        """Greedy answers with confidences for `prompts`, in order; chunks of 16 sorted by length, as the gates
        decode, under the skill's answer grammar when skill.json says it was measured so (`inputs`: the raw
        inputs the prompts were made from). `confidence` is routing.json's `signal`."""
        from eval_gates.predict import DECODE_BATCH, decode

        model = self.models[self.where[key]]
        p = decode(model, cfg, prompts, max_new_tokens=max_new_tokens, batch_size=DECODE_BATCH,
                   adapter=adapter_name(key), inputs=inputs, signal=signal, own=signal in ("mean_logprob", "min_logprob"))
        ptoks = p.prompt_tokens or [0] * len(prompts)
        ctoks = p.completion_tokens or [0] * len(prompts)
        return [Answer(raw=r, parsed=a, confidence=finite_or_none(c), finish_reason=f, prompt_tokens=int(pt),
                       completion_tokens=int(ct))
                for r, a, c, f, pt, ct in zip(p.raw, p.preds, p.confidences, p.finish_reasons, ptoks, ctoks)]

    def group(self, key: str) -> str:
        """Which shared batch `key`'s requests join: its base model (versions of every skill on one base are
        decoded together, each row with its own adapter)."""
        return self.where[key]

    def decode_mixed(self, jobs: Sequence[tuple]) -> list[Answer]:
        """Answers for jobs of any loaded versions on one base, in order, decoded in shared batches (PEFT
        mixed-adapter rows, one cap per row). jobs: (key, cfg, prompt, input, max_new_tokens, signal). Each
        answer is what `decode` gives for that job alone: the same greedy path, grammar and confidence.
        Jobs of skills decoded free and of skills under a grammar go in separate batches (a free row under
        the any-line grammar could answer differently from the free decode the gates measured)."""
        from eval_gates.predict import DECODE_BATCH, answer_grammars
        from core.prompting import parse_output

        out: list[Answer | None] = [None] * len(jobs)
        parts: dict[bool, list[int]] = {}
        for i, (_, cfg, *_rest) in enumerate(jobs):
            parts.setdefault(bool(cfg.decoding.constrained), []).append(i)
        for constrained, idx in parts.items():
            keys = [jobs[i][0] for i in idx]
            model = self.models[self.where[keys[0]]]
            grammars = [answer_grammars(jobs[i][1], 1, [jobs[i][3]])[0] for i in idx] if constrained else None
            signals = [jobs[i][5] for i in idx]
            comps = model.complete([jobs[i][2] for i in idx], max_new_tokens=max(jobs[i][4] for i in idx),
                                   caps=[jobs[i][4] for i in idx], adapters=[adapter_name(k) for k in keys],
                                   temperature=0.0, batch_size=DECODE_BATCH, confidence=True, grammars=grammars,
                                   own=any(sg in ("mean_logprob", "min_logprob") for sg in signals))
            for i, c, sg in zip(idx, comps, signals):
                conf = c.confidence if sg == "mean_logprob" else (c.signals or {}).get(sg)
                out[i] = Answer(raw=c.text, parsed=parse_output(jobs[i][1], c.text), confidence=finite_or_none(conf),
                                finish_reason=c.finish_reason, prompt_tokens=int(c.prompt_tokens),
                                completion_tokens=int(c.completion_tokens))
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.models.clear()
        self.where.clear()
