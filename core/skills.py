"""Skill files: one `skill.yaml` per skill, validated up front.

A skill folder is `seeds/<name>/` with `skill.yaml`, `seeds.jsonl` (human
examples), `eval.jsonl` (the frozen regression set) and `traffic.jsonl` (a log of
live requests with the reference answer and whether a person accepted it).
Every config error is collected into one message naming the key and the fix;
every data error names the file and line.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core import structured
from core.records import DataError, Example, parse_jsonl_lines

# classification: one label; extraction: a JSON object matching output_schema;
# function_call: {"name", "arguments"} for one of the input's tools; generation: text.
TaskType = Literal["classification", "extraction", "function_call", "generation"]
TASK_TYPES: tuple[str, ...] = TaskType.__args__

# Lowercase letters, digits and dashes: a name is a path component in seeds/, the work dir
# and the registry, so it can never hold '/', '..', a drive or a hidden-file dot.
SKILL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class SkillError(ValueError):
    """A skill cannot be loaded; the message says what to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PriceTable(_Strict):
    prompt_per_1k: float = Field(0.0, ge=0.0, description="Price of 1,000 prompt tokens (any currency; the local default is free).")
    completion_per_1k: float = Field(0.0, ge=0.0, description="Price of 1,000 completion tokens.")


class TeacherConfig(_Strict):
    backend: Literal["local", "openai"] = Field("local", description="'local' (llama.cpp server or transformers, in-process) or 'openai' (any OpenAI-compatible server).")
    model: str = Field("bundled:gemma-3-270m", description="Model id, local path, or bundled:gemma-3-270m; the served model name for 'openai'.")
    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://127.0.0.1:8080/v1 (backend 'openai').")
    endpoint: Literal["completions", "chat"] = Field("completions", description="'completions' (base models, llama.cpp, vLLM) or 'chat' (/chat/completions, instruct APIs).")
    api_key_env: str | None = Field(None, description="Name of the environment variable holding the API key (never the key itself).")
    api_key_secret: str | None = Field(None, description="Name of a Prefect Secret block holding the API key (instead of api_key_env).")
    local_server: Literal["auto", "llama_cpp", "transformers"] = Field(
        "auto", description="How a local bundled:gemma-3-270m is served. auto: the llama.cpp server when llama_cpp is installed, except on CPUs with AVX512-BF16/AMX, where batched bf16 transformers measured 1.6x (new inputs) and 2.3x (labels) faster (benchmarks/teacher_throughput.py --embedded); transformers otherwise.")
    structured_output: bool | Literal["auto"] = Field(
        "auto", description="Send the skill's output schema as response_format: true, false, or auto = only on the chat endpoint (completions servers vary). Answers are validated locally either way.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout for HTTP teachers.")
    max_in_flight: int = Field(16, ge=1, le=1024, description="Most HTTP requests in flight; the adaptive limit (cut on throttling, +1 per limit-worth of successes) stays below it.")
    limit_decrease: float = Field(0.75, gt=0.0, lt=1.0, description="Factor the in-flight limit is multiplied by when the endpoint throttles (429, or 503 with Retry-After); 0.75 kept more throughput than 0.5 under random faults and under a rate limit (README Teachers, benchmarks/teacher_throughput.py).")
    throttle_tolerance: float = Field(0.1, ge=0.0, lt=1.0, description="Share of one window's answers that may be 429s before the limit is cut (0: cut on the first 429). Sporadic 429s of a shared endpoint then do not collapse the limit.")
    rpm: int | None = Field(None, ge=1, description="Requests-per-minute budget enforced by the client (None: no budget).")
    tpm: int | None = Field(None, ge=1, description="Tokens-per-minute budget (prompt + completion) enforced by the client (None: no budget).")
    max_retries: int = Field(4, ge=0, le=20, description="Retries per request on 429, 5xx, timeouts and broken connections (exponential backoff with jitter).")
    backoff_base_s: float = Field(0.5, gt=0, le=60, description="First retry waits about this long (x0.5-1.5 jitter), doubling each time.")
    backoff_max_s: float = Field(30.0, gt=0, le=600, description="Longest wait between retries (Retry-After may ask for more).")
    max_error_rate: float = Field(0.2, ge=0.0, le=1.0, description="Stop the run (TeacherErrorRateExceeded) when more requests than this share fail after retries.")
    error_rate_min_requests: int = Field(20, ge=1, description="Finished requests before the error rate is checked mid-run (it is always checked at the end).")
    invalid_retries: int = Field(2, ge=0, le=10, description="Re-asks of an answer that does not parse or fails the output schema before it is dropped.")
    retry_temperature: float = Field(0.7, ge=0.0, le=2.0, description="Least temperature of a re-ask (a greedy re-ask would repeat the same answer).")
    answer_max_tokens: int | None = Field(None, ge=1, le=4096, description="Longest answer when labeling; None: 8 for classification (one label), 256 otherwise.")
    cache: bool = Field(True, description="Durable response cache in <work dir>/cache/teacher.sqlite: a re-run sends no cached request.")
    prices: PriceTable | None = Field(None, description="Prices for the cost estimate in teacher_accounting.json, e.g. {prompt_per_1k: 0.15, completion_per_1k: 0.6}.")
    few_shot: int = Field(8, ge=0, le=64, description="Seed examples shown in each labeling prompt.")
    style_shots: int = Field(6, ge=1, le=64, description="Seed inputs shown when asking for new inputs.")
    temperature: float = Field(0.9, ge=0.0, le=2.0, description="Sampling temperature for new inputs.")
    max_new_tokens: int = Field(64, ge=4, le=1024, description="Longest generated input, in tokens.")
    batch_size: int = Field(16, ge=1, le=256, description="Prompts per generate() call (local transformers backend).")
    shot_selection: Literal["random", "similar", "auto"] = Field(
        "random", description="Labeling shots per item: random (balanced over labels), similar (the seeds most like the input by BM25, balanced over labels), or auto (the teacher audit measures both and the better one labels the run). Per-item shots defeat a server's prefix cache: the audit reports teacher time per option.")
    calibration: Literal["none", "contextual", "auto"] = Field(
        "auto", description="score answerer: divide label probabilities by the teacher's prior on content-free inputs (Zhao et al. 2021), none, or auto (the audit measures both and the better one is used).")
    score_method: Literal["auto", "echo", "first_token"] = Field(
        "auto", description="How an HTTP teacher scores labels: echo (completions with echo+logprobs: each label's full log-likelihood; vLLM, OpenAI legacy completions) or first_token (top-20 logprobs of the first answer token; chat endpoints too, needs labels with distinct first tokens). auto: first_token on chat endpoints and the embedded llama.cpp server (its echo logprobs sort the whole 262k vocabulary per prompt token: minutes a prompt), echo elsewhere. Local transformers always score the full label.")
    calibration_shot_sets: int = Field(4, ge=1, le=256, description="Random shot sets the content-free prior is averaged over (3 content-free inputs each; the audit draws them per fold).")

    @model_validator(mode="after")
    def _url(self) -> "TeacherConfig":
        problems = []
        if self.backend == "openai" and not self.base_url:
            problems.append("teacher.base_url is required when teacher.backend is 'openai' (e.g. http://127.0.0.1:8080/v1)")
        if self.api_key_env and self.api_key_secret:
            problems.append("teacher.api_key_env and teacher.api_key_secret: give one of them, not both")
        if problems:
            raise ValueError("; ".join(problems))
        return self


