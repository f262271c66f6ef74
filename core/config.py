"""The skill file's schema: one pydantic model per block, each field with its default and help.

Defaults live here, each with a one-line why. Cross-key rules that depend on the task type are
asked of the task type (core/tasks/); everything else is checked here. Loading and validating a
skill's files is core/skills.py; `distill new-skill`'s scaffolding is core/scaffold.py.
"""

from __future__ import annotations

import copy
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core import structured
from core.names import NameRule

# Lowercase letters, digits and dashes: a name is a path component in seeds/, the work dir
# and the registry, so it can never hold '/', '..', a drive or a hidden-file dot. Whole string
# (NameRule: fullmatch), so "ticket-triage\n" is refused too.
SKILL_NAME = NameRule(r"[a-z0-9][a-z0-9-]{0,63}", "1-64 lowercase letters, digits and '-', starting with a letter "
                                                   "or digit (e.g. ticket-triage)")
SKILL_NAME_RE = SKILL_NAME.regex  # ends in \Z: .match and .fullmatch both take the whole string


class SkillError(ValueError):
    """A skill cannot be loaded; the message says what to fix."""


def skill_name_problem(name: Any) -> str | None:
    """Why `name` cannot be a skill name, or None."""
    return SKILL_NAME.problem("skill name", name)


