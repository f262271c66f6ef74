"""The task-type protocol: everything that differs between kinds of skill, in one class per type.

A task type (`TaskType` subclass, one file per type under core/tasks/, registered by name with
`@register`) decides, for a skill config bound at construction:

- config: the keys the type needs or refuses (`config_problems`), the scaffold `distill
  new-skill` writes (`scaffold`), which answerer labels by default (`default_answerer`);
- prompts: how an input and an answer are rendered (`format_input`, `format_completion`,
  `template_prompt`), and how long an answer may be (`answer_tokens`, `teacher_answer_tokens`);
- answers: the lenient parse (`parse_output`), the strict checks (`output_problem`,
  `input_problem`, `example_problem` for a seeds/eval row), the JSON Schema of an answer for
  `response_format` (`answer_schema`), and what a constrained decoder may write as the completion
  (`answer_grammar`);
- matching: the text that dedup, contamination, shot similarity and the seed/eval overlap check
  compare (`match_text`);
- the teacher's prompt pieces: the groups new inputs are written in the style of (`group_key`),
  how an input is shown (`shown_input`) and rebuilt from what the teacher wrote (`build_input`),
  the hint a rewrite keeps (`rewrite_hint`), function-writing prompts (`new_tools_prompt`);
- the metric: per-item `score`, `error` kind, `slice_of`, `aggregate`, and `is_correct` for routing.

Stages call `get_task(cfg)` and never branch on the type's name. `one_label` marks a closed set of
single-label answers (stratified folds and shots, label-probability scoring, the label-distribution
bound); `json_input` / `json_output` say which fields are canonical JSON text.

Every metric is in [0, 1] so one `margin` means the same for every type.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import regex

from core import structured
from core.records import Example
from core.text import invisible_table, label_form

if TYPE_CHECKING:  # core.config validates `task` against this registry: no import at run time
    from core.config import SkillConfig

Problem = structured.Problem
INVALID = "<invalid>"
# The group key of an input the teacher writes whole (a function call's new tools and request).
NEW_TOOLS = "<new-tools>"


def mean(xs: Sequence[float]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else 0.0


def loads(text: str | None) -> Any:
    """json.loads, or None when `text` is None or not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def one_line(text: str) -> str:
    """Inputs are shown on one line so the answer line is unambiguous."""
    return " ".join(text.split())


# A character of a label key: a word character or a combining mark (the dot "İ" folds to, a
# mark NFC has no precomposed letter for); anything else but '-' separates words.
_NOT_KEY = regex.compile(r"[^\w\p{M}\-]|_")


def label_key(text: str) -> str:
    """How an answer is read as a label (the lenient parse): `core.text.label_form` (NFC, case-folded
    in any script), invisible code points dropped, punctuation other than '-' dropped, '_' and spaces
    alike ("Feature Request." -> "feature request", "FACTURACIÓN" -> "facturación" whichever
    normal form either is written in)."""
    folded = label_form(text if text.isascii() else text.translate(invisible_table()))
    return " ".join(_NOT_KEY.sub(" ", folded).split())


def label_of(labels: Sequence[str], text: str | None) -> str | None:
    """The label of `labels` (as declared) that `text` is, compared by `core.text.label_form`; None
    when `text` is None or no label. The one strict label comparison of the metric, the seeds, eval
    and traffic readers and the quality filter."""
    if text is None:
        return None
    form = label_form(text)
    return next((lab for lab in labels if label_form(lab) == form), None)


def labels_problems(cfg: "SkillConfig", required: bool, minimum: int = 2) -> list[str]:
    """The `labels` key: a list of at least `minimum` distinct one-line labels when the type
    needs one (`required`), absent otherwise."""
    if not required:
        return [f"labels: only classification (and other label) skills have labels; remove the key (task is {cfg.task})"] \
            if cfg.labels else []
    out = []
    if len(cfg.labels) < minimum:
        out.append(f"labels: a {cfg.task} skill needs at least {minimum} labels")
    dups = sorted({lab for lab in cfg.labels if cfg.labels.count(lab) > 1})
    if dups:
        out.append(f"labels: duplicate label(s) {', '.join(map(repr, dups))}")
    # One line as str.splitlines sees it (U+2028, U+0085, \r too): the parser reads the first line.
    if any(not lab.strip() or lab != lab.strip() or len(lab.splitlines()) != 1 for lab in cfg.labels):
        out.append("labels: each label is a non-empty single line without surrounding spaces")
    seen: dict[str, str] = {}
    for lab in cfg.labels:  # every label must parse back as itself
        key = label_key(lab)
        if not key:
            out.append(f"labels: {lab!r} has no letters or digits, so no answer can be read as it; rename it")
        elif key in seen and seen[key] != lab:
            out.append(f"labels: {seen[key]!r} and {lab!r} read the same once Unicode form (NFC), case and "
                       f"punctuation are ignored (key {key!r}); rename one")
        seen.setdefault(key, lab)
    return out