Strategy = Literal["self_instruct", "label", "score", "self_consistency", "rewrite"]
ANSWERERS = ("label", "score", "self_consistency")


class ExpansionConfig(_Strict):
    target_examples: int = Field(64, ge=0, le=100_000, description="New inputs the teacher writes per run (self_instruct).")
    strategies: list[Strategy] = Field(
        default_factory=lambda: ["self_instruct", "label"],
        description="Input writers (self_instruct, rewrite) and one answerer (default: score for classification, label otherwise): label (greedy few-shot answer), score (classification: labels ranked by the teacher's log-likelihood, probability = confidence) or self_consistency (n samples, majority answer, agreement = confidence).")
    self_consistency_samples: int = Field(5, ge=2, le=64, description="Samples per input for self_consistency (odd avoids ties).")
    self_consistency_temperature: float = Field(0.7, gt=0.0, le=2.0, description="Sampling temperature of self_consistency samples.")
    rewrite_examples: int = Field(16, ge=0, le=100_000, description="Variants the rewrite strategy writes per run.")
    rewrite_modes: list[Literal["paraphrase", "harder"]] = Field(
        default_factory=lambda: ["paraphrase", "harder"], description="Rewrite prompts, used in turn.")
    rewrite_source: Literal["seeds", "generated"] = Field(
        "seeds", description="Rewrite human seeds, or the inputs self_instruct wrote in this run.")
    new_function_share: float = Field(
        0.5, ge=0.0, le=1.0, description="function_call: share of self_instruct inputs where the teacher writes new "
                                         "functions as well as the request (the rest reuse a seed's tool set), so the "
                                         "student learns to read schemas it has never seen.")

    @model_validator(mode="after")
    def _strategies(self) -> "ExpansionConfig":
        st = set(self.strategies)
        problems = []
        if not st & {"self_instruct", "rewrite"}:
            problems.append("expansion.strategies needs an input writer: add self_instruct or rewrite")
        answerers = sorted(st & set(ANSWERERS))
        if len(answerers) > 1:
            problems.append(f"expansion.strategies: choose one answerer, not {' and '.join(answerers)}")
        elif not answerers:
            problems.append("expansion.strategies needs an answerer: add label, score or self_consistency")
        if self.rewrite_source == "generated" and "rewrite" in st and "self_instruct" not in st:
            problems.append("expansion.rewrite_source 'generated' needs self_instruct in expansion.strategies")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class AuditConfig(_Strict):
    enabled: bool = Field(True, description="Score the teacher on the human seeds (k-fold) before expansion.")
    folds: int = Field(5, ge=2, le=50, description="k: every seed is answered once, with shots only from the other folds.")
    floor: float | None = Field(
        None, ge=0.0, le=1.0, description="Least audit score, on the skill's primary metric (accuracy, field_f1, ast_accuracy or chrf), needed to expand; below it the run refuses the teacher's data (audit.on_fail) with the reason in decision.json. None: no floor.")
    max_items: int | None = Field(None, ge=2, description="Audit at most this many seeds (stratified sample): bounds teacher cost on big seed sets.")
    on_fail: Literal["stop", "skip_expansion"] = Field(
        "stop", description="Below the floor: stop the run before expansion (nothing trained or published), or skip_expansion: train on the seeds, the accepted pool and new traffic without this run's teacher data (the gates still decide).")