def check_skill_name(name: Any) -> str:
    """`name` if it is a valid skill name, else SkillError. Call it before using a name in a path."""
    problem = skill_name_problem(name)
    if problem:
        raise SkillError(problem)
    return name



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
        "auto", description="How a local teacher is served. auto (= transformers): in-process, batched; llama_cpp: llama-cpp-python's server, bundled:gemma-3-270m only (its GGUF). transformers was faster on both CPUs measured: 1.6x new inputs and 2.3x labels with AVX512-BF16/AMX, 4.2-5.9x label scores and 0.82-0.84x new inputs on an AVX2-only EPYC (two runs), where a run sends about twice as many score requests as new-input ones (benchmarks/teacher_backends.py).")
    structured_output: bool | Literal["auto"] = Field(
        "auto", description="Send the skill's output schema as response_format: true, false, or auto = only on the chat endpoint (completions servers vary). Answers are validated locally either way.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout for HTTP teachers.")
    max_in_flight: int = Field(16, ge=1, le=1024, description="Most HTTP requests in flight; the adaptive limit (cut on throttling, +1 per limit-worth of successes) stays below it.")
    limit_decrease: float = Field(0.75, gt=0.0, lt=1.0, description="Factor the in-flight limit is multiplied by when the endpoint throttles (429, or 503 with Retry-After); 0.75 kept more throughput than 0.5 under random faults and under a rate limit (docs/teachers.md, benchmarks/teacher_throughput.py).")
    throttle_tolerance: float = Field(0.1, ge=0.0, lt=1.0, description="Share of one window's answers that may be 429s before the limit is cut (0: cut on the first 429). Sporadic 429s of a shared endpoint then do not collapse the limit.")
    rpm: int | None = Field(None, ge=1, description="Requests-per-minute budget enforced by the client (None: no budget).")
    tpm: int | None = Field(None, ge=1, description="Tokens-per-minute budget (prompt + completion) enforced by the client (None: no budget).")
    max_retries: int = Field(4, ge=0, le=20, description="Retries per request on 429, 5xx, timeouts and broken connections (exponential backoff with jitter).")
    backoff_base_s: float = Field(0.5, gt=0, le=60, description="First retry waits about this long (x0.5-1.5 jitter), doubling each time.")
    backoff_max_s: float = Field(30.0, gt=0, le=600, description="Longest wait between retries (Retry-After may ask for more).")
    max_retry_wait_s: float = Field(120.0, gt=0, le=3600, description="Longest wait a server's Retry-After / retry-after-ms may impose; a hint that is not RFC 9110 delay-seconds (ASCII digits) or an HTTP-date (e.g. 1e9, 5.0, -1) is ignored (backoff instead).")
    max_error_rate: float = Field(0.2, ge=0.0, le=1.0, description="Stop the run (TeacherErrorRateExceeded) when more requests than this share fail after retries.")
    error_rate_min_requests: int = Field(20, ge=1, description="Finished requests before the error rate is checked mid-run (it is always checked at the end).")
    invalid_retries: int = Field(2, ge=0, le=10, description="Re-asks of an answer that does not parse or fails the output schema before it is dropped.")
    retry_temperature: float = Field(0.7, ge=0.0, le=2.0, description="Least temperature of a re-ask (a greedy re-ask would repeat the same answer).")
    answer_max_tokens: int | None = Field(None, ge=1, le=4096, description="Longest answer when labeling, in tokens; None: 8 for classification (one label), 24 multi_label, 256 otherwise, raised to hold the longest answer the grammar allows (core/answer_cap.py). A smaller value is refused naming the answer it would cut.")
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
    target_examples: Annotated[int, Field(ge=0, le=100_000)] | Literal["auto"] = Field(64, description="New inputs the teacher writes per run (self_instruct); auto: the size measured best for the task type, scaled with the label count (core/config.py auto_target_examples: 192 for ticket-triage's 5 labels, where 64 scored 0.56 and 128 0.70 against 0.74).")
    inputs_per_request: int = Field(1, ge=1, le=32, description="New inputs self_instruct asks for in one request (the style shots are read once for all of them; the Alpaca recipe asked for 20 per call); each line is checked on its own, a cut last line is dropped. Inputs with new functions (function_call) stay one per request.")
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
    floor: Annotated[float, Field(ge=0.0, le=1.0)] | Literal["auto"] | None = Field(
        None, description="Least audit score, on the skill's primary metric (accuracy, field_f1, ast_accuracy or chrf), needed to expand; below it the run refuses the teacher's data (audit.on_fail) with the reason in decision.json. None: no floor. auto: from the task (core/config.py auto_audit_floor): 2.5x chance for a label set (at most halfway from chance to 1), else the gates' floor on the primary metric.")
    max_items: int | None = Field(None, ge=2, description="Audit at most this many seeds (stratified sample): bounds teacher cost on big seed sets.")
    on_fail: Literal["stop", "skip_expansion"] = Field(
        "stop", description="Below the floor: stop the run before expansion (nothing trained or published), or skip_expansion: train on the seeds, the accepted pool and new traffic without this run's teacher data (the gates still decide). stop is the default: seeds alone trained a 0.32 student on ticket-triage (chance 0.20, its gate floor 0.35; 0.62-0.84 with teacher data), so a seeds-only run costs a training and is rejected.")


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
    threshold_min_support: int = Field(0, ge=0, description="Hard floor: a label's own audit answers at or above its threshold needed before it is trusted (0: none, the shrinkage below decides).")
    threshold_shrinkage: float = Field(5.0, ge=0.0, description="Pseudo-answers of the pooled audit precision added to each label's own when estimating its precision at a threshold (empirical-Bayes shrinkage): a label with few audit answers borrows the pooled rate instead of losing all its teacher examples. 0: each label on its own answers only.")
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
    distillation: Literal["hard", "soft", "mixed"] = Field(
        "hard", description="What a teacher-labelled classification example trains on: hard (its label, cross-entropy), "
                            "soft (the teacher's label distribution, meta.label_probs: KL to the student's own label "
                            "distribution, Hinton et al. 2015) or mixed ((1 - distill_alpha) x hard + distill_alpha x soft). "
                            "Human seeds and examples without label_probs always train on their label.")
    distill_alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the soft loss in 'mixed' (0.5: Hinton et al.'s "
                                                                   "equal weighting of the two terms).")
    distill_temperature: float = Field(2.0, gt=0.0, le=20.0, description="Temperature both distributions are softened "
                                                                          "with in the soft loss (the loss is scaled by T^2 "
                                                                          "so gradients keep their size; 2: a common choice).")
    rejected_runs: Literal["hold", "admit"] = Field(
        "hold", description="What a run the gates rejected leaves behind: hold (its accepted examples are kept apart in "
                            "<work dir>/pool/<skill>/held/<run id>.jsonl with the reason, and neither join the pool nor "
                            "the dedup index, so they never train later runs) or admit (they join the pool anyway).")
    readmit_held: bool = Field(
        False, description="Also train on the examples held from earlier rejected runs (<work dir>/pool/<skill>/held/; "
                           "whole batches, newest first, at most max_pool_examples examples). If this run is promoted, "
                           "its gates measured a model trained with them, so they join the "
                           "pool and the dedup index and leave held/; if it is rejected, they stay held.")
    max_pool_examples: int | None = Field(
        2000, ge=1, description="Most pooled (non-seed) examples a run trains on besides its own new ones: the newest "
                                "by created_at, so run 50 does not train on 50 runs of data (None: the whole pool). "
                                "Seeds always train.")
    pool_sampling: Literal["newest", "uniform"] = Field(
        "newest", description="Which pooled examples train when the pool is over max_pool_examples: newest (by "
                              "created_at: the data follows the latest teacher, filters and traffic) or uniform (a "
                              "seeded random sample: every earlier run keeps its share). benchmarks/pool_cap.py.")
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5, description="Share of the pool held out for validation (per source; "
                                                                  "sources with fewer than 10 examples keep all of theirs).")
    eval_steps: int | None = Field(None, ge=1, description="Validate every N steps (default: ~4 times a run, at least once an epoch).")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps (default: eval_steps); with a validation "
                                                           "split it must be a multiple of eval_steps (the best one is kept).")
    checkpoint_selection: Literal["eval_loss", "token_accuracy", "last"] = Field(
        "eval_loss", description="Which checkpoint becomes the adapter: eval_loss (lowest validation loss), "
                                 "token_accuracy (highest share of validation answer tokens the model ranks first, "
                                 "trl's eval_mean_token_accuracy: for a one-token label, greedy label accuracy; "
                                 "ties keep the earlier checkpoint) or last (a fixed schedule: no selection and no "
                                 "early stopping; the validation split is still scored for the loss curve).")
    checkpoint_tolerance: float = Field(0.0, ge=0.0, le=10.0, description="With checkpoint_selection eval_loss: the latest "
                                        "checkpoint whose validation loss is within this many nats per answer token "
                                        "of the lowest becomes the adapter (0: the lowest), so noise on a small "
                                        "validation split does not undo later training.")
    keep_checkpoints: bool = Field(False, description="Keep every evaluated checkpoint in <run>/train/checkpoints after "
                                                      "training (False: only the adapter's and the last, to resume); "
                                                      "for comparing selection rules afterwards.")
    early_stopping_patience: int = Field(3, ge=0, description="Stop after this many evaluations without a better "
                                                              "selection metric (0: never; unused with last).")
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
        if self.checkpoint_tolerance > 0 and self.checkpoint_selection != "eval_loss":
            raise ValueError(f"student.train.checkpoint_tolerance ({self.checkpoint_tolerance}) applies to "
                             f"checkpoint_selection eval_loss only (it is {self.checkpoint_selection!r}): set "
                             f"checkpoint_selection: eval_loss or remove checkpoint_tolerance")
        return self


