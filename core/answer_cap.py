"""Token caps that hold the longest answer a skill's grammar allows.

An answer cap (`gates.max_new_tokens`: evaluation, registry and gateway decoding; `teacher.answer_max_tokens`:
the teacher's labels) smaller than the longest allowed answer cuts it, and a cut answer is invalid: a skill
with a label like `refund_not_received_by_customer` under the old fixed cap of 8 had 10.8% invalid answers
under the grammar (issue 36). So:

- The default cap is max(the task type's default, the longest answer the cap must hold, in tokens, plus
  one for the stop token). Without a tokenizer the count is a bound that holds for every tokenizer this
  project loads (byte-level BPE and SentencePiece with byte fallback spend at most one token per UTF-8
  byte), so the default never cuts, whatever the student or teacher. Decoding ends at the grammar's end or
  EOS, so a roomier cap costs nothing on valid answers.
- An explicit cap smaller than the longest answer counted with the student's tokenizer is refused,
  naming the key and the answer it would cut (`cap_problems`: `distill skills`, and the run's start).

What "the answers a cap must hold" are is the task type's (`TaskType.cap_answers`): every label
(classification), every label at once (multi_label), the object with every key and null values
(extraction), a call of the longest function name with no arguments (function_call); free text has none.
"""

from __future__ import annotations

from typing import Any, Sequence

STOP = 1  # the EOS (or newline) that ends an answer is generated too, within max_new_tokens


def count_tokens(text: str, tokenizer: Any = None) -> int:
    """Tokens of `text` as generated after the prompt: exact with a tokenizer (no special tokens),
    else an upper bound for byte-level tokenizers (UTF-8 bytes, plus one for a word-start marker)."""
    if tokenizer is None:
        return len(text.encode("utf-8")) + 1
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def longest_answer(cfg, tokenizer: Any = None, inputs: Sequence[str] = ()) -> tuple[int, str | None]:
    """(tokens the cap must allow, stop included; the answer that needs them), (0, None) for free text."""
    from core.tasks import get_task

    answers = get_task(cfg).cap_answers(inputs)
    if not answers:
        return 0, None
    counted = [(count_tokens(a, tokenizer) + STOP, a) for a in answers]
    return max(counted, key=lambda c: c[0])


def default_cap(cfg, type_default: int, inputs: Sequence[str] = ()) -> int:
    """The cap an unset key takes: the task type's default, raised to hold the longest allowed answer
    (tokenizer-free bound, so evaluation, registry and gateway all derive the same number)."""
    return max(type_default, longest_answer(cfg, None, inputs)[0])


def cap_problems(cfg, tokenizer: Any, inputs: Sequence[str] = ()) -> list[str]:
    """Each explicit cap smaller than the longest allowed answer in the student's tokens, naming the key,
    the answer it would cut and the fix."""
    need, answer = longest_answer(cfg, tokenizer, inputs)
    out = []
    for key, value in (("gates.max_new_tokens", cfg.gates.max_new_tokens),
                       ("teacher.answer_max_tokens", cfg.teacher.answer_max_tokens)):
        if value is not None and answer is not None and value < need:
            out.append(f"{key}: {value} tokens would cut the answer {answer.strip()!r}, which needs {need} "
                       f"({need - STOP} tokens and the stop) with the student's tokenizer; set {key} to at least "
                       f"{need} or remove the key (the default holds every answer)")
    return out


def local_tokenizer(spec: str) -> Any:
    """The tokenizer of model `spec` when it is already on this machine (a local folder, the converted
    bundled model, a Hub id in the cache), else None: `distill skills` downloads and converts nothing."""
    from pathlib import Path

    from core.workdir import models_dir

    bundled = {"bundled:gemma-3-270m": "gemma-3-270m"}  # trainers.base_model.BUNDLED (core sits below it)
    if spec in bundled:
        path = models_dir() / bundled[spec]
        if not (path / "CONVERTED_FROM").is_file():
            return None
        spec = str(path)
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(Path(spec).expanduser()) if Path(spec).expanduser().exists() else spec,
                                             local_files_only=True)
    except Exception:  # not here, or not a model: the run's start checks again with the resolved model
        return None
