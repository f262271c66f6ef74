"""extraction: the input is text; the answer is a JSON object matching the skill's `output_schema`.

The metric is field-level: nested objects flatten to dotted paths, strings compare after case and
whitespace folding, numbers by value; empty values (null, "", []) count as absent.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

from core.tasks.base import TaskType, bounded_schema, json_completion, json_output_problem, json_parse, \
    labels_problems, loads, register, strict_ok


def norm_scalar(v: Any) -> Any:
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
        return tuple(norm_scalar(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, norm_scalar(x)) for k, x in v.items()))
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
    out[prefix[:-1]] = norm_scalar(obj)
    return out


@register
class Extraction(TaskType):
    name, primary = "extraction", "field_f1"
    answer_format = "json"
    scaffold = {
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
    }

    @classmethod
    def config_problems(cls, cfg):
        out = labels_problems(cfg, required=False)
        if cfg.output_schema is None:
            out.append("output_schema: an extraction skill needs the JSON Schema of its answer object")
        elif cfg.output_schema.get("type") != "object":
            out.append("output_schema: an extraction answer is a JSON object; set `type: object`")
        return out

    @property
    def json_output(self):
        return True

    def format_completion(self, output):
        return json_completion(output)

    def parse_output(self, text):
        return json_parse(text)

    def output_problem(self, output, input=None):
        return json_output_problem(self.cfg.output_schema, output, want_object=True)

    def answer_schema(self, input=None):
        return self.cfg.output_schema, strict_ok(self.cfg.output_schema)

    def answer_grammar(self, input=None):
        return {"prefix": " ", "json_schema": bounded_schema(self.cfg)}

    def cap_answers(self, inputs=()):
        # Values are free, so no longest answer: the cap must at least hold every key with a null value.
        keys = list((self.cfg.output_schema or {}).get("properties") or {})
        return [json_completion(json.dumps({k: None for k in keys}))] if keys else []

    # --- metric --------------------------------------------------------------------------------------------------

    def _counts(self, example, prediction) -> tuple[int, int, int, bool]:
        gold = flatten(loads(example.output) or {})
        pred_obj = loads(prediction)
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
        obj = loads(prediction)
        if not isinstance(obj, dict):
            return "invalid_json"
        reason = self.invalid_reason(example, prediction)
        if reason:
            return reason
        gold, pred = flatten(loads(example.output) or {}), flatten(obj)
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
            gold = flatten(loads(ex.output) or {})
            pobj = loads(pred)
            pf = flatten(pobj) if isinstance(pobj, dict) else {}
            for k, v in gold.items():
                total[k] += 1
                hit[k] += pf.get(k) == v
        out["per_field_recall"] = {k: round(hit[k] / total[k], 4) for k in sorted(total)}
        out["slices"] = out["slices"] or dict(out["per_field_recall"])
        return out