class StudentConfig(_Strict):
    base_model: str = Field("bundled:gemma-3-270m", description="Model id, local path, or bundled:gemma-3-270m.")
    quantization: Literal["nf4", "none"] = Field(
        "nf4", description="'nf4': QLoRA (4-bit base, double quantization; plain LoRA is used where bitsandbytes "
                           "cannot quantize, and the run record says so); 'none': plain LoRA on a full-precision base.")
    lora: LoraConfigModel = LoraConfigModel()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _servable(self) -> "StudentConfig":
        from core.lora_serving import target_modules_problem

        problem = target_modules_problem(self.lora.target_modules, self.lora.r)
        if problem:
            raise ValueError(f"student.lora.{problem}")
        return self


class TrafficColumns(_Strict):
    """Column names of a SQL traffic table (gates.replay.source: sql)."""

    id: str = Field("id", description="Unique request id.")
    request: str = Field("request", description="The request (text, or canonical JSON text for JSON skills).")
    reference: str = Field("reference", description="The reference answer (the large model's, or a person's correction).")
    accepted: str = Field("accepted", description="Whether the reference was accepted (boolean, or 0/1).")
    created_at: str = Field("created_at", description="When the request was served (orders 'recent').")
    reference_source: str | None = Field(None, description="Optional column: 'llm' or 'human'; unset: 'unknown'.")