def no_output_schema(cfg: "SkillConfig") -> list[str]:
    """The `output_schema` key, for types whose answers it does not describe: absent."""
    return [f"output_schema: not used by {cfg.task} skills; remove the key"] if cfg.output_schema is not None else []


class TaskType:
    """Defaults shared by the text task types; a subclass overrides what differs."""

    name: ClassVar[str] = "base"
    primary: ClassVar[str] = "accuracy"  # the per-item metric the gates compare and replay calls agreement
    json_input: ClassVar[bool] = False  # inputs are JSON objects, stored as canonical JSON text
    one_label: ClassVar[bool] = False  # every answer is exactly one of cfg.labels
    default_answerer: ClassVar[str] = "label"  # the answerer when expansion.strategies is not set
    answer_tokens: ClassVar[int] = 160  # longest answer generated in evaluation (gates.max_new_tokens unset)
    teacher_answer_tokens: ClassVar[int] = 256  # longest teacher answer (teacher.answer_max_tokens unset)
    # expansion.target_examples: auto without labels (with labels: core/config.py auto_target_examples).
    expansion_examples: ClassVar[int] = 64  # json-extraction ships 64
    answer_format: ClassVar[str] = "text"  # skill.json's answer_format: label | json | text
    api_tools: ClassVar[bool] = False  # the API request's `tools` are part of the input; answers are tool calls
    slice_name: ClassVar[str] = "per-slice"  # how reports title the per-slice table
    # `distill new-skill`: instruction, input_name, output_name, floor, example [, labels, output_schema,
    # max_length, eval_example].
    scaffold: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: "SkillConfig"):
        self.cfg = cfg

    # --- config -------------------------------------------------------------------------------------------------

    @classmethod
    def config_problems(cls, cfg: "SkillConfig") -> list[str]:
        """Problems with the keys this type needs or refuses, each naming the key and the fix."""
        return labels_problems(cfg, required=False)

    @property
    def json_output(self) -> bool:
        """Whether answers are JSON (compact, one line) rather than a label or text."""
        return False

    # --- prompts ------------------------------------------------------------------------------------------------

    def format_input(self, input: str) -> str:
        """The input block of a prompt, up to and including the input line."""
        return f"{self.cfg.input_name}: {one_line(input)}"

    def format_completion(self, output: str) -> str:
        """What the model is trained to write after the prompt (EOS is added by the trainer)."""
        return f" {one_line(output)}"

    def template_prompt(self, head: str, braces) -> tuple[str, dict[str, Any]]:
        """skill.json's str.format prompt after the header `head`, and extra skill.json keys.
        `braces` doubles literal braces."""
        cfg = self.cfg
        return head + f"{braces(cfg.input_name)}: {{input}}\n{braces(cfg.output_name)}:", {}

    # --- serving (the gateway's OpenAI-compatible API) ----------------------------------------------------------

    def api_input(self, text: str, tools: list | None = None) -> str:
        """The skill input for an API request: the user's text, and `tools` (the request's OpenAI
        `tools` field). Plain types take the text and ignore tools. Raises ValueError naming the field."""
        return text

    def api_message(self, answer: str) -> dict[str, Any]:
        """The OpenAI assistant message that carries `answer` (canonical text): content by default."""
        return {"role": "assistant", "content": answer}

    # --- answers ------------------------------------------------------------------------------------------------

    def parse_output(self, text: str) -> str | None:
        """Lenient parse into canonical text (first line, code fences); None when nothing usable."""
        text = (text or "").strip().strip("`").strip()
        first = text.splitlines()[0].strip() if text else ""
        return first or None

    def output_problem(self, output: str, input: str | None = None) -> Problem | None:
        """(snake_case reason, detail) when `output` (canonical text) is not a valid answer, else None."""
        return None if output.strip() else ("empty_output", "the answer is empty")

    def canonical_output(self, output: str) -> str:
        """A human-written answer (a seeds or eval row, a traffic reference) as the type stores and
        compares it; label types give each label as declared in skill.yaml (`label_of`). Default:
        unchanged. Never raises: a non-answer comes back as it is, for `output_problem` to judge."""
        return output

    def input_problem(self, input: str) -> Problem | None:
        """(snake_case reason, detail) when `input` is not a valid input, else None."""
        return None if input.strip() else ("empty_input", "the input is empty")

    def whole_despite_cut(self, raw: str) -> bool:
        """Whether an answer cut at the token limit (finish_reason "length") still holds a whole
        answer; by default never (a cut JSON object or sentence is not an answer)."""
        return False

    def example_problem(self, input: str, output: str, kind: str) -> str | None:
        """The check of one seeds (`kind` "seeds") or eval ("eval") row; a message, or None."""
        bad = self.input_problem(input)
        if bad:
            return f"input: {bad[0]}: {bad[1]}"
        bad = self.output_problem(output, input)
        return f"output: {bad[0]}: {bad[1]}" if bad else None

    def answer_schema(self, input: str | None = None) -> tuple[dict, bool] | None:
        """(JSON Schema of an answer, fits OpenAI's strict subset) for response_format and
        constrained decoding, or None (free text). `input` lets a type narrow it per request."""
        return None

    def answer_grammar(self, input: str | None = None) -> dict[str, Any] | None:
        """What a constrained decoder may write after the prompt: the completion as trained
        (`format_completion`'s form: a leading space, then the answer, on one line), engine-agnostic.

        One of {"prefix": " ", "choices": [str, ...]}, {"prefix": " ", "json_schema": {...}} (compact
        JSON, canonical separators) or {"prefix": " ", "regex": str}; None for free text. `input`
        narrows it per request (function calls: that request's own tools); a type whose grammar
        needs the input says so with `grammar_needs_input`."""
        return None

    grammar_needs_input: ClassVar[bool] = False

    def cap_answers(self, inputs: Sequence[str] = ()) -> list[str]:
        """The completions (`format_completion`'s form) an answer cap must hold whole (core/answer_cap.py):
        the longest answers the grammar allows where they are a closed set, the skeleton every answer
        contains where values are free; `inputs` (e.g. the seeds) where the grammar depends on them.
        [] for free text: no cap is derived or checked."""
        return []

    # --- matching -----------------------------------------------------------------------------------------------

    def match_text(self, input: str) -> str:
        """The part of an input that dedup, contamination, shot similarity and the seed/eval overlap
        check compare (the whole input unless a type has boilerplate such as tool definitions)."""
        return input

    # --- the teacher's prompt pieces -----------------------------------------------------------------------------

    def group_key(self, example: Example) -> str:
        """The group a seed belongs to when new inputs are written in the style of one group."""
        return ""

    def shown_input(self, input: str) -> str:
        """An input as the teacher sees it when asked to write or rewrite inputs."""
        return one_line(input)

    def build_input(self, text: str, group_key: str) -> str:
        """The input the teacher's text becomes, inside group `group_key`."""
        return text

    def rewrite_hint(self, output: str | None) -> str:
        """A sentence the rewrite prompt adds about the answer that must stay right ("" for none)."""
        return ""

    def new_tools_share(self) -> float:
        """Share of self_instruct inputs the teacher writes whole, with new functions (function calls)."""
        return 0.0

    def new_tools_prompt(self, shots: list[Example]) -> str:
        raise NotImplementedError(f"{self.name} skills do not write new functions")

    # --- the metric ---------------------------------------------------------------------------------------------

    def invalid_reason(self, example: Example, prediction: str | None) -> str | None:
        """Why a prediction is not a valid answer at all (None when it is)."""
        if prediction is None:
            return "unparsable"
        bad = self.output_problem(prediction, example.input)
        return bad[0] if bad else None

    def score(self, example: Example, prediction: str | None) -> dict[str, float]:
        """Per-item metrics of `prediction` (parsed answer or None) against `example.output`."""
        raise NotImplementedError

    def error(self, example: Example, prediction: str | None) -> str | None:
        """Why an item is wrong, for error tables (None when right)."""
        return None if self.score(example, prediction)[self.primary] >= 1.0 else "wrong"

    def is_correct(self, scores: dict[str, float]) -> bool:
        """Whether an item counts as right for the routing profile."""
        return scores[self.primary] >= 1.0

    def slice_of(self, example: Example) -> str | None:
        """The slice an item belongs to for per-slice floors (meta.slice when the data names one)."""
        s = example.meta.get("slice") if isinstance(example.meta, dict) else None
        return str(s) if s is not None else None

    def slices(self, per_item: list[dict], examples: Sequence[Example]) -> dict[str, float]:
        groups: dict[str, list[float]] = defaultdict(list)
        for s, ex in zip(per_item, examples):
            key = self.slice_of(ex)
            if key is not None:
                groups[key].append(s[self.primary])
        return {k: mean(v) for k, v in sorted(groups.items())}

    def error_counts(self, examples: Sequence[Example], predictions: Sequence[str | None]) -> dict[str, int]:
        return dict(Counter(e for e in (self.error(x, p) for x, p in zip(examples, predictions)) if e).most_common())

    def aggregate(self, per_item: list[dict], examples: Sequence[Example], predictions: Sequence[str | None]) -> dict:
        """The metrics table: means of the per-item metrics, slices and error counts."""
        keys = sorted({k for s in per_item for k in s})
        out: dict[str, Any] = {"n": len(per_item), "primary": self.primary}
        out.update({k: mean([s.get(k, 0.0) for s in per_item]) for k in keys})
        out["slices"] = self.slices(per_item, examples)
        out["errors"] = self.error_counts(examples, predictions)
        return out