class FilterConfig(_Strict):
    near_dup_threshold: float = Field(0.7, gt=0.0, le=1.0, description="MinHash Jaccard above which two inputs are near-duplicates.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    shingle: int = Field(3, ge=1, le=16, description="Word n-gram size for MinHash shingles.")
    ngram: int = Field(13, ge=3, le=64, description="n-gram size for the contamination check.")
    min_ngram: int = Field(8, ge=2, le=64, description="Shorter eval items use n-grams of their own length, down to this.")
    min_input_words: int = Field(3, ge=1, description="Inputs shorter than this are dropped as too_short.")
    max_input_words: int = Field(120, ge=1, description="Inputs longer than this are dropped as too_long.")
    min_confidence: float = Field(0.0, ge=0.0, le=1.0, description="Drop teacher examples whose confidence is below this.")
    target_precision: float | None = Field(
        None, gt=0.0, le=1.0, description="Per-label confidence thresholds chosen on the teacher audit so that audit items at or above them reach this precision; a label that cannot reach it keeps no teacher examples. None: off.")
    threshold_min_support: int = Field(3, ge=1, description="Audit items at or above a threshold needed before its precision is trusted.")
    max_label_distance: float | None = Field(
        None, gt=0.0, le=1.0, description="Largest total-variation distance between the labels of accepted teacher examples and of the seeds; the least confident examples of over-represented labels are dropped until it holds (classification). None: off.")
    max_output_chars: int = Field(4000, ge=1, description="Outputs longer than this (characters) are dropped as output_too_long.")
    exact_dedup: Literal["input", "input_output"] = Field(
        "input", description="Exact duplicates by normalized input (one answer per question), or only when input and output both repeat.")
    minhash_seed: int = Field(1, ge=0, description="Seed of the MinHash permutations (recorded in the dedup index manifest).")
    # Recall-leaning LSH: every hit is re-checked with the Jaccard estimate, so a false positive costs one comparison.
    lsh_weights: tuple[float, float] = Field(
        (0.1, 0.9), description="(false positive, false negative) weights datasketch uses to pick LSH bands/rows; sum 1.0.")
    redis_url: str | None = Field(
        None, description="redis://host:port/db: keep the dedup index in Redis (shared by workers) instead of DISTILL_HOME/index.")
    external_eval_sets: list[str] = Field(
        default_factory=list, description="Extra eval/benchmark JSONL files (id, input, optional output), relative to the skill folder; nothing overlapping them is trained on.")
    refusal_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS),
        description="Case-insensitive regexes; an OUTPUT matching one is dropped as refusal (inputs may say 'I cannot log in').")
    boilerplate_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BOILERPLATE_PATTERNS),
        description="Case-insensitive regexes; an input or output matching one is dropped as boilerplate (chat filler).")

    @field_validator("lsh_weights")
    @classmethod
    def _weights(cls, v: tuple[float, float]) -> tuple[float, float]:
        if min(v) < 0 or abs(sum(v) - 1.0) > 1e-9:
            raise ValueError("lsh_weights: two non-negative numbers summing to 1.0, e.g. [0.1, 0.9]")
        return v

    @field_validator("refusal_patterns", "boilerplate_patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        bad = []
        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                bad.append(f"{p!r} ({e})")
        if bad:
            raise ValueError("not a valid regex: " + "; ".join(bad))
        return v

    @model_validator(mode="after")
    def _ngrams(self) -> "FilterConfig":
        if self.min_ngram > self.ngram:
            raise ValueError(f"min_ngram ({self.min_ngram}) must not exceed ngram ({self.ngram})")
        return self


# Teacher refusals that must not become training targets.
DEFAULT_REFUSAL_PATTERNS = (
    r"\bas an ai\b", r"\bas a language model\b", r"^\s*i(?: a|')m (?:sorry|unable)\b",
    r"\bi (?:cannot|can't|can not|am unable to) (?:help|assist|provide|comply|fulfil)",
)
# Chat filler a teacher wraps around what it was asked for ("Sure! Here is a ticket: ...").
DEFAULT_BOILERPLATE_PATTERNS = (
    r"^\s*(?:sure|certainly|of course|absolutely)\b[!,.]?\s*here(?:'s| is| are)\b",
    r"^\s*here(?:'s| is| are) (?:a|an|the|some|your) (?:new |another )?(?:example|ticket|input|response)s?\b",
    r"\bi hope this helps\b",
)


class LoraConfigModel(_Strict):
    # Defaults follow the QLoRA paper's recipe for small models: adapters on every linear
    # layer matter more than a large rank; alpha = 2r keeps the update scale stable across r.
    r: int = Field(16, ge=1, le=512, description="LoRA rank (16: enough for one narrow skill; higher rarely helps).")
    alpha: int = Field(32, ge=1, le=1024, description="LoRA scaling alpha (2 x r: the usual, rank-independent update size).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input (0.05: light regularization for small data).")
    target_modules: list[str] | str = Field(
        "all-linear", description="Module names, or 'all-linear' (every linear layer but the LM head, as in QLoRA).")


class TrainConfig(_Strict):
    epochs: float = Field(2.0, gt=0, le=100, description="Passes over the training pool (2: small pools overfit beyond ~3).")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: use epochs).")
    batch_size: int = Field(8, ge=1, le=1024, description="Examples per device step (8: fits a CPU and any GPU for a 270M model).")
    grad_accum: int = Field(1, ge=1, le=1024, description="Steps accumulated per optimizer step (effective batch = batch_size x grad_accum).")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate, cosine decay (2e-4: the QLoRA default for LoRA adapters).")
    max_length: int = Field(256, ge=16, le=32768, description="Longest prompt + answer in tokens; longer ones are truncated.")
    packing: bool = Field(False, description="Pack several examples per sequence (best-fit); off: short classification "
                                             "examples waste little padding once grouped by length.")
    prompt_format: Literal["skill_template", "chat_template"] = Field(
        "skill_template", description="'skill_template': the skill's plain-text prompt (works for base models, the one "
                                      "consumers get in skill.json); 'chat_template': the base tokenizer's chat template "
                                      "(only for models that have one).")
    human_share: float = Field(0.3, ge=0.0, le=1.0, description="Least share of human examples in every epoch (1.0: humans only).")
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5, description="Share of the pool held out for validation (per source; "
                                                                  "sources with fewer than 10 examples keep all of theirs).")
    eval_steps: int | None = Field(None, ge=1, description="Validate every N steps (default: ~4 times a run, at least once an epoch).")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: eval_steps); with a validation "
                                                           "split it must be a multiple of eval_steps (the best one is kept).")
    early_stopping_patience: int = Field(3, ge=0, description="Stop after this many evaluations without a better eval loss (0: never).")
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="'auto': eager on CPU, flash_attention_2 on CUDA when installed, else sdpa.")
    answer_only_logits: bool = Field(True, description="LM-head logits only where the loss is taken (same loss, ~5x faster on CPU).")
    full_determinism: bool = Field(False, description="Deterministic torch kernels on CUDA too (slower there; CPU runs are "
                                                      "always deterministic).")
    seed: int = Field(0, description="Seed for python, numpy, torch, data order and the validation split.")

    @model_validator(mode="after")
    def _steps(self) -> "TrainConfig":
        if self.save_steps and self.eval_steps and self.save_steps % self.eval_steps:
            raise ValueError(f"student.train.save_steps ({self.save_steps}) must be a multiple of "
                             f"student.train.eval_steps ({self.eval_steps}) so the best checkpoint can be kept")
        return self


