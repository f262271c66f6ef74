"""generation: the input is text; the answer is one line of text, or JSON when the skill sets an
`output_schema`. Scored with chrF (Popović 2015, "chrF: character n-gram F-score for automatic MT
evaluation"), in [0, 1]."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from core.tasks.base import TaskType, bounded_schema, json_completion, json_output_problem, json_parse, \
    labels_problems, register, strict_ok

# A generated text counts as "right" for routing when its chrF against the reference reaches this;
# 0.6 chrF is a close paraphrase in practice.
OK_CHRF = 0.6


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


@register
class Generation(TaskType):
    name, primary = "generation", "chrf"
    scaffold = {
        "instruction": "Rewrite the input as one short, polite sentence.",
        "input_name": "Input", "output_name": "Output",
        "floor": {"chrf": 0.3},
        "example": {"id": "seed-001", "input": "send me the report now", "output": "Could you send me the report, please?"},
    }

    @classmethod
    def config_problems(cls, cfg):
        return labels_problems(cfg, required=False)  # output_schema is optional: answers are then JSON

    @property
    def json_output(self):
        return self.cfg.output_schema is not None

    @property
    def answer_format(self):  # type: ignore[override]
        return "json" if self.json_output else "text"

    def format_completion(self, output):
        return json_completion(output) if self.json_output else super().format_completion(output)

    def parse_output(self, text):
        return json_parse(text) if self.json_output else super().parse_output(text)

    def output_problem(self, output, input=None):
        if self.json_output:
            return json_output_problem(self.cfg.output_schema, output, want_object=False)
        return super().output_problem(output, input)

    def answer_schema(self, input=None):
        schema = self.cfg.output_schema
        return (schema, strict_ok(schema)) if schema is not None else None

    def answer_grammar(self, input=None):
        if self.cfg.output_schema is None:
            return None  # free text: no grammar
        return {"prefix": " ", "json_schema": bounded_schema(self.cfg)}

    # --- metric --------------------------------------------------------------------------------------------------

    def score(self, example, prediction):
        valid = bool(prediction and prediction.strip())
        return {"chrf": chrf(prediction, example.output or "") if valid else 0.0, "valid": float(valid)}

    def error(self, example, prediction):
        if not (prediction and prediction.strip()):
            return "empty_output"
        s = self.score(example, prediction)["chrf"]
        return None if s >= 0.999 else f"chrF {int(s * 10) * 10}-{int(s * 10) * 10 + 10}%"

    def is_correct(self, scores):
        return scores["chrf"] >= OK_CHRF

    def aggregate(self, per_item, examples, predictions):
        out = super().aggregate(per_item, examples, predictions)
        out["invalid_rate"] = round(1 - out.get("valid", 0.0), 4)
        out["chrf_corpus"] = round(corpus_chrf([p or "" for p in predictions], [e.output or "" for e in examples]), 4)
        return out