class TrafficContextConfig(_Strict):
    """Traffic as the teacher's context (flows/traffic_context.py). Each run reads the most recent `recent`
    served inputs of every lane (kept ones included: they show how traffic moved), scrubbed of personal data;
    the teacher labels `relabel` of them with the run's audited option (never the student's answer as a label),
    and `style_share` of each self_instruct request's style shots are traffic inputs, so new inputs follow
    today's traffic; `cross_share` of those requests ask for an input of the request's label about what a traffic
    input names (a shifted sample's words with every label). All go through the same filters as teacher data."""

    # 500: two and a half drift windows (drift.window_requests 200): the traffic that made a trigger fire, and before.
    recent: int = Field(500, ge=1, le=1_000_000, description="The window: the most recent N traffic inputs of every lane (the gateway's table and the initial JSONL, per gates.replay.source).")
    # 32: a sixth of ticket-triage's 192 new inputs: traffic weighs in without outnumbering what the teacher writes.
    relabel: int = Field(32, ge=0, le=100_000, description="Traffic inputs the teacher labels per run with the audited option (picked per `prefer`: farthest-first from what training covers, or a seeded uniform sample; never a row an earlier committed run sent, one the pool holds, the replay hold-out, an accepted row the refresh takes this run, or a repeat of one request); 0: none.")
    # Half: every request still shows seeds of its own label (the label steer), and new inputs take the traffic's wording.
    style_share: float = Field(0.5, ge=0.0, le=1.0, description="Share of each self_instruct request's style shots drawn from the window when there is traffic (floor of teacher.style_shots x share); the rest are seeds. 0: seeds only.")
    # Off by default: an instruction-following teacher is assumed, and on the flywheel at 0.25 (five seeds) the
    # student gained on every seed but served accuracy only 0.008 on average (docs/scheduling-and-refresh.md).
    cross_share: float = Field(0.0, ge=0.0, le=1.0, description="Share of the self_instruct requests (one-label tasks, when there is traffic to show) that ask the teacher for a new input whose right answer is the request's label, about what one traffic input names (its products, services, voice): counterfactual augmentation (Kaushik et al. 2020), so a word the shift brought comes with every label, not only with those the traffic sample had. 0 (the default): none; 0.25: one request in four of each label. Only where traffic style shots are shown (style_share above 0). Asks for an instruction-following teacher.")
    # novel: after a shift the window is mostly what the pool already covers; what moved is the part it lacks.
    prefer: Literal["novel", "random"] = Field("novel", description="Which traffic inputs the teacher sees. novel: the relabel sample is picked farthest-first from what training covers (the seeds and the pool; greedy k-center on MinHash word-set similarity, filters/novelty.py farthest_first) and the style shots come from the novel inputs (nearest covered input less similar than drift.novelty_quantile of the eval set's) when there are at least teacher.style_shots of them, else from the whole window. random: a seeded uniform relabel sample and the whole window as style shots.")