_REGISTRY: dict[str, type[TaskType]] = {}


def register(cls: type[TaskType]) -> type[TaskType]:
    """Class decorator: make a task type addressable by its `name` in skill files."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task type {cls.name!r} is registered twice ({_REGISTRY[cls.name].__module__}, {cls.__module__})")
    _REGISTRY[cls.name] = cls
    return cls


# --- JSON answers (extraction, function calls, generation with an output schema) -------------------------------------


def json_completion(output: str) -> str:
    """A JSON answer as trained: compact canonical JSON after one space (one line as-is when not JSON)."""
    obj = loads(output)
    return " " + structured.canonical_json(obj) if obj is not None else f" {one_line(output)}"


def json_parse(text: str) -> str | None:
    """The first JSON object anywhere in `text` (code fences and words around it ignored), as
    canonical JSON text; None when there is none."""
    obj = structured.first_json_object(text or "")
    return None if obj is None else structured.canonical_json(obj)


def json_output_problem(schema: dict | None, output: str, want_object: bool) -> Problem | None:
    """invalid_json, or the first schema violation of a JSON answer (None when valid)."""
    obj = loads(output)
    if obj is None:
        return "invalid_json", "the answer is not valid JSON"
    if want_object and not isinstance(obj, dict):
        return "invalid_json", "the answer is not a JSON object"
    bad = structured.value_problem(schema, obj) if schema is not None else None
    return ("schema_violation", bad[1]) if bad else None


def bounded_schema(cfg: "SkillConfig") -> Any:
    """The skill's output schema for its answer grammar (`structured.bound_values`): free numbers
    within 15 digits, free strings capped at decoding.max_string_chars when it is set."""
    if cfg.output_schema is None:
        return None
    return structured.bound_values(cfg.output_schema, cfg.decoding.max_string_chars)


def strict_ok(schema: Any) -> bool:
    """Whether a JSON Schema fits OpenAI's strict structured-output subset (every key required,
    no extra keys, recursively)."""
    if not isinstance(schema, dict):
        return True
    if schema.get("type") == "object" or "properties" in schema:
        props = schema.get("properties", {})
        if schema.get("additionalProperties") is not False or set(schema.get("required", [])) != set(props):
            return False
        return all(strict_ok(s) for s in props.values())
    if isinstance(schema.get("items"), dict):
        return strict_ok(schema["items"])
    return True
