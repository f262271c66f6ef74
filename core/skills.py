"""Skill files: one `skill.yaml` per skill, validated up front.

A skill folder is `seeds/<name>/` with `skill.yaml`, `seeds.jsonl` (human
examples), `eval.jsonl` (the frozen regression set) and `traffic.jsonl` (a log of
live requests with the reference answer and whether a person accepted it).
Every config error is collected into one message naming the key and the fix;
every data error names the file and line.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.records import DataError, Example, read_jsonl

TaskType = Literal["classification"]


class SkillError(ValueError):
    """A skill cannot be loaded; the message says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TeacherConfig(_Strict):
    backend: Literal["local", "openai"] = Field("local", description="'local' (transformers) or 'openai' (any OpenAI-compatible server).")
    model: str = Field("bundled:gemma-3-270m", description="Model id, local path, or bundled:gemma-3-270m; the served model name for 'openai'.")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1 (backend 'openai').")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key (never the key itself).")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout for HTTP teachers.")
    few_shot: int = Field(8, ge=0, le=64, description="Seed examples shown in each labeling prompt.")
    style_shots: int = Field(6, ge=1, le=64, description="Seed inputs shown when asking for new inputs.")
    temperature: float = Field(0.9, ge=0.0, le=2.0, description="Sampling temperature for new inputs.")
    max_new_tokens: int = Field(64, ge=4, le=1024, description="Longest generated input, in tokens.")
    batch_size: int = Field(16, ge=1, le=256, description="Prompts per generate() call.")


    @model_validator(mode="after")
    def _url(self) -> "TeacherConfig":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("teacher.base_url is required when teacher.backend is 'openai'")
        return self


class ExpansionConfig(_Strict):
    target_examples: int = Field(64, ge=0, le=100_000, description="New inputs the teacher writes per run.")


class FilterConfig(_Strict):
    near_dup_threshold: float = Field(0.7, gt=0.0, le=1.0, description="MinHash Jaccard above which two inputs are near-duplicates.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    shingle: int = Field(3, ge=1, le=16, description="Word n-gram size for MinHash shingles.")
    ngram: int = Field(13, ge=3, le=64, description="n-gram size for the contamination check.")
    min_ngram: int = Field(8, ge=2, le=64, description="Shorter eval items use n-grams of their own length, down to this.")
    min_input_words: int = Field(3, ge=1, description="Inputs shorter than this are dropped as too_short.")
    max_input_words: int = Field(120, ge=1, description="Inputs longer than this are dropped as too_long.")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="Drop teacher examples whose confidence is below this.")


class LoraConfigModel(_Strict):
    r: int = Field(16, ge=1, le=512)
    alpha: int = Field(32, ge=1, le=1024)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field("all-linear", description="Module names, or 'all-linear'.")


class TrainConfig(_Strict):
    epochs: float = Field(2.0, gt=0, le=100)
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: use epochs).")
    batch_size: int = Field(8, ge=1, le=1024)
    grad_accum: int = Field(1, ge=1, le=1024)
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    max_length: int = Field(256, ge=16, le=32768)
    human_share: float = Field(0.3, ge=0.0, le=1.0, description="Least share of human examples in every epoch.")
    eval_steps: int | None = Field(None, ge=1, description="Validate and checkpoint every N steps (default: ~4 per run).")
    answer_only_logits: bool = Field(True, description="LM-head logits only where the loss is taken (same loss, ~5x faster on CPU).")
    seed: int = 0


class StudentConfig(_Strict):
    base_model: str = Field("bundled:gemma-3-270m", description="Model id, local path, or bundled:gemma-3-270m.")
    quantization: Literal["nf4", "none"] = "nf4"
    lora: LoraConfigModel = LoraConfigModel()
    train: TrainConfig = TrainConfig()


class ReplayConfig(_Strict):
    source: str = Field("traffic.jsonl", description="Traffic log file inside the skill folder.")
    sample: int = Field(40, ge=1, description="Requests replayed per run (sampled reproducibly).")
    min_agreement: float = Field(0.4, ge=0.0, le=1.0, description="Least agreement with accepted references.")
    max_invalid_rate: float = Field(0.2, ge=0.0, le=1.0, description="Most outputs that do not parse.")


class GateConfig(_Strict):
    floor: dict[str, float] = Field(default_factory=lambda: {"accuracy": 0.4}, description="Absolute floors per metric.")
    margin: float = Field(0.02, ge=0.0, le=1.0, description="Largest tolerated drop against production.")
    eval_limit: int | None = Field(None, ge=1, description="Score only the first N eval items (smoke runs).")
    publish_alias: Literal["production", "candidate"] = Field(
        "production", description="Alias a version that passes every gate gets; smoke runs publish as candidate.")
    replay: ReplayConfig = ReplayConfig()


class ScheduleConfig(_Strict):
    cron: str | None = None