class ReplayConfig(_Strict):
    source: str = Field("gateway", description="Traffic log. gateway: the table `distill gateway` writes (url, else "
                                                "$DISTILL_TRAFFIC_URL, else sqlite:///<DISTILL_HOME>/traffic.db; table "
                                                "traffic_<skill>) plus the JSONL file `initial` beside it, one id read "
                                                "once (the newer copy wins); a JSONL file inside the skill folder alone; "
                                                "or 'sql' for any table read through SQLAlchemy (url, table, columns).")
    initial: str | None = Field("traffic.jsonl", description="source gateway: the JSONL file in the skill folder read beside the gateway's table (the shipped initial sample; missing file: the table alone; None: the table alone).")
    url: str | None = Field(None, description="SQLAlchemy URL of the traffic database (source: sql or gateway); default for sql: sqlite:///<skill folder>/traffic.db; for gateway: the gateway's ($DISTILL_TRAFFIC_URL, else sqlite:///<DISTILL_HOME>/traffic.db).")
    table: str = Field("traffic", pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$", description="Traffic table (source: sql; source gateway always reads traffic_<skill>, '-' as '_').")
    columns: TrafficColumns = Field(default_factory=TrafficColumns, description="Column names of the traffic table (source: sql).")
    sample: int = Field(40, ge=1, description="Requests replayed per run (sampled reproducibly).")
    recent: int | None = Field(1000, ge=1, description="Sample among the most recent N accepted requests (None: all of them).")
    seed: int = Field(0, ge=0, description="Seed of the replay sample (same seed, same traffic: same sample).")
    min_agreement: float = Field(0.4, ge=0.0, le=1.0, description="Least agreement with accepted references.")
    max_invalid_rate: float = Field(0.2, ge=0.0, le=1.0, description="Most outputs that do not parse.")
    max_p95_latency_s: float | None = Field(None, gt=0, description="Largest tolerated p95 latency per request in seconds (None: not gated).")
    settle_window_days: float = Field(14.0, ge=0.0, le=3650.0, description="Continuous refresh: a request not yet accepted when a run first sees it is looked at again by later runs for this many days (a reviewer may accept or correct it later); 0: never.")
    context: TrafficContextConfig = Field(default_factory=TrafficContextConfig, description="Traffic as the teacher's context: recent inputs of every lane relabelled by the teacher and shown as style shots (flows/traffic_context.py).")


# What the gateway scrubs by default: presidio's pattern recognisers, which run offline (no NER model).
DEFAULT_PII_ENTITIES = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS"]


class PrivacyConfig(_Strict):
    """Personal data in captured traffic: replaced by placeholders (<EMAIL_ADDRESS>) before a row is stored,
    imported or turned into a training example (core/privacy.py, presidio's analyzer and anonymizer)."""

    scrub: bool = Field(True, description="Replace personal data in traffic before it is stored or trained on (the "
                                          "gateway's table, `distill traffic import`, the refresh). False: raw text.")
    entities: list[str] = Field(default_factory=lambda: list(DEFAULT_PII_ENTITIES),
                                description="presidio entity types to replace: EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD "
                                            "(Luhn-checked), IBAN_CODE (checksum), IP_ADDRESS, and presidio's other pattern "
                                            "recognisers (URL, US_SSN, CRYPTO, MAC_ADDRESS, ...); PERSON, LOCATION and other "
                                            "NER types only with ner_model.")
    ner_model: str | None = Field(None, description="An installed spaCy pipeline package (e.g. en_core_web_lg) whose NER "
                                                    "finds names (PERSON) and places; None: pattern recognisers only, "
                                                    "no names (nothing is downloaded at run time).")
    phone_regions: list[str] = Field(default_factory=lambda: ["US", "GB", "DE", "FR", "IL", "IN", "CA", "BR"],
                                     description="Regions whose national phone formats are recognised (international "
                                                 "+CC numbers are recognised from any region).")
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="Least presidio score a finding needs to be replaced (0: every pattern match that passes its checksum).")


class GateConfig(_Strict):
    enforce_floor: bool = Field(True, description="False only in smoke runs: floors are measured and recorded but "
                                                  "do not block (smoke versions get the candidate alias, never production).")
    floor: dict[str, float] = Field(default_factory=lambda: {"primary": 0.4}, description="Absolute floors per metric (metric names of the task type: accuracy, macro_f1, field_f1, ast_accuracy, chrf ...; 'primary': the task type's primary metric).")
    min_paired_items: int = Field(20, ge=1, description="Fewest eval items scored by both candidate and production; below it the comparison with production fails closed (an interval on one item says nothing).")
    margin: float = Field(0.02, ge=0.0, le=1.0, description="Largest tolerated drop against production: the lower bound of the paired confidence interval on (candidate - production) must lie above -margin. Size it to the eval set: with 100 items and a few disagreements the interval is about +-0.05.")
    metric: str | None = Field(None, description="Per-item metric compared against production (default: the task type's primary metric).")
    ci_method: Literal["auto", "bootstrap", "mcnemar"] = Field("auto", description="Paired interval: exact McNemar (conditional binomial) for pass/fail metrics, paired bootstrap otherwise ('auto').")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Confidence level of the paired interval (two-sided).")
    resamples: int = Field(2000, ge=100, le=100_000, description="Paired bootstrap resamples.")
    seed: int = Field(0, ge=0, description="Bootstrap seed: the same data gives the same decision.")
    slice_floor: dict[str, float] = Field(default_factory=dict, description="Absolute floor per label/slice on its recall (classification) or primary metric; '*' applies to every slice.")
    slice_max_drop: dict[str, float] = Field(default_factory=dict, description="Largest tolerated drop per label/slice against production; '*' applies to every slice.")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="Longest answer generated in evaluation and serving, in tokens (default: 8 for classification, 24 multi_label, 160 otherwise, raised to hold the longest answer the grammar allows: core/answer_cap.py). A smaller value is refused naming the answer it would cut.")
    eval_limit: int | None = Field(None, ge=1, description="Score only the first N eval items (smoke runs).")
    publish_alias: Literal["production", "candidate"] = Field(
        "production", description="Alias a version that passes every gate gets; smoke runs publish as candidate.")
    replay: ReplayConfig = ReplayConfig()


