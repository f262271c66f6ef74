"""The consumer API: what a serving stack or router calls.

    from registry import resolve, load, predict
    folder = resolve("ticket-triage")                 # verified local folder of production
    model, tokenizer = load("ticket-triage")          # ready PEFT model (safetensors only)
    predict("ticket-triage", ["I was charged twice"]) # -> ["billing"]

Formatting: the prompt is built by core.prompting.format_prompt on a SkillConfig rebuilt
from the version's skill.json, i.e. the very function training and the eval gates use,
so JSON tasks get their schema/tool rendering and parse_output's lenient, canonical
parsing. If the installed code would render a different template than the one bundled
in skill.json (the template changed since the adapter was trained), the bundled
``prompt_template`` wins: its ``{input}`` is replaced (str.replace, so braces in an
instruction or schema are safe) by the input on one line, as in training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from registry.store import CHECKSUMS_FILE, PRODUCTION, Registry, RegistryError, verify_folder

log = logging.getLogger("distill." + __name__)



def _registry(registry: Registry | str | Path | None) -> Registry:
    return registry if isinstance(registry, Registry) else Registry(registry)


def resolve(skill: str, alias: str = PRODUCTION, *, version: int | None = None,
            registry: Registry | str | Path | None = None) -> Path:
    """A verified local folder for `skill` at `alias` (or `version`); see Registry.resolve."""
    return _registry(registry).resolve(skill, alias=alias, version=version)


def read_spec(folder: str | Path) -> dict[str, Any]:
    """skill.json of a version folder, with a clear error when it is missing or not JSON."""
    f = Path(folder) / "skill.json"
    try:
        spec = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RegistryError(f"{f}: missing; is {folder} a registry version folder?") from None
    except (OSError, json.JSONDecodeError) as e:
        raise RegistryError(f"{f}: cannot read ({e})") from None
    if not isinstance(spec, dict):
        raise RegistryError(f"{f}: expected a JSON object")
    return spec


def skill_config(spec: dict[str, Any], name: str = "registry-skill"):
    """The SkillConfig a version was trained with, rebuilt from skill.json (unknown keys ignored)."""
    from pydantic import ValidationError

    from core.skills import SkillConfig

    data = {k: v for k, v in spec.items() if k in SkillConfig.model_fields and k not in ("name", "profiles")}
    if "task" not in data and "task_type" in spec:
        data["task"] = spec["task_type"]
    data.setdefault("instruction", spec.get("instruction") or "-")
    # Decode as the gates did: a version published before constrained decoding existed was measured free.
    dec = spec.get("decoding") if isinstance(spec.get("decoding"), dict) else {}
    data["decoding"] = {"constrained": bool(dec.get("constrained", False))}
    if dec.get("max_string_chars") is not None:  # the grammar's string bound, as the gates decoded
        data["decoding"]["max_string_chars"] = dec["max_string_chars"]
    if spec.get("prompt_format"):  # how training rendered the prompt: the consumer renders it the same way
        data["student"] = {"train": {"prompt_format": spec["prompt_format"]}}
    try:
        return SkillConfig.model_validate({"name": name, **data})
    except ValidationError as e:
        raise RegistryError(f"skill.json cannot be read as a skill config: {e}") from None


def base_model_of(folder: str | Path) -> str:
    """The base model spec: skill.json's base_model, else adapter_config.json's base_model_name_or_path."""
    from trainers.base_model import adapter_base_model

    read_spec(folder)  # a clear error for a folder without a readable skill.json
    base = adapter_base_model(folder)
    if not base:
        raise RegistryError(f"{folder}: neither skill.json nor adapter_config.json names the base model")
    return str(base)


def load_folder(folder: str | Path, base_model: str | None = None, dtype: Any = None):
    """(PeftModel, tokenizer) from a verified version folder. Only safetensors and JSON are read:
    the folder must match checksums.json (so no stray pickle can sit next to the adapter) and
    both the base and the adapter are loaded with safetensors."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainers.base_model import load_tokenizer, resolve_model

    folder = Path(folder)
    if (folder / CHECKSUMS_FILE).is_file():
        verify_folder(folder)
    if not (folder / "adapter_model.safetensors").is_file():
        raise RegistryError(f"{folder}: no adapter_model.safetensors (only safetensors adapters are loaded)")
    base = resolve_model(base_model or base_model_of(folder), "base_model")
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, dtype=dtype or torch.float32)
    model = PeftModel.from_pretrained(model, str(folder), use_safetensors=True)
    model.eval()
    return model, load_tokenizer(base)


def load(skill: str, alias: str = PRODUCTION, *, version: int | None = None, base_model: str | None = None,
         registry: Registry | str | Path | None = None):
    """A ready (PeftModel, tokenizer) for `skill` at `alias`; `base_model` overrides skill.json's."""
    return load_folder(resolve(skill, alias, version=version, registry=registry), base_model)