class StudentConfig(_Strict):
    base_model: str = Field("bundled:gemma-3-270m", description="Model id, local path, or bundled:gemma-3-270m.")
    quantization: Literal["nf4", "none"] = Field(
        "nf4", description="'nf4': QLoRA (4-bit base, double quantization; plain LoRA is used where bitsandbytes "
                           "cannot quantize, and the run record says so); 'none': plain LoRA on a full-precision base.")
    lora: LoraConfigModel = LoraConfigModel()
    train: TrainConfig = TrainConfig()


class TrafficColumns(_Strict):
    """Column names of a SQL traffic table (gates.replay.source: sql)."""

    id: str = Field("id", description="Unique request id.")
    request: str = Field("request", description="The request (text, or canonical JSON text for JSON skills).")
    reference: str = Field("reference", description="The reference answer (the large model's, or a person's correction).")
    accepted: str = Field("accepted", description="Whether the reference was accepted (boolean, or 0/1).")
    created_at: str = Field("created_at", description="When the request was served (orders 'recent').")
    reference_source: str | None = Field(None, description="Optional column: 'llm' or 'human'; unset: 'unknown'.")


class ReplayConfig(_Strict):
    source: str = Field("traffic.jsonl", description="Traffic log: a JSONL file inside the skill folder, or 'sql' for a table read through SQLAlchemy (url, table, columns).")
    url: str | None = Field(None, description="SQLAlchemy URL of the traffic database (source: sql); default sqlite:///<skill folder>/traffic.db.")
    table: str = Field("traffic", pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$", description="Traffic table (source: sql).")
    columns: TrafficColumns = Field(default_factory=TrafficColumns, description="Column names of the traffic table (source: sql).")
    sample: int = Field(40, ge=1, description="Requests replayed per run (sampled reproducibly).")
    recent: int | None = Field(1000, ge=1, description="Sample among the most recent N accepted requests (None: all of them).")
    seed: int = Field(0, ge=0, description="Seed of the replay sample (same seed, same traffic: same sample).")
    min_agreement: float = Field(0.4, ge=0.0, le=1.0, description="Least agreement with accepted references.")
    max_invalid_rate: float = Field(0.2, ge=0.0, le=1.0, description="Most outputs that do not parse.")
    max_p95_latency_s: float | None = Field(None, gt=0, description="Largest tolerated p95 latency per request in seconds (None: not gated).")


class GateConfig(_Strict):
    enforce_floor: bool = Field(True, description="False only in smoke runs: floors are measured and recorded but "
                                                  "do not block (smoke versions get the candidate alias, never production).")
    floor: dict[str, float] = Field(default_factory=lambda: {"primary": 0.4}, description="Absolute floors per metric (metric names of the task type: accuracy, macro_f1, field_f1, ast_accuracy, chrf ...; 'primary': the task type's primary metric).")
    margin: float = Field(0.02, ge=0.0, le=1.0, description="Largest tolerated drop against production: the lower bound of the paired confidence interval on (candidate - production) must lie above -margin. Size it to the eval set: with 100 items and a few disagreements the interval is about +-0.05.")
    metric: str | None = Field(None, description="Per-item metric compared against production (default: the task type's primary metric).")
    ci_method: Literal["auto", "bootstrap", "mcnemar"] = Field("auto", description="Paired interval: exact McNemar (conditional binomial) for pass/fail metrics, paired bootstrap otherwise ('auto').")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of the paired interval (two-sided).")
    resamples: int = Field(2000, ge=100, le=100_000, description="Paired bootstrap resamples.")
    seed: int = Field(0, ge=0, description="Bootstrap seed: the same data gives the same decision.")
    slice_floor: dict[str, float] = Field(default_factory=dict, description="Absolute floor per label/slice on its recall (classification) or primary metric; '*' applies to every slice.")
    slice_max_drop: dict[str, float] = Field(default_factory=dict, description="Largest tolerated drop per label/slice against production; '*' applies to every slice.")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="Longest answer generated in evaluation (default: 8 for classification, 160 otherwise).")
    eval_limit: int | None = Field(None, ge=1, description="Score only the first N eval items (smoke runs).")
    publish_alias: Literal["production", "candidate"] = Field(
        "production", description="Alias a version that passes every gate gets; smoke runs publish as candidate.")
    replay: ReplayConfig = ReplayConfig()


class RoutingConfig(_Strict):
    target_error_rate: float = Field(0.05, gt=0.0, lt=1.0, description="Largest error rate tolerated on the requests the adapter keeps; below the confidence threshold that achieves it, requests escalate to the large model.")


class ScheduleConfig(_Strict):
    cron: str | None = None