class RoutingConfig(_Strict):
    """Which requests the gateway keeps on the small model and which it escalates to the teacher. Every run
    measures both lanes on the same items (the frozen eval set and the replay sample: the student, and the
    teacher with the option its audit chose) and routing.json holds the served quality against the teacher
    share at every threshold; the policy picks one point (eval_gates.routing.choose_point)."""

    policy: Literal["quality", "budget", "target_error"] = Field(
        "quality", description="quality: the highest served quality, the fewest teacher calls among equal ones, and "
                               "a band escalated only where the teacher is measured better (sign test at "
                               "`significance`); budget: the highest served quality with at most max_teacher_share "
                               "of requests sent to the teacher; target_error: keep only where a one-sided exact "
                               "(Clopper-Pearson) bound on the kept error is <= target_error_rate (else `fallback`).")
    max_teacher_share: float = Field(0.2, ge=0.0, le=1.0, description="budget: the largest share of requests the teacher may answer.")
    target_error_rate: float = Field(0.05, gt=0.0, lt=1.0, description="target_error: the kept error rate the bound must certify (at 95% it takes at least 59 kept answers, all right, to certify 0.05).")
    confidence_level: float = Field(0.95, gt=0.5, lt=1.0, description="Level of the intervals and of the target_error bound.")
    significance: float = Field(0.05, gt=0.0, le=1.0, description="quality: a band is escalated only if the teacher beats the student on it at this one-sided p (sign test on the items where they differ, adjusted for the search over every cut: Westfall-Young maxT, eval_gates.routing.family_wise_p); 1.0: on the point estimate alone.")
    fallback: Literal["quality", "budget"] = Field("quality", description="target_error: the policy used when the target cannot be certified on the measured items (said in the run summary and the model card).")
    signal: Literal["auto", "mean_logprob", "min_logprob", "mean_grammar_logprob", "min_grammar_logprob",
                    "min_margin"] = Field(
        "auto", description="The confidence the threshold is on: auto = the one that separates right from wrong answers best on this run's items (AUROC; eval_gates.routing.compare_signals), else one named.")