class _KeepUnknown(dict):
    """str.format_map fields: a name the template does not fill stays as written ({name})."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _bundled_fields(spec: dict[str, Any], input: str) -> dict[str, str]:
    """The str.format fields of skill.json's prompt_template for `input`: input, or (function calls,
    `tool_template` present) tools and request."""
    one = " ".join(input.split())
    if "tool_template" not in spec:
        return {"input": one}
    obj = json.loads(input)
    lines = []
    for tool in obj["tools"]:
        fn = tool["function"]
        desc = " ".join((fn.get("description") or "").split())
        params = json.dumps(fn.get("parameters") or {"type": "object", "properties": {}}, ensure_ascii=False,
                            separators=(",", ":"))
        line = spec["tool_template"].format(name=fn["name"], description=desc, parameters=params)
        lines.append(line.replace(": " + " Parameters", ": Parameters") if not desc else line)
    return {"tools": "\n".join(lines), "request": " ".join(str(obj["request"]).split())}


def build_prompt(spec: dict[str, Any], cfg, input: str, tokenizer=None) -> str:
    """The prompt text for `input`, as training rendered it (core.prompting.render_prompt: the chat
    template too when skill.json's prompt_format says so). When the installed code would render a
    different template than the bundled one (the template changed since the adapter was trained),
    skill.json's `prompt_template` wins: a str.format string filled with the input (or a function
    call's tools and request), then wrapped in the chat template as training was."""
    from core.prompting import chat_wrap, render_prompt, template_spec

    bundled = spec.get("prompt_template")
    if not bundled or template_spec(cfg).get("prompt_template") == bundled:
        return render_prompt(cfg, input, tokenizer)
    log.warning("skill.json's prompt template differs from the installed code's; using the bundled one")
    text = bundled.format_map(_KeepUnknown(_bundled_fields(spec, input)))
    return chat_wrap(text, tokenizer) if spec.get("prompt_format") == "chat_template" else text


def max_new_tokens_of(spec: dict[str, Any], cfg) -> int:
    """Generated tokens per answer: skill.json's `max_new_tokens` (what the gates decoded with),
    else the task's default for the rebuilt config (eval_gates.predict.answer_tokens)."""
    from eval_gates.predict import answer_tokens

    return int(spec.get("max_new_tokens") or answer_tokens(cfg))


class Predictor:
    """A loaded version that answers inputs: skill.json, its SkillConfig and a
    teachers.local.LocalModel (the base with this adapter, unmerged): the decode path the eval
    gates measured (eval_gates.predict.decode), so its answers are the gate's answers."""

    def __init__(self, folder: str | Path, base_model: str | None = None):
        from teachers.local import LocalModel
        from trainers.base_model import resolve_model

        self.folder = Path(folder)
        if (self.folder / CHECKSUMS_FILE).is_file():
            verify_folder(self.folder)
        if not (self.folder / "adapter_model.safetensors").is_file():
            raise RegistryError(f"{self.folder}: no adapter_model.safetensors (only safetensors adapters are loaded)")
        self.spec = read_spec(self.folder)
        self.cfg = skill_config(self.spec)
        base = resolve_model(base_model or base_model_of(self.folder), "base_model")
        self.local = LocalModel(base, adapter_path=str(self.folder), name=self.folder.name, safetensors_only=True)
        self.model, self.tokenizer = self.local.model, self.local.tokenizer

    def prompts(self, inputs: Sequence[str]) -> list[str]:
        return [build_prompt(self.spec, self.cfg, x, self.tokenizer) for x in inputs]

    def decode(self, inputs: Sequence[str], max_new_tokens: int | None = None):
        """eval_gates.predict.Predictions (parsed answers, raw text, confidences) for `inputs`."""
        from eval_gates.predict import decode

        return decode(self.local, self.cfg, self.prompts(inputs),
                      max_new_tokens=max_new_tokens or max_new_tokens_of(self.spec, self.cfg), inputs=list(inputs))

    def generate(self, inputs: Sequence[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy raw completions, cut at the stop newline (answers are one line)."""
        return self.decode(inputs, max_new_tokens).raw

    def __call__(self, inputs: Sequence[str], max_new_tokens: int | None = None) -> list[str | None]:
        """Parsed answers (canonical text; None where the output is not a valid answer)."""
        return self.decode(inputs, max_new_tokens).preds


def predict(skill: str, inputs: Sequence[str], alias: str = PRODUCTION, *, version: int | None = None,
            max_new_tokens: int | None = None, registry: Registry | str | Path | None = None) -> list[str | None]:
    """Answers of `skill` at `alias` to `inputs`, formatted with its bundled skill.json and parsed."""
    if isinstance(inputs, str):
        raise RegistryError("predict takes a list of inputs, got a single string (wrap it in a list)")
    return Predictor(resolve(skill, alias, version=version, registry=registry))(list(inputs), max_new_tokens)
