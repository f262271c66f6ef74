"""Task-type metric plug-ins: one small class per task type.

Every plug-in has a `name`, a `primary` metric (the per-item series the gates compare against
production and the replay gate calls "agreement"), `score(example, prediction) -> dict[str, float]`
(per item; `example.output` is the gold answer, `prediction` the parsed answer or None when it did
not parse), `error(example, prediction) -> str | None` (why an item is wrong, for error tables) and
`aggregate(per_item, examples, predictions) -> dict` (the metrics table). Every metric is in [0, 1]
so one `margin` means the same thing for every task type (chrF too: sacrebleu's 0-100 / 100).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from typing import Any, Sequence

from core.records import Example
from core.skills import SkillConfig

INVALID = "<invalid>"


def _mean(xs: Sequence[float]) -> float:
    return round(sum(xs) / len(xs), 4) if xs else 0.0


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _validator(cfg: SkillConfig):
    """core.prompting.validate_output when the prompting module has it (JSON task types)."""
    from core import prompting

    return getattr(prompting, "validate_output", None)


class TaskPlugin:
    name = "base"
    primary = "accuracy"

    def __init__(self, cfg: SkillConfig):
        self.cfg = cfg
        self._validate = _validator(cfg)

    def invalid_reason(self, example: Example, prediction: str | None) -> str | None:
        """Why a prediction is not a valid answer at all (None when it is)."""
        if prediction is None:
            return "unparsable"
        if self._validate is not None:
            try:
                return self._validate(self.cfg, prediction, example.input)
            except TypeError:  # an older validate_output(cfg, output)
                return self._validate(self.cfg, prediction)
        return None

    def score(self, example: Example, prediction: str | None) -> dict[str, float]:
        raise NotImplementedError

    def error(self, example: Example, prediction: str | None) -> str | None:
        return None if self.score(example, prediction)[self.primary] >= 1.0 else "wrong"

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
        return {k: _mean(v) for k, v in sorted(groups.items())}

    def aggregate(self, per_item: list[dict], examples: Sequence[Example], predictions: Sequence[str | None]) -> dict:
        keys = sorted({k for s in per_item for k in s})
        out = {"n": len(per_item), "primary": self.primary}
        out.update({k: _mean([s.get(k, 0.0) for s in per_item]) for k in keys})
        out["slices"] = self.slices(per_item, examples)
        errors = Counter(e for e in (self.error(x, p) for x, p in zip(examples, predictions)) if e)
        out["errors"] = dict(errors.most_common())
        return out


# --- classification ------------------------------------------------------------------------------------------------


class Classification(TaskPlugin):
    name, primary = "classification", "accuracy"

    def score(self, example, prediction):
        valid = prediction is not None and prediction in self.cfg.labels
        return {"accuracy": float(valid and prediction == example.output), "valid": float(valid)}

    def error(self, example, prediction):
        if prediction is None or prediction not in self.cfg.labels:
            return "invalid_output"
        return None if prediction == example.output else f"{example.output} -> {prediction}"

    def slice_of(self, example):
        return example.output  # per-label recall: the gold label is the slice

    def aggregate(self, per_item, examples, predictions):
        from eval_gates.metrics import classification_metrics

        preds = [p if p in self.cfg.labels else None for p in predictions]
        m = classification_metrics([e.output for e in examples], preds, self.cfg.labels)
        m["primary"] = self.primary
        m["slices"] = dict(m["per_label_recall"])
        m["errors"] = dict(Counter(e for e in (self.error(x, p) for x, p in zip(examples, predictions)) if e)
                           .most_common())
        return m


# --- extraction ----------------------------------------------------------------------------------------------------


def _norm_scalar(v: Any) -> Any:
    """Light normalisation: case and whitespace of strings, numbers by value, numeric strings as numbers."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        s = " ".join(v.split()).casefold()
        try:
            f = float(s.replace(",", "")) if re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?", s) else None
        except ValueError:
            f = None
        return f if f is not None and math.isfinite(f) else s
    if isinstance(v, list):
        return tuple(_norm_scalar(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _norm_scalar(x)) for k, x in v.items()))
    return v


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted field paths; lists stay values. Empty values (null, "", []) count as absent."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if obj is None or obj == "" or obj == []:
        return out
    out[prefix[:-1]] = _norm_scalar(obj)
    return out