class DriftConfig(_Strict):
    """When the served version's live figures leave what its run predicted (routing.json, novelty.json), the
    gateway emits the Prefect event `distill.drift.detected` for the skill, and prefect.yaml's trigger on it
    runs the skill's deployment (gateway/drift.py; docs/scheduling-and-refresh.md "Drift triggers a run"). Three signals, each over a
    sliding window of the production version's most recent requests: the teacher share (escalated answers),
    the verify lane's error rate (its exact interval) and the share of novel inputs (no near neighbour in the
    version's training inputs)."""

    enabled: bool = Field(True, description="Emit the event when a signal stays out of its band. False: the signals are still measured and shown (distill status), and only the clock (schedule.cron) starts runs.")
    # 200 requests: the teacher share's binomial noise is about 0.03 at a share of 0.2, a third of the tolerance.
    window_requests: int = Field(200, ge=10, le=100_000, description="The window: the most recent N requests of the production version.")
    # A day: a quiet skill's window never judges today's traffic by last week's requests.
    window_minutes: float | None = Field(1440.0, gt=0.0, description="Requests older than this many minutes leave the window (null: by count alone).")
    # 50: below it a share moves by 0.06 or more from one request's noise, too little to judge.
    min_requests: int = Field(50, ge=1, description="Fewest requests in the window before the teacher share and novelty are judged.")
    # 50 requests and 10 minutes: one burst of odd requests (a test script, one customer's batch) is not drift.
    sustain_requests: int = Field(50, ge=0, description="A signal must stay out of its band for this many consecutive requests before the event (0: no count needed).")
    sustain_minutes: float = Field(10.0, ge=0.0, description="... and for this many minutes (0: no time needed); both must hold.")
    # 6 hours: a run takes tens of minutes to hours; the next event waits for what the triggered run published.
    cooldown_minutes: float = Field(360.0, gt=0.0, description="At most one event per skill in this many minutes (kept across gateway restarts, and the "
                                                               "trigger's `within` in prefect.yaml, so Prefect also ignores events inside it).")
    # 0.1: three times the window's noise at a share of 0.2 (sd 0.028 over 200 requests).
    teacher_share_tolerance: float = Field(0.1, gt=0.0, lt=1.0, description="Teacher-share band: the share routing.json predicts for the served point, plus or minus this.")
    # 0.05: the verify lane scores against the teacher, whose own mistakes count as disagreements too.
    verify_error_margin: float = Field(0.05, ge=0.0, lt=1.0, description="Verify band: error rates up to routing.json's kept_error_rate_upper plus this are in band; out of band when the low end of the exact interval of the window's error rate is above it.")
    # 100 outcomes: at a verify fraction of 0.05 that is the last 2,000 requests, about ten windows.
    verify_window: int = Field(100, ge=1, le=100_000, description="The verify lane's most recent N outcomes (agree or disagree) of the production version (window_minutes applies too).")
    # 20: fewer outcomes make an interval too wide to leave any band.
    min_verified: int = Field(20, ge=1, description="Fewest verify outcomes in the window before the verify error is judged.")
    # 0.1 of held-out in-distribution inputs count as novel by construction, see novelty_quantile; 0.3 is three times that.
    novelty_ceiling: float = Field(0.3, gt=0.0, le=1.0, description="Out of band when more than this share of the window's inputs are novel.")
    # The 10th percentile: about one in-distribution input in ten counts as novel, so 0.3 novel is a shift (measured on
    # ticket-triage: held-out eval inputs 0.08 novel, hand-written shifted tickets 0.80).
    novelty_quantile: float = Field(0.1, gt=0.0, lt=1.0, description="Publish time: an input is novel when its nearest training input is less similar "
                                                                      "(MinHash Jaccard of its words) than this quantile of the eval set's inputs' nearest ones.")
    # 1,000 signatures of 128 values: 0.5 MB in the version folder, about 0.1 ms per request to compare against.
    novelty_pool: int = Field(1000, ge=10, le=100_000, description="Publish time: most training inputs whose signatures the version keeps (a seeded sample beyond it).")

    @model_validator(mode="after")
    def _windows(self) -> "DriftConfig":
        problems = []
        if self.min_requests > self.window_requests:
            problems.append(f"drift.min_requests: {self.min_requests} is more than drift.window_requests "
                            f"({self.window_requests}); the window could never be judged")
        if self.min_verified > self.verify_window:
            problems.append(f"drift.min_verified: {self.min_verified} is more than drift.verify_window "
                            f"({self.verify_window}); the verify error could never be judged")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class DecodingConfig(_Strict):
    constrained: bool = Field(True, description="Decode the student (evaluation, registry consumer, gateway) and a local transformers teacher under a grammar built from the skill's answers (its labels, its output JSON Schema, a function call's own tools), with xgrammar: answers are always parseable. skill.json records it and consumers decode the same way.")


    max_string_chars: int | None = Field(
        None, ge=1, description="Longest string value the grammar lets a JSON answer write (extraction, generation "
                                "with a schema, function-call arguments), in characters (null: no bound but a "
                                "function call's, its request's length + 32). Under a grammar a small model that "
                                "never closes a string writes until the token cap and loses the answer; set it "
                                "above the longest value your answers need. skill.json records it.")


class ScheduleConfig(_Strict):
    cron: str | None = Field(None, description="Cron expression for scheduled runs, e.g. \"0 3 * * *\" (null: manual runs only); checked with the validator Prefect's deployments use.")
    timezone: str | None = Field(None, description="IANA time zone the cron expression is read in, e.g. Europe/Oslo (null: UTC).")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is None:
            return v
        # Prefect's own check (its vendored croniter), so `distill skills` refuses what `distill serve` would.
        from prefect._internal.schemas.validators import validate_cron_string

        return validate_cron_string(v)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}; use an IANA name such as Europe/Oslo or America/New_York") \
                from None
        return v


