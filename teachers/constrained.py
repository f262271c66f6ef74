"""Constrained decoding for `LocalModel.complete`: grammars from a task type's `answer_grammar`,
compiled and enforced by xgrammar (the structured-generation engine vLLM and SGLang use), through
its transformers logits-processor integration (`xgrammar.contrib.hf.LogitsProcessor`).

A grammar spec (core.tasks.base.TaskType.answer_grammar) is one of {"choices": [...]},
{"json_schema": {...}} or {"regex": "..."}, each after an optional literal "prefix" (the
completion's leading space). JSON is compact with the project's canonical separators (one line,
as trained). Compiled grammars are cached per tokenizer and spec: a function call's per-request
schema repeats for every request with the same tools.
"""

from __future__ import annotations

import json
import logging
import threading
from functools import lru_cache
from typing import Any, Sequence

log = logging.getLogger(__name__)

# Compiled grammars kept per model (a skill's label set, a schema, the tool sets of recent traffic).
CACHE_SIZE = 256


class GrammarError(ValueError):
    """A grammar spec the engine cannot compile (names the spec kind and the engine's reason)."""


def engine_version() -> str | None:
    """"xgrammar <version>" when the engine is installed, else None."""
    try:
        from importlib.metadata import version

        return f"xgrammar {version('xgrammar')}"
    except Exception:
        return None


def _ebnf_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string literal is a valid EBNF string literal


def _kind(spec: dict[str, Any]) -> str:
    """Which of choices / json_schema / regex a spec is; raises GrammarError unless exactly one."""
    kinds = [k for k in ("choices", "json_schema", "regex") if k in spec]
    if len(kinds) != 1:
        raise GrammarError(f"a grammar spec has exactly one of choices, json_schema, regex; got keys {sorted(spec)}")
    return kinds[0]


def _xgr():
    try:
        import xgrammar as xgr
    except ImportError:
        raise ImportError("decoding.constrained needs xgrammar: pip install 'xgrammar==0.2.9' "
                          "(or set decoding.constrained: false in the skill file)") from None
    return xgr


def build_grammar(spec: dict[str, Any]):
    """The xgrammar Grammar of a spec (not compiled: no tokenizer needed). Raises GrammarError for a
    malformed spec or one the engine cannot parse (naming the kind and the engine's reason),
    ImportError without xgrammar."""
    xgr = _xgr()
    kind = _kind(spec)
    body = spec[kind]
    if kind == "choices" and not body:
        raise GrammarError("choices: empty list")
    try:
        if kind == "choices":
            g = xgr.Grammar.from_ebnf("root ::= " + " | ".join(_ebnf_literal(str(c)) for c in body))
        elif kind == "regex":
            g = xgr.Grammar.from_regex(body)
        else:
            g = xgr.Grammar.from_json_schema(json.dumps(body, ensure_ascii=False), any_whitespace=False,
                                             separators=(",", ":"), strict_mode=True)
    except Exception as e:  # xgrammar raises RuntimeError / ValueError with its parser's message
        raise GrammarError(f"{kind}: xgrammar cannot compile it ({str(e).splitlines()[0][:300]})") from None
    prefix = spec.get("prefix") or ""
    if prefix:
        g = xgr.Grammar.concat(xgr.Grammar.from_ebnf("root ::= " + _ebnf_literal(prefix)), g)
    return g


@lru_cache(maxsize=CACHE_SIZE)
def _ebnf_or_error(key: str) -> str | GrammarError:
    # A spec that cannot be built is cached too (as its error): built and logged once, not per row.
    try:
        return str(build_grammar(json.loads(key)))
    except GrammarError as e:
        log.warning("constrained decoding: %s; its answers are decoded free", e)
        return e


def grammar_ebnf(spec: dict[str, Any]) -> str:
    """The spec as xgrammar's EBNF text (root rule `root`), the same grammar the local decode path
    compiles: what a vLLM server decodes under with `structured_outputs: {"grammar": text}` (its
    xgrammar backend parses it back). Cached per spec, failures included. Raises GrammarError when
    it cannot be built."""
    out = _ebnf_or_error(json.dumps(spec, ensure_ascii=False, separators=(",", ":")))
    if isinstance(out, GrammarError):
        raise GrammarError(str(out))
    return out


class GrammarCompiler:
    """xgrammar's compiler for one tokenizer, with compiled grammars cached by spec.

    `vocab_size`: the model's logits width (may exceed the tokenizer's for padding);
    `stop_token_ids`: the tokens that end an answer once the grammar is complete (EOS).
    Raises ImportError with the install line when xgrammar is missing."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: Sequence[int]):
        xgr = _xgr()
        self.xgr = xgr
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                       stop_token_ids=list(stop_token_ids))
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=1)
        self.lock = threading.Lock()
        self._compile = lru_cache(maxsize=CACHE_SIZE)(self._compile_text)
        self.failed = 0  # rows whose spec did not compile (decoded free)
        self._failed: dict[str, str] = {}  # spec key -> why it did not compile

    def _compile_text(self, key: str):
        spec = json.loads(key)
        grammar = build_grammar(spec)  # raises GrammarError
        try:
            return self.compiler.compile_grammar(grammar)
        except Exception as e:  # xgrammar raises RuntimeError / ValueError with its parser's message
            raise GrammarError(f"{_kind(spec)}: xgrammar cannot compile it ({str(e).splitlines()[0][:300]})") from None

    def compile(self, spec: dict[str, Any]):
        """The compiled grammar of `spec` (cached). Raises GrammarError."""
        # Key order kept: a schema's property order is the order the answer is written in (as trained).
        key = json.dumps(spec, ensure_ascii=False, separators=(",", ":"))
        with self.lock:
            if key in self._failed:  # a spec that did not compile is not tried again (nor logged again)
                raise GrammarError(self._failed[key])
            try:
                return self._compile(key)
            except GrammarError as e:
                if len(self._failed) < CACHE_SIZE:
                    self._failed[key] = str(e)
                    log.warning("constrained decoding: %s; its answers are decoded free", e)
                raise

    def matchers(self, specs: Sequence[dict[str, Any] | None]) -> list:
        """One fresh xgrammar GrammarMatcher per row (teachers.greedy), compiled as `processor` compiles: a None
        row, or one whose spec does not compile (logged, counted in `failed`), is decoded free (any line)."""
        free = {"regex": r"[^\n]*\n?"}
        out = []
        for spec in specs:
            try:
                g = self.compile(spec if spec is not None else free)
            except GrammarError:
                self.failed += 1
                g = self.compile(free)
            out.append(self.xgr.GrammarMatcher(g))
        return out

    def processor(self, specs: Sequence[dict[str, Any] | None]):
        """A fresh logits processor for one generate() call over len(specs) rows (one spec per row;
        a None row, or one whose spec does not compile (logged, counted in `failed`), is decoded
        free: any line, ended by its newline)."""
        free = {"regex": r"[^\n]*\n?"}
        grammars = []
        for spec in specs:
            try:
                grammars.append(self.compile(spec if spec is not None else free))
            except GrammarError:
                # One request's odd tool schema must not fail its whole batch: that row goes free (its
                # answer is still parsed and checked); the reason was logged once per spec.
                self.failed += 1
                grammars.append(self.compile(free))
        return self.xgr.contrib.hf.LogitsProcessor(grammars if len(grammars) > 1 else grammars[0])