class Extraction(TaskPlugin):
    name, primary = "extraction", "field_f1"

    def _counts(self, example, prediction) -> tuple[int, int, int, bool]:
        gold = flatten(_loads(example.output) or {})
        pred_obj = _loads(prediction)
        if not isinstance(pred_obj, dict):
            return 0, 0, len(gold), False
        pred = flatten(pred_obj)
        tp = sum(1 for k, v in pred.items() if k in gold and gold[k] == v)
        return tp, len(pred) - tp, len(gold) - tp, True

    def score(self, example, prediction):
        tp, fp, fn, valid_json = self._counts(example, prediction)
        p = tp / (tp + fp) if tp + fp else (1.0 if valid_json and not fn else 0.0)
        r = tp / (tp + fn) if tp + fn else (1.0 if valid_json else 0.0)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        schema_ok = valid_json and self.invalid_reason(example, prediction) is None
        return {"field_f1": f1, "field_precision": p, "field_recall": r, "exact_match": float(valid_json and fp == fn == 0),
                "valid_json": float(valid_json), "valid": float(schema_ok), "tp": tp, "fp": fp, "fn": fn}

    def error(self, example, prediction):
        obj = _loads(prediction)
        if not isinstance(obj, dict):
            return "invalid_json"
        reason = self.invalid_reason(example, prediction)
        if reason:
            return reason
        gold, pred = flatten(_loads(example.output) or {}), flatten(obj)
        wrong = sorted(k for k in set(gold) | set(pred) if gold.get(k) != pred.get(k))
        return f"field {wrong[0]}" if wrong else None

    def aggregate(self, per_item, examples, predictions):
        out = super().aggregate(per_item, examples, predictions)
        tp, fp, fn = (sum(s[k] for s in per_item) for k in ("tp", "fp", "fn"))
        for k in ("tp", "fp", "fn"):
            out.pop(k, None)
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        out.update(valid_json_rate=out.pop("valid_json", 0.0), invalid_rate=round(1 - out.get("valid", 0.0), 4),
                   field_precision_micro=round(p, 4), field_recall_micro=round(r, 4),
                   field_f1_micro=round(2 * p * r / (p + r) if p + r else 0.0, 4))
        # Recall per gold field: which fields the model misses.
        hit, total = Counter(), Counter()
        for ex, pred in zip(examples, predictions):
            gold = flatten(_loads(ex.output) or {})
            pobj = _loads(pred)
            pf = flatten(pobj) if isinstance(pobj, dict) else {}
            for k, v in gold.items():
                total[k] += 1
                hit[k] += pf.get(k) == v
        out["per_field_recall"] = {k: round(hit[k] / total[k], 4) for k in sorted(total)}
        out["slices"] = out["slices"] or dict(out["per_field_recall"])
        return out


# --- function calling (BFCL-style AST check) -----------------------------------------------------------------------


def _norm_str(s: str) -> str:
    return " ".join(s.split()).casefold()