class SkillConfig(_Strict):
    name: str = Field(description="The skill's name: the folder name under seeds/ (lowercase letters, digits, '-').")
    task: str = Field(description="The task type: classification | extraction | function_call | generation, or any "
                                  "type registered in core/tasks/ (`distill new-skill --help` lists them).")
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
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="Which requests the gateway keeps on the small model and which go to the teacher: the policy and its bounds.")
    decoding: DecodingConfig = Field(default_factory=DecodingConfig, description="How answers are decoded: constrained to the skill's answer grammar or free.")
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig, description="Personal data in captured traffic: scrubbed before it is stored or trained on (on by default).")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="When the gateway's live signals leave what the version's run predicted, a Prefect event starts a run of the skill.")
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

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        from core.tasks import task_names

        if v not in task_names():
            raise ValueError(f"unknown task type {v!r}; choose one of: {', '.join(task_names())}")
        return v

    @model_validator(mode="after")
    def _per_task(self) -> "SkillConfig":
        from core.tasks import task_class

        task = task_class(self.task)
        problems = task.config_problems(self)  # every cross-key problem in one message
        if self.audit.floor == "auto":
            self.audit.floor = auto_audit_floor(self)
        if self.expansion.target_examples == "auto":
            self.expansion.target_examples = auto_target_examples(self)
        if "strategies" not in self.expansion.model_fields_set and task.default_answerer != "label":
            self.expansion.strategies = [s if s != "label" else task.default_answerer for s in self.expansion.strategies]
        if self.filters.target_precision is not None and not set(self.expansion.strategies) & {"score",
                                                                                              "self_consistency"}:
            problems.append("filters.target_precision: per-label thresholds need a confidence on every teacher "
                            "answer; use the score (classification) or self_consistency answerer in "
                            "expansion.strategies, or remove filters.target_precision")
        if "score" in self.expansion.strategies:
            if not task.one_label:
                problems.append(f"expansion.strategies: score ranks a closed label set (classification); use label "
                                f"or self_consistency for {self.task}")
            if self.teacher.endpoint == "chat" and self.teacher.score_method == "echo":
                problems.append("teacher.score_method: echo needs prompt logprobs, which chat endpoints do not return; "
                                "use score_method first_token (or auto), or teacher.endpoint: completions")
        if (self.teacher.backend == "local" and self.teacher.local_server == "llama_cpp"
                and self.teacher.model != "bundled:gemma-3-270m"):
            problems.append(f"teacher.local_server: llama_cpp serves only bundled:gemma-3-270m (its GGUF), not "
                            f"{self.teacher.model!r}; set local_server to auto or transformers")
        if self.filters.max_label_distance is not None and not task.one_label:
            problems.append("filters.max_label_distance: only classification skills have labels; remove the key")
        if problems:
            raise ValueError("; ".join(problems))
        return self


# `auto` keys (what `distill new-skill` writes), resolved from the task and its labels when the config loads.
# Chance multiple of the audit floor: the 270M teacher's labels for an 8-label skill scored 0.29 on the seeds
# (2.3x chance, 0.125) and more of them made the student worse (0.48 against 0.57); on ticket-triage it scored
# 0.58 (2.9x chance, 0.20) and its data lifted the student from 0.32 (seeds alone) to 0.74. 2.5x lies between.
AUDIT_FLOOR_CHANCE_MULTIPLE = 2.5
# New inputs per label: ticket-triage's 192 over 5 labels (64 scored 0.56, 128 0.70, 192 0.74 over 6 runs,
# benchmarks/student_stability.py); never fewer than those 192.
EXAMPLES_PER_LABEL, LEAST_LABEL_EXAMPLES = 192 / 5, 192


def auto_audit_floor(cfg: "SkillConfig") -> float | None:
    """audit.floor: auto. A label set: AUDIT_FLOOR_CHANCE_MULTIPLE x chance (1 / labels), at most halfway
    from chance to 1 (two labels: 0.75, not 1.25). Other types have no chance level: the gates' floor on the
    primary metric (a teacher below what the student must reach cannot teach it); None without one."""
    from core.tasks import task_class

    task = task_class(cfg.task)
    if task.one_label and cfg.labels:
        chance = 1 / len(cfg.labels)
        return round(min(AUDIT_FLOOR_CHANCE_MULTIPLE * chance, (1 + chance) / 2), 3)
    floor = cfg.gates.floor
    return floor.get(task.primary, floor.get("primary"))


def auto_target_examples(cfg: "SkillConfig") -> int:
    """expansion.target_examples: auto. A label set: EXAMPLES_PER_LABEL per label, rounded up to 16, at least
    LEAST_LABEL_EXAMPLES (8 labels: 320); other types: what the shipped skill of the type runs with
    (the task type's `expansion_examples`)."""
    import math

    from core.tasks import task_class

    if cfg.labels:
        return max(LEAST_LABEL_EXAMPLES, math.ceil(EXAMPLES_PER_LABEL * len(cfg.labels) / 16) * 16)
    return task_class(cfg.task).expansion_examples


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
        "gates": {"eval_limit": 16, "min_paired_items": 1,
                  "replay": {"sample": 8, "min_agreement": 0.0, "max_invalid_rate": 1.0},
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