class SkillConfig(_Strict):
    name: str
    task: TaskType
    instruction: str = Field(min_length=1)
    input_name: str = Field("Input", description="Label before the input in prompts.")
    output_name: str = Field("Output", description="Label before the answer in prompts.")
    labels: list[str] = Field(default_factory=list)
    teacher: TeacherConfig = TeacherConfig()
    expansion: ExpansionConfig = ExpansionConfig()
    filters: FilterConfig = FilterConfig()
    student: StudentConfig = StudentConfig()
    gates: GateConfig = GateConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Named overrides, e.g. smoke.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError("use letters, digits, '-' and '_' only")
        return v

    @model_validator(mode="after")
    def _labels(self) -> "SkillConfig":
        if self.task == "classification":
            if len(self.labels) < 2:
                raise ValueError("labels: a classification skill needs at least 2 labels")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError("labels: duplicate label")
        return self


# Built-in profiles, deep-merged over the skill file; a skill may redefine them under `profiles:`.
BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    # smoke: the whole pipeline on real parts in a few minutes (fewer items, a few training steps).
    "smoke": {
        "expansion": {"target_examples": 8},
        "teacher": {"few_shot": 5, "style_shots": 3, "batch_size": 8, "max_new_tokens": 48},
        "student": {"train": {"max_steps": 4, "batch_size": 4, "eval_steps": 4}},
        # Loose gates so the publish path runs too; the version gets the `candidate` alias,
        # never `production`, so a smoke adapter is never served nor used as the champion.
        "gates": {"eval_limit": 16, "replay": {"sample": 8, "min_agreement": 0.0, "max_invalid_rate": 1.0},
                  "floor": {"accuracy": 0.0}, "margin": 1.0, "publish_alias": "candidate"},
    },
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _format_validation(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {err.error_count()} problem(s) in the skill file:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - {key}: {e['msg']}")
    return "\n".join(lines)


@dataclass
class Skill:
    """A loaded skill: its validated config and its human data."""

    config: SkillConfig
    folder: Path
    profile: str
    seeds: list[Example]
    eval_set: list[Example]

    @property
    def name(self) -> str:
        return self.config.name

    def traffic_path(self) -> Path:
        return self.folder / self.config.gates.replay.source


def seeds_root() -> Path:
    """Where skill folders live: $DISTILL_SEEDS_DIR, else ./seeds."""
    return Path(os.environ.get("DISTILL_SEEDS_DIR", "seeds")).resolve()


def list_skills(root: Path | None = None) -> list[str]:
    root = root or seeds_root()
    return sorted(p.name for p in root.iterdir() if (p / "skill.yaml").is_file()) if root.is_dir() else []


def load_config(folder: Path, profile: str = "default") -> SkillConfig:
    path = folder / "skill.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SkillError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise SkillError(f"{path}: expected a mapping of keys at the top level")
    profiles = deep_merge(BUILTIN_PROFILES, raw.get("profiles") or {})
    if profile not in profiles:
        raise SkillError(f"unknown profile {profile!r} for skill {folder.name}; choose one of: {', '.join(sorted(profiles))}")
    merged = deep_merge(raw, profiles[profile])
    try:
        cfg = SkillConfig.model_validate(merged)
    except ValidationError as e:
        raise SkillError(_format_validation(path, e)) from None
    if cfg.name != folder.name:
        raise SkillError(f"{path}: name is {cfg.name!r} but the folder is {folder.name!r}; make them the same")
    return cfg


def load_examples(path: Path, cfg: SkillConfig, kind: str) -> list[Example]:
    """Load human-written examples ({"id", "input", "output"}) with per-line checks."""
    if not path.is_file():
        raise SkillError(f"{path}: missing {kind} file for skill {cfg.name}")
    out: list[Example] = []
    seen: dict[str, int] = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        unknown = set(obj) - {"id", "input", "output", "meta"}
        if unknown:
            raise DataError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: id, input, output, meta")
        for key in ("id", "input", "output"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise DataError(f"{where}: '{key}' must be a non-empty string")
        if obj["id"] in seen:
            raise DataError(f"{where}: duplicate id {obj['id']!r} (first on line {seen[obj['id']]})")
        seen[obj["id"]] = lineno
        if cfg.task == "classification" and obj["output"] not in cfg.labels:
            raise DataError(f"{where}: output {obj['output']!r} is not one of the labels {cfg.labels}")
        out.append(Example(id=obj["id"], skill=cfg.name, input=obj["input"].strip(), output=obj["output"],
                           source="human", meta=obj.get("meta") or {}))
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def load_skill(name: str, profile: str = "default", root: Path | None = None) -> Skill:
    root = root or seeds_root()
    folder = root / name
    if not (folder / "skill.yaml").is_file():
        known = list_skills(root)
        raise SkillError(f"unknown skill {name!r}: no {folder}/skill.yaml (skills found: {', '.join(known) or 'none'})")
    cfg = load_config(folder, profile)
    seeds = load_examples(folder / "seeds.jsonl", cfg, "seeds")
    eval_set = load_examples(folder / "eval.jsonl", cfg, "eval set")
    overlap = {e.input.lower() for e in seeds} & {e.input.lower() for e in eval_set}
    if overlap:
        raise DataError(f"{folder}: {len(overlap)} eval input(s) also appear in seeds.jsonl, e.g. {sorted(overlap)[0]!r}")
    return Skill(config=cfg, folder=folder, profile=profile, seeds=seeds, eval_set=eval_set)