def _coerce(value: Any, schema: dict) -> Any:
    """A value normalised to its JSON Schema type; raise ValueError when it cannot be that type."""
    t = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(t, list):  # e.g. ["string", "null"]: the first type that fits
        if value is None and "null" in t:
            return None
        for one in t:
            if one == "null":
                continue
            try:
                return _coerce(value, {**schema, "type": one})
            except ValueError:
                continue
        raise ValueError(f"{value!r} is none of {t}")
    if t == "integer":
        if isinstance(value, bool):
            raise ValueError("bool is not an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+(\.0*)?\s*", value):
            return int(float(value))
        raise ValueError(f"{value!r} is not an integer")
    if t == "number":
        if isinstance(value, bool):
            raise ValueError("bool is not a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise ValueError(f"{value!r} is not a number")
    if t == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise ValueError(f"{value!r} is not a boolean")
    if t == "string":
        if isinstance(value, str):
            return _norm_str(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _norm_str(str(value))
        raise ValueError(f"{value!r} is not a string")
    if t == "array":
        if not isinstance(value, list):
            raise ValueError(f"{value!r} is not an array")
        return tuple(_coerce(v, schema.get("items") or {}) for v in value)
    if t == "object":
        if not isinstance(value, dict):
            raise ValueError(f"{value!r} is not an object")
        props = schema.get("properties") or {}
        return tuple(sorted((k, _coerce(v, props.get(k) or {})) for k, v in value.items()))
    return _norm_scalar(value)  # no type given: light normalisation


def _acceptable(gold_value: Any, schema: dict) -> list:
    """Gold in acceptable-values form (list; "" = may be omitted; arrays: list of lists), or a concrete value
    (traffic references) turned into that form."""
    is_array = isinstance(schema, dict) and (schema.get("type") == "array" or
                                             (isinstance(schema.get("type"), list) and "array" in schema["type"]))
    if is_array:
        if isinstance(gold_value, list) and gold_value and all(isinstance(v, list) or v == "" for v in gold_value):
            return gold_value
        return [gold_value]
    return gold_value if isinstance(gold_value, list) else [gold_value]


def _tools(example: Example) -> dict[str, dict]:
    obj = _loads(example.input)
    tools = obj.get("tools", []) if isinstance(obj, dict) else []
    out = {}
    for t in tools if isinstance(tools, list) else []:
        fn = t.get("function", t) if isinstance(t, dict) else {}
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn.get("parameters") or {}
    return out


def ast_check(example: Example, prediction: str | None) -> tuple[bool, str | None]:
    """BFCL-style AST check of one call: (correct, reason when not)."""
    pred = _loads(prediction)
    if not isinstance(pred, dict) or not isinstance(pred.get("name"), str):
        return False, "invalid_call"
    args = pred.get("arguments", {})
    if not isinstance(args, dict):
        return False, "arguments_not_an_object"
    gold = _loads(example.output) or {}
    if pred["name"] != gold.get("name"):
        return False, "wrong_function_name"
    params = _tools(example).get(gold["name"], {})
    props = params.get("properties") or {}
    gold_args = gold.get("arguments") or {}
    for name in params.get("required") or []:
        if name not in args:
            return False, f"missing_required_argument:{name}"
    for name in args:
        if name not in props and name not in gold_args:
            return False, f"unknown_argument:{name}"
    for name, gold_value in gold_args.items():
        schema = props.get(name) or {}
        accept = _acceptable(gold_value, schema)
        if name not in args:
            if "" not in accept:
                return False, f"missing_argument:{name}"
            continue
        try:
            got = _coerce(args[name], schema)
        except ValueError:
            return False, f"wrong_argument_type:{name}"
        ok = False
        for a in accept:
            if a == "":
                continue
            try:
                ok = _coerce(a, schema) == got
            except ValueError:
                ok = False
            if ok:
                break
        if not ok:
            return False, f"wrong_argument_value:{name}"
    for name in args:
        if name not in gold_args and name in props:
            return False, f"unexpected_argument:{name}"  # BFCL: an argument the answer does not allow
    return True, None


class FunctionCall(TaskPlugin):
    name, primary = "function_call", "ast_accuracy"

    def score(self, example, prediction):
        pred = _loads(prediction)
        gold = _loads(example.output) or {}
        ok, _ = ast_check(example, prediction)
        valid = isinstance(pred, dict) and self.invalid_reason(example, prediction) is None
        return {"ast_accuracy": float(ok), "name_accuracy": float(isinstance(pred, dict) and pred.get("name") == gold.get("name")),
                "valid": float(valid)}

    def error(self, example, prediction):
        ok, reason = ast_check(example, prediction)
        return None if ok else reason

    def slice_of(self, example):
        return (_loads(example.output) or {}).get("name") or super().slice_of(example)

    def aggregate(self, per_item, examples, predictions):
        out = super().aggregate(per_item, examples, predictions)
        out["invalid_rate"] = round(1 - out.get("valid", 0.0), 4)
        # Failure reasons without the argument name: which kind of mistake dominates.
        out["failure_kinds"] = dict(Counter(k.split(":")[0] for k, n in out["errors"].items() for _ in range(n)))
        return out


# --- generation ----------------------------------------------------------------------------------------------------


def chrf(hypothesis: str, reference: str, char_order: int = 6, beta: float = 2.0) -> float:
    """Sentence chrF in [0, 1], as sacrebleu's CHRF defaults (chrF2, character 6-grams, whitespace
    removed, effective-order averaging). sacrebleu when installed, this implementation otherwise."""
    try:
        from sacrebleu.metrics import CHRF
    except ImportError:
        return _chrf(hypothesis, reference, char_order, beta)
    return CHRF(char_order=char_order, beta=beta).sentence_score(hypothesis, [reference]).score / 100


def _ngrams(text: str, n: int) -> Counter:
    s = "".join(text.split())
    return Counter(s[i : i + n] for i in range(len(s) - n + 1))


def _chrf_stats(hyp: str, ref: str, char_order: int) -> list[tuple[int, int, int]]:
    out = []
    for n in range(1, char_order + 1):
        h, r = _ngrams(hyp, n), _ngrams(ref, n)
        out.append((sum(h.values()) if r else 0, sum(r.values()), sum(min(c, r[g]) for g, c in h.items() if g in r)))
    return out


def _chrf_from_stats(stats: list[tuple[int, int, int]], beta: float) -> float:
    f = beta ** 2
    prec = rec = 0.0
    eff = 0
    for n_hyp, n_ref, n_match in stats:
        if n_hyp > 0 and n_ref > 0:
            prec += n_match / n_hyp
            rec += n_match / n_ref
            eff += 1
    if not eff:
        return 0.0
    prec, rec = prec / eff, rec / eff
    return (1 + f) * prec * rec / (f * prec + rec) if prec + rec else 0.0


def _chrf(hyp: str, ref: str, char_order: int = 6, beta: float = 2.0) -> float:
    return _chrf_from_stats(_chrf_stats(hyp, ref, char_order), beta)


def corpus_chrf(hyps: Sequence[str], refs: Sequence[str], char_order: int = 6, beta: float = 2.0) -> float:
    """Corpus chrF in [0, 1]: n-gram statistics summed over items before the F-score."""
    if not hyps:
        return 0.0
    total = [[0, 0, 0] for _ in range(char_order)]
    for h, r in zip(hyps, refs):
        for i, st in enumerate(_chrf_stats(h, r, char_order)):
            for j in range(3):
                total[i][j] += st[j]
    return _chrf_from_stats([tuple(t) for t in total], beta)


class Generation(TaskPlugin):
    name, primary = "generation", "chrf"

    def score(self, example, prediction):
        valid = bool(prediction and prediction.strip())
        return {"chrf": chrf(prediction, example.output or "") if valid else 0.0, "valid": float(valid)}

    def error(self, example, prediction):
        if not (prediction and prediction.strip()):
            return "empty_output"
        s = self.score(example, prediction)["chrf"]
        return None if s >= 0.999 else f"chrF {int(s * 10) * 10}-{int(s * 10) * 10 + 10}%"

    def aggregate(self, per_item, examples, predictions):
        out = super().aggregate(per_item, examples, predictions)
        out["invalid_rate"] = round(1 - out.get("valid", 0.0), 4)
        out["chrf_corpus"] = round(corpus_chrf([p or "" for p in predictions], [e.output or "" for e in examples]), 4)
        return out


TASKS: dict[str, type[TaskPlugin]] = {
    "classification": Classification,
    "extraction": Extraction,
    "function_call": FunctionCall,
    "generation": Generation,
}


def get_task(cfg: SkillConfig) -> TaskPlugin:
    try:
        return TASKS[cfg.task](cfg)
    except KeyError:
        raise ValueError(f"task: no metric plug-in for task type {cfg.task!r}; known: {', '.join(TASKS)}") from None


def score_items(task: TaskPlugin, examples: Sequence[Example], predictions: Sequence[str | None]) -> tuple[list[dict], dict]:
    """Per-item scores and the aggregate table, in one call."""
    per_item = [task.score(e, p) for e, p in zip(examples, predictions)]
    return per_item, task.aggregate(per_item, examples, predictions)