class SkillConfig(_Strict):
    name: str = Field(description="The skill's name: the folder name under seeds/ (lowercase letters, digits, '-').")
    task: TaskType = Field(description="classification | extraction | function_call | generation.")
    instruction: str = Field(min_length=1, description="The first line of every prompt: what the model must do.")
    input_name: str = Field("Input", min_length=1, description="Label before the input in prompts.")
    output_name: str = Field("Output", min_length=1, description="Label before the answer in prompts.")
    labels: list[str] = Field(default_factory=list, description="The answers a classification skill may give (2 or more); "
                                                                "other task types have none.")
    output_schema: dict[str, Any] | None = Field(
        None, description="JSON Schema (Draft 2020-12) of the answer: required for extraction (an object schema), "
                          "optional for generation (then answers are JSON), absent for the other task types.")
    teacher: TeacherConfig = Field(TeacherConfig(), description="The large model that writes new inputs and answers them.")
    expansion: ExpansionConfig = Field(ExpansionConfig(), description="How many new examples each run asks for, and how.")
    audit: AuditConfig = Field(AuditConfig(), description="The teacher audit on the seeds: its score per option, and the floor it must reach.")
    filters: FilterConfig = Field(FilterConfig(), description="Quality, dedup and eval-contamination filters on teacher data.")
    student: StudentConfig = Field(StudentConfig(), description="The small model fine-tuned per skill (QLoRA).")
    gates: GateConfig = Field(GateConfig(), description="When a new adapter may replace production: eval-set and traffic-replay gates.")
    schedule: ScheduleConfig = Field(ScheduleConfig(), description="When the pipeline runs on its own.")
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="What the router needs: the error rate to hold on kept requests.")
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Named overrides, e.g. smoke.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        problem = skill_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("input_name", "output_name")
    @classmethod
    def _prompt_label(cls, v: str) -> str:
        if "\n" in v or ":" in v:
            raise ValueError("one line without ':' (it is written as 'NAME: ...' in prompts)")
        return v

    @field_validator("output_schema")
    @classmethod
    def _schema(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        problem = None if v is None else structured.schema_problem(v)
        if problem:
            raise ValueError(f"{problem}; fix the schema (https://json-schema.org/draft/2020-12)")
        return v

    @model_validator(mode="after")
    def _per_task(self) -> "SkillConfig":
        problems = []  # every cross-key problem in one message
        if self.task == "classification":
            if len(self.labels) < 2:
                problems.append("labels: a classification skill needs at least 2 labels")
            if len(set(self.labels)) != len(self.labels):
                problems.append("labels: duplicate label")
            if any(not lab.strip() or lab != lab.strip() or "\n" in lab for lab in self.labels):
                problems.append("labels: each label is a non-empty single line without surrounding spaces")
        elif self.labels:
            problems.append(f"labels: only classification skills have labels; remove the key (task is {self.task})")
        if self.task == "extraction":
            if self.output_schema is None:
                problems.append("output_schema: an extraction skill needs the JSON Schema of its answer object")
            elif self.output_schema.get("type") != "object":
                problems.append("output_schema: an extraction answer is a JSON object; set `type: object`")
        elif self.task in ("classification", "function_call") and self.output_schema is not None:
            problems.append(f"output_schema: not used by {self.task} skills; remove the key")
        if self.task == "classification" and "strategies" not in self.expansion.model_fields_set:
            # A closed label set is scored, not sampled: every answer is a label, with a probability.
            self.expansion.strategies = [s if s != "label" else "score" for s in self.expansion.strategies]
        if self.filters.target_precision is not None and not set(self.expansion.strategies) & {"score",
                                                                                              "self_consistency"}:
            problems.append("filters.target_precision: per-label thresholds need a confidence on every teacher "
                            "answer; use the score (classification) or self_consistency answerer in "
                            "expansion.strategies, or remove filters.target_precision")
        if "score" in self.expansion.strategies:
            if self.task != "classification":
                problems.append(f"expansion.strategies: score ranks a closed label set (classification); use label "
                                f"or self_consistency for {self.task}")
            if self.teacher.endpoint == "chat" and self.teacher.score_method == "echo":
                problems.append("teacher.score_method: echo needs prompt logprobs, which chat endpoints do not return; "
                                "use score_method first_token (or auto), or teacher.endpoint: completions")
        if self.filters.max_label_distance is not None and self.task != "classification":
            problems.append("filters.max_label_distance: only classification skills have labels; remove the key")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# Built-in profiles, deep-merged over the skill file; a skill may redefine them under `profiles:`.
BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    # smoke: the whole pipeline on real parts in a few minutes (fewer items, a few training steps).
    "smoke": {
        "expansion": {"target_examples": 8},
        "teacher": {"few_shot": 5, "style_shots": 3, "batch_size": 8, "max_new_tokens": 48, "calibration_shot_sets": 2},
        "audit": {"max_items": 20, "folds": 4},
        "student": {"train": {"max_steps": 4, "batch_size": 4, "eval_steps": 4}},
        # Loose gates so the publish path runs too; the version gets the `candidate` alias,
        # never `production`, so a smoke adapter is never served nor used as the champion.
        "gates": {"eval_limit": 16, "replay": {"sample": 8, "min_agreement": 0.0, "max_invalid_rate": 1.0},
                  "enforce_floor": False, "margin": 1.0, "publish_alias": "candidate"},
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


def skill_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a skill name, or None."""
    if not isinstance(name, str) or not SKILL_NAME_RE.match(name):
        return (f"skill name {name!r} is not allowed: use 1-64 lowercase letters, digits and '-', "
                f"starting with a letter or digit (e.g. ticket-triage)")
    return None


def check_skill_name(name: Any) -> str:
    """`name` if it is a valid skill name, else SkillError. Call it before using a name in a path."""
    problem = skill_name_problem(name)
    if problem:
        raise SkillError(problem)
    return name


def skill_dir(root: str | Path, name: str) -> Path:
    """`root/name` for a valid skill name, checked to resolve inside `root` (no symlink escapes)."""
    check_skill_name(name)
    base = Path(root).resolve()
    folder = (base / name).resolve()
    if folder.parent != base:
        raise SkillError(f"skill {name!r}: {base / name} resolves to {folder}, outside {base}; remove the link")
    return folder


def seeds_root() -> Path:
    """Where skill folders live: $DISTILL_SEEDS_DIR, else ./seeds."""
    return Path(os.environ.get("DISTILL_SEEDS_DIR", "seeds")).resolve()


def list_skills(root: Path | None = None) -> list[str]:
    """Names of the skill folders (valid name, with a skill.yaml) under root."""
    root = root or seeds_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not skill_name_problem(p.name) and (p / "skill.yaml").is_file())


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


# load_examples' `kind`: which file it reads. Eval answers of function_call skills list the
# acceptable values per argument (BFCL style); seeds give one concrete call.
EXAMPLE_KINDS = {"seeds": "seeds", "eval": "eval", "eval set": "eval"}
_MAX_LISTED = 20  # problems listed in one exception; `distill skills` lists them all


def _json_lines(path: Path):
    """(line number, object or None, problem or None) for each non-blank line; never stops early."""
    with path.open(encoding="utf-8") as f:
        yield from parse_jsonl_lines(f)


def _json_text(cfg: SkillConfig, value: Any, key: str, json_ok: bool) -> tuple[str | None, str | None]:
    """A JSONL field as the Example's text: canonical JSON for objects (contract), stripped
    text otherwise. Returns (text, problem)."""
    if isinstance(value, str):
        if not value.strip():
            return None, f"'{key}' must not be empty"
        if json_ok:
            try:  # a JSON object written as a string is accepted and canonicalized
                return structured.canonical_json(json.loads(value)), None
            except ValueError:
                return value, None  # the per-task check reports invalid_json
        return value.strip(), None
    if json_ok and isinstance(value, (dict, list)):
        return structured.canonical_json(value), None
    want = "a JSON object or a string" if json_ok else "a non-empty string"
    return None, f"'{key}' must be {want} for a {cfg.task} skill, got {type(value).__name__}"


def _json_fields(cfg: SkillConfig) -> tuple[bool, bool]:
    """Whether (input, output) of this task type are JSON."""
    from core.prompting import is_json_task  # core.prompting imports this module

    return cfg.task == "function_call", is_json_task(cfg)


def _check_pair(cfg: SkillConfig, input: str, output: str, kind: str) -> str | None:
    """The per-task check of one example; a message, or None."""
    from core import prompting  # core.prompting imports this module

    bad = prompting.input_problem(cfg, input)
    if bad:
        return f"input: {bad[0]}: {bad[1]}"
    if cfg.task == "classification":
        return None if output in cfg.labels else f"output {output!r} is not one of the labels {cfg.labels}"
    if cfg.task == "function_call" and kind == "eval":
        obj = structured.loads_object(output)
        bad = ("invalid_json", "not a JSON object") if obj is None else \
            structured.check_acceptable_call(obj, structured.loads_object(input))
    else:
        bad = prompting.output_problem(cfg, output, input)
    return f"output: {bad[0]}: {bad[1]}" if bad else None


def scan_examples(path: Path, cfg: SkillConfig, kind: str) -> tuple[list[tuple[int, Example]], list[str]]:
    """Every valid example with its line number, and every problem as 'file:line: what'."""
    if kind not in EXAMPLE_KINDS:
        raise ValueError(f"kind must be one of {sorted(EXAMPLE_KINDS)}, got {kind!r}")
    kind = EXAMPLE_KINDS[kind]
    json_in, json_out = _json_fields(cfg)
    good: list[tuple[int, Example]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for lineno, obj, problem in _json_lines(path):
        where = f"{path}:{lineno}"
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        unknown = set(obj) - {"id", "input", "output", "meta"}
        if unknown:
            problems.append(f"{where}: unknown key(s) {sorted(unknown)}; allowed: id, input, output, meta")
            continue
        missing = [k for k in ("id", "input", "output") if k not in obj]
        if missing:
            problems.append(f"{where}: missing key(s) {missing}")
            continue
        if not isinstance(obj["id"], str) or not obj["id"].strip():
            problems.append(f"{where}: 'id' must be a non-empty string")
            continue
        if obj["id"] in seen:
            problems.append(f"{where}: duplicate id {obj['id']!r} (first on line {seen[obj['id']]})")
            continue
        seen[obj["id"]] = lineno
        if not isinstance(obj.get("meta", {}), dict):
            problems.append(f"{where}: 'meta' must be a JSON object")
            continue
        input, bad_in = _json_text(cfg, obj["input"], "input", json_in)
        output, bad_out = _json_text(cfg, obj["output"], "output", json_out)
        bad = bad_in or bad_out or _check_pair(cfg, input, output, kind)
        if bad:
            problems.append(f"{where}: {bad}")
            continue
        good.append((lineno, Example(id=obj["id"], skill=cfg.name, input=input, output=output,
                                     source="human", meta=obj.get("meta") or {})))
    if not good and not problems:
        problems.append(f"{path}: no examples (write one JSON object per line: {{\"id\", \"input\", \"output\"}})")
    return good, problems


def _raise(problems: list[str]) -> None:
    if problems:
        more = len(problems) - _MAX_LISTED
        lines = problems[:_MAX_LISTED] + ([f"... and {more} more (`distill skills` lists every problem)"] if more > 0 else [])
        raise DataError("\n".join(lines))


def load_examples(path: Path, cfg: SkillConfig, kind: str) -> list[Example]:
    """Load human-written examples ({"id", "input", "output"}) with per-line checks.

    `kind` is "seeds" or "eval" ("eval set" too). `input`/`output` may be JSON objects
    for JSON task types; they are stored as canonical JSON text. Every problem found is
    reported at once, each with file and line."""
    if not path.is_file():
        raise SkillError(f"{path}: missing {'eval set' if EXAMPLE_KINDS.get(kind) == 'eval' else kind} "
                         f"file for skill {cfg.name}")
    good, problems = scan_examples(path, cfg, kind)
    _raise(problems)
    return [e for _, e in good]


def input_key(cfg: SkillConfig, input: str) -> str:
    """The normalized text two inputs are compared by (seeds/eval overlap): the request
    for function calls (the same request with other tools is still the same item)."""
    if cfg.task == "function_call":
        obj = structured.loads_object(input)
        if obj and isinstance(obj.get("request"), str):
            input = obj["request"]
    return " ".join(input.lower().split())


def _cross_problems(cfg: SkillConfig, seeds: list[tuple[int, Example]], seeds_path: Path,
                    evals: list[tuple[int, Example]], eval_path: Path) -> list[str]:
    """Eval items whose input or id also appears in the seeds."""
    by_key = {input_key(cfg, e.input): n for n, e in seeds}
    by_id = {e.id: n for n, e in seeds}
    out = []
    for n, e in evals:
        if e.id in by_id:
            out.append(f"{eval_path}:{n}: id {e.id!r} is also used in {seeds_path}:{by_id[e.id]}")
        k = input_key(cfg, e.input)
        if k in by_key:
            out.append(f"{eval_path}:{n}: input also in {seeds_path}:{by_key[k]}; "
                       f"an eval item must not be a seed (it would be trained on)")
    return out


def load_skill(name: str, profile: str = "default", root: Path | None = None) -> Skill:
    root = root or seeds_root()
    folder = skill_dir(root, name)
    if not (folder / "skill.yaml").is_file():
        known = list_skills(root)
        raise SkillError(f"unknown skill {name!r}: no {folder}/skill.yaml (skills found: {', '.join(known) or 'none'})")
    cfg = load_config(folder, profile)
    paths = {kind: folder / f for kind, f in (("seeds", "seeds.jsonl"), ("eval", "eval.jsonl"))}
    for kind, path in paths.items():
        if not path.is_file():
            raise SkillError(f"{path}: missing {'eval set' if kind == 'eval' else kind} file for skill {cfg.name}")
    seeds, p1 = scan_examples(paths["seeds"], cfg, "seeds")
    evals, p2 = scan_examples(paths["eval"], cfg, "eval")
    _raise(p1 + p2 + _cross_problems(cfg, seeds, paths["seeds"], evals, paths["eval"]))
    return Skill(config=cfg, folder=folder, profile=profile, seeds=[e for _, e in seeds],
                 eval_set=[e for _, e in evals])


def scan_traffic(path: Path, cfg: SkillConfig) -> tuple[int, list[str]]:
    """Check a JSONL traffic log line by line: (number of good lines, problems).
    Rejected references (accepted: false) may be wrong answers, so only accepted ones
    are checked against the task."""
    from core import prompting  # core.prompting imports this module

    json_in, json_out = _json_fields(cfg)
    count, problems, seen = 0, [], {}
    for lineno, obj, problem in _json_lines(path):
        where = f"{path}:{lineno}"
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        bad = next((f"'{k}' must be a non-empty string" for k in ("id", "timestamp", "reference_source")
                    if not isinstance(obj.get(k), str) or not obj[k].strip()), None)
        if bad is None and obj["reference_source"] not in ("llm", "human"):
            bad = "'reference_source' must be 'llm' or 'human'"
        if bad is None and not isinstance(obj.get("accepted"), bool):
            bad = "'accepted' must be true or false"
        if bad is None and obj["id"] in seen:
            bad = f"duplicate id {obj['id']!r} (first on line {seen[obj['id']]})"
        request = reference = None
        if bad is None:
            seen[obj["id"]] = lineno
            request, bad = _json_text(cfg, obj.get("request"), "request", json_in)
        if bad is None:
            reference, bad = _json_text(cfg, obj.get("reference"), "reference", json_out)
        if bad is None:
            p = prompting.input_problem(cfg, request)
            bad = f"request: {p[0]}: {p[1]}" if p else None
        if bad is None and obj["accepted"]:
            p = prompting.output_problem(cfg, reference, request)
            bad = f"reference: {p[0]}: {p[1]}" if p else None
        if bad:
            problems.append(f"{where}: {bad}")
        else:
            count += 1
    return count, problems


@dataclass
class SkillReport:
    """What `validate_all` found for one skill folder."""

    name: str
    folder: Path
    task: str | None = None
    counts: dict[str, int | str] = field(default_factory=dict)  # seeds, eval, traffic
    schedule: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_all(root: Path | None = None) -> list[SkillReport]:
    """Check every skill folder under root and collect ALL problems (file and line for
    data): the skill file and its profiles, labels and schemas, every seeds/eval/traffic
    line, duplicate ids, and eval items that repeat a seed. Never raises for bad data."""
    root = Path(root or seeds_root())
    reports = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))) \
        if root.is_dir() else []
    for folder in folders:
        rep = SkillReport(name=folder.name, folder=folder)
        reports.append(rep)
        bad_name = skill_name_problem(folder.name)
        if bad_name:
            rep.problems.append(f"{folder}: {bad_name}; rename the folder and `name:`")
        if not (folder / "skill.yaml").is_file():
            rep.problems.append(f"{folder}: no skill.yaml (start one with `distill new-skill NAME --type TASK`)")
            continue
        try:
            cfg = load_config(folder)
        except SkillError as e:
            rep.problems.append(str(e))
            continue
        rep.task, rep.schedule = cfg.task, cfg.schedule.cron
        for profile in sorted(set(BUILTIN_PROFILES) | set(cfg.profiles)):
            try:
                load_config(folder, profile)
            except SkillError as e:
                rep.problems.append(f"profile {profile}: {e}")
        scanned = {}
        for kind, fname in (("seeds", "seeds.jsonl"), ("eval", "eval.jsonl")):
            path = folder / fname
            if not path.is_file():
                rep.problems.append(f"{path}: missing (an empty file is not enough: it needs examples)")
                continue
            good, problems = scan_examples(path, cfg, kind)
            scanned[kind] = (path, good)
            rep.counts[kind] = len(good)
            rep.problems += problems
        if len(scanned) == 2:
            rep.problems += _cross_problems(cfg, scanned["seeds"][1], scanned["seeds"][0],
                                            scanned["eval"][1], scanned["eval"][0])
        source = cfg.gates.replay.source
        if source == "sql":
            rep.counts["traffic"] = "sql"
        elif not (folder / source).is_file():
            rep.problems.append(f"{folder / source}: missing traffic log (gates.replay.source)")
        else:
            rep.counts["traffic"], problems = scan_traffic(folder / source, cfg)
            rep.problems += problems
    return reports


# ---- `distill new-skill`: a commented skill.yaml and empty data files -------------------

# Per task type: prompt labels, the instruction, and a placeholder answer format.
_NEW_SKILL: dict[str, dict[str, Any]] = {
    "classification": {
        "instruction": "Classify the input into exactly one of the labels.",
        "input_name": "Input", "output_name": "Label", "labels": ["label_a", "label_b"],
        "floor": {"accuracy": 0.4},
        "example": {"id": "seed-001", "input": "the text to classify", "output": "label_a"},
        "eval_example": None,
    },
    "extraction": {
        "instruction": "Extract the fields from the text as one JSON object; use null for what is not mentioned.",
        "input_name": "Text", "output_name": "JSON",
        "output_schema": {"type": "object",
                          "properties": {"person": {"type": ["string", "null"]},
                                         "date": {"type": ["string", "null"], "description": "YYYY-MM-DD"},
                                         "amount": {"type": ["number", "null"]}},
                          "required": ["person", "date", "amount"], "additionalProperties": False},
        "floor": {"field_f1": 0.3},
        "example": {"id": "seed-001", "input": "Ana paid 40 EUR on 2025-03-02.",
                    "output": {"person": "Ana", "date": "2025-03-02", "amount": 40}},
        "eval_example": None,
    },
    "function_call": {
        "instruction": 'Call one of the functions to answer the request. Reply with one JSON object: '
                       '{"name": ..., "arguments": {...}}.',
        "input_name": "Request", "output_name": "Call",
        "floor": {"ast_accuracy": 0.3},
        "max_length": 512,  # tool definitions make prompts a few hundred tokens long
        "example": {"id": "seed-001", "input": {"request": "Weather in Oslo in celsius?", "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city.",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}]},
            "output": {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}},
        "eval_example": {"name": "get_weather", "arguments": {"city": ["Oslo", "Oslo, Norway"], "unit": ["celsius"]}},
    },
    "generation": {
        "instruction": "Rewrite the input as one short, polite sentence.",
        "input_name": "Input", "output_name": "Output",
        "floor": {"chrf": 0.3},
        "example": {"id": "seed-001", "input": "send me the report now", "output": "Could you send me the report, please?"},
        "eval_example": None,
    },
}

# Comments for keys whose config class has no description.
_FALLBACK_COMMENTS = {
    "cron": "Cron expression for scheduled runs, e.g. \"0 3 * * *\" (null: manual runs only).",
}


def _flow(value: Any) -> str:
    # PyYAML, not json.dumps: YAML 1.1 reads a JSON float such as 1e-05 as a string.
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip().removesuffix("\n...").strip()


def _comment(text: str, pad: str) -> list[str]:
    import textwrap

    return [f"{pad}# {line}" for line in textwrap.wrap(" ".join(text.split()), 96 - len(pad))]


def _emit(model: BaseModel, pad: str) -> list[str]:
    """Every field of a config block with its default value and description as a comment."""
    lines: list[str] = []
    values = model.model_dump(mode="json")
    for key, info in type(model).model_fields.items():
        desc = info.description or _FALLBACK_COMMENTS.get(key)
        lines += _comment(desc, pad) if desc else []
        sub = getattr(model, key)
        if isinstance(sub, BaseModel):
            lines.append(f"{pad}{key}:")
            lines += _emit(sub, pad + "  ")
        else:
            lines.append(f"{pad}{key}: {_flow(values[key])}")
    return lines


def skill_template(name: str, task: str) -> str:
    """The text of a new skill.yaml: every key with its value and what it means."""
    check_skill_name(name)
    if task not in _NEW_SKILL:
        raise SkillError(f"unknown task type {task!r}; choose one of: {', '.join(TASK_TYPES)}")
    spec = _NEW_SKILL[task]
    raw: dict[str, Any] = {"name": name, "task": task, "instruction": spec["instruction"],
                           "input_name": spec["input_name"], "output_name": spec["output_name"]}
    for key in ("labels", "output_schema"):
        if key in spec:
            raw[key] = spec[key]
    raw["gates"] = {"floor": spec["floor"]}
    if "max_length" in spec:
        raw["student"] = {"train": {"max_length": spec["max_length"]}}
    cfg = SkillConfig.model_validate(raw)  # the file written must load back to this config
    example = json.dumps(spec["example"], ensure_ascii=False)
    lines = [
        f"# Skill {name!r} ({task}). Every key is listed with its default and what it means; delete a",
        "# block to take the defaults (they live in core/skills.py). Check with `distill skills`, then",
        f"# `distill run {name} --profile smoke` for a quick end-to-end run.",
        "#",
        "# Data files next to this one, JSON lines, one example per line:",
        "#   seeds.jsonl    human-written examples (the teacher imitates them, the student trains on them):",
        f"#                  {example}",
        "#   eval.jsonl     the frozen regression set, same form; never trained on, no input shared with seeds",
    ]
    if spec["eval_example"] is not None:
        lines += ["#                  whose output lists every acceptable value per argument (\"\" = may be omitted):",
                  f"#                  \"output\": {structured.canonical_json(spec['eval_example'])}"]
    lines += [
        "#   traffic.jsonl  live requests with the reference answer, replayed by the gate:",
        '#                  {"id", "timestamp", "request", "reference", "reference_source": "llm"|"human", "accepted": true|false}',
        "",
    ]
    values = cfg.model_dump(mode="json")
    for key, info in SkillConfig.model_fields.items():
        if key in ("labels", "output_schema") and key not in raw:
            continue  # not used by this task type (the validator refuses them)
        if key == "profiles":
            lines += [""] + _comment(info.description or "", "")
            lines += ["# Built in: `smoke` (few items, a few training steps, publishes as candidate only).",
                      "# Example: profiles: {quick: {expansion: {target_examples: 16}}}", "profiles: {}"]
            continue
        sub = getattr(cfg, key)
        desc = info.description or _FALLBACK_COMMENTS.get(key, "")
        if isinstance(sub, BaseModel):
            lines += [""] + (_comment(desc, "") if desc else []) + [f"{key}:"] + _emit(sub, "  ")
        elif key == "output_schema":
            schema = yaml.safe_dump({key: values[key]}, sort_keys=False, default_flow_style=None, width=100).rstrip()
            lines += _comment(desc, "") + schema.splitlines()
        else:
            lines += _comment(desc, "") + [f"{key}: {_flow(values[key])}"]
    return "\n".join(lines) + "\n"


def create_skill(name: str, task: str, root: Path | None = None) -> Path:
    """Write root/NAME/ with a commented skill.yaml and empty seeds/eval/traffic files.
    Refuses a bad name, an unknown task type or an existing folder (SkillError)."""
    root = Path(root or seeds_root())
    folder = skill_dir(root, name)
    text = skill_template(name, task)
    if folder.exists():
        raise SkillError(f"{folder} already exists; choose another name or edit that skill")
    root.mkdir(parents=True, exist_ok=True)
    folder.mkdir()
    (folder / "skill.yaml").write_text(text, encoding="utf-8")
    for fname in ("seeds.jsonl", "eval.jsonl", "traffic.jsonl"):
        (folder / fname).touch()
    return folder
