"""The small model on a vLLM-compatible server: `vllm serve BASE --enable-lora --lora-modules
SKILL@VERSION=FOLDER ...`. Each batch goes out as one /v1/completions call with `model` = the
adapter's name `skill@version`, greedy, `max_tokens` from skill.json, stop at the newline and
`logprobs: 1`; the confidence is read as the gateway's local engine reads it (routing.json's
definition): the mean log-probability of the answer's tokens, the text before the stop newline,
the newline not counted."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from gateway.engine import Answer, finite_or_none

log = logging.getLogger("distill.gateway")

RETRIES = 3  # attempts after the first, for connection errors, 429 and 5xx only
TIMEOUT_S = 120.0


class RemoteError(RuntimeError):
    """The server answered with an error that retrying will not fix, or kept failing."""


class RemoteUnavailable(RemoteError):
    """The server kept failing (network, 429, 5xx) through every retry: not the inputs' fault, so a
    failed batch is not split and decoded item by item."""


def answer_confidence(text: str, lp: dict | None) -> tuple[str, float | None]:
    """(answer, confidence) from a completion's text and its `logprobs` ({"tokens", "token_logprobs",
    "text_offset"}): the answer is the text before the first newline; the confidence the mean logprob
    of the tokens that start inside it (offsets are counted from the first generated token), None
    without per-token logprobs."""
    answer = text.split("\n", 1)[0]
    if not lp or not lp.get("token_logprobs") or not lp.get("text_offset"):
        return answer, None
    offsets, values = lp["text_offset"], lp["token_logprobs"]
    start = offsets[0]
    try:
        vals = [float(v) for o, v in zip(offsets, values) if v is not None and o - start < len(answer)]
    except (TypeError, ValueError):  # a logprob that is not a number: no confidence
        return answer, None
    # A -inf (or NaN) token logprob leaves no usable mean: None, routed as an invalid confidence.
    return answer, (finite_or_none(sum(vals) / len(vals)) if vals else None)


def _token_counts(choice: dict, usage: dict | None, rows: int) -> tuple[int, int]:
    """(prompt, completion) tokens of one choice: its own token ids where the server returns them
    (vLLM's return_token_ids), else the generated tokens of its logprobs; the call's usage when the
    call had one prompt; 0 where the server says nothing."""
    usage = usage if isinstance(usage, dict) else {}
    p, c = choice.get("prompt_token_ids"), choice.get("token_ids")
    lp = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else {}
    prompt = len(p) if isinstance(p, list) else (int(usage.get("prompt_tokens") or 0) if rows == 1 else 0)
    if isinstance(c, list):
        completion = len(c)
    elif isinstance(lp.get("tokens"), list):
        completion = len(lp["tokens"])
    else:
        completion = int(usage.get("completion_tokens") or 0) if rows == 1 else 0
    return prompt, completion


def answer_token_logprobs(text: str, lp: dict | None) -> list[float]:
    """The log-probabilities of the tokens that start inside the answer (as `answer_confidence` reads them)."""
    answer = text.split("\n", 1)[0]
    if not lp or not lp.get("token_logprobs") or not lp.get("text_offset"):
        return []
    start = lp["text_offset"][0]
    return [float(v) for o, v in zip(lp["text_offset"], lp["token_logprobs"]) if v is not None and o - start < len(answer)]


class OpenAIEngine:
    """Adapters are served by the remote server (registered at its start with --lora-modules);
    `load` checks the server lists `skill@version` and reads the tokenizer only for chat-template
    prompts. Thread-safe: every version's batcher calls `decode` from its own thread. Its logprobs are
    the model's own (vLLM's default logprobs mode): the grammar-renormalised signals are not available."""

    signals = ("mean_logprob", "min_logprob")

    def __init__(self, base_url: str, api_key_env: str | None = None, timeout_s: float = TIMEOUT_S,
                 retries: int = RETRIES):
        import httpx

        if not base_url:
            raise ValueError("backend_url: required with backend 'openai' (the vLLM server, http://host:8000/v1)")
        headers = {}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise ValueError(f"backend_api_key_env: the environment variable {api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.base_url, self.retries = base_url.rstrip("/"), retries
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self.tokenizers: dict[str, Any] = {}
        self.free_rows = 0  # answers decoded free because their grammar could not be built
        self._lock = threading.Lock()

    # --- the network -------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kw) -> dict:
        import httpx

        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(0.2 * 2 ** (attempt - 1), 2.0))
            try:
                r = self.client.request(method, path, **kw)
            except httpx.TransportError as e:  # refused, reset, timed out: the network, so retry
                last = f"{type(e).__name__}: {e}"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code >= 400:
                raise RemoteError(f"{self.base_url}{path}: HTTP {r.status_code}: {r.text[:300]}")
            try:
                return r.json()
            except ValueError:
                last = f"malformed JSON: {r.text[:200]}"
        raise RemoteUnavailable(f"{self.base_url}{path}: no answer after {self.retries + 1} attempts ({last})")

    # --- the engine interface ------------------------------------------------------------------------------------

    def load(self, key: str, folder: Path, spec: dict) -> None:
        """Check the server serves adapter `key` (vllm --lora-modules KEY=FOLDER). Raises RegistryError when not."""
        from registry.store import RegistryError

        try:
            names = {m.get("id") for m in self._call("GET", "/models").get("data", [])}
        except RemoteError as e:
            raise RegistryError(f"{key}: cannot list the backend's models ({e})") from None
        if key not in names:
            raise RegistryError(f"{key}: the backend at {self.base_url} does not serve it (start vLLM with "
                                f"--lora-modules {key}={folder}); it serves {sorted(n for n in names if n)}")
        tok = None
        if spec.get("prompt_format") == "chat_template":
            from transformers import AutoTokenizer

            from registry.consumer import base_model_of
            from trainers.base_model import resolve_model

            tok = AutoTokenizer.from_pretrained(resolve_model(spec.get("base_model") or base_model_of(folder), "base_model"))
        with self._lock:
            self.tokenizers[key] = tok

    def unload(self, key: str) -> None:
        with self._lock:
            self.tokenizers.pop(key, None)

    def tokenizer(self, key: str):
        return self.tokenizers.get(key)

    def decode(self, key: str, cfg, prompts: Sequence[str], max_new_tokens: int,
               inputs: Sequence[str] | None = None, signal: str = "mean_logprob") -> list[Answer]:
        """Greedy answers with confidences for `prompts`, in order. Under the skill's answer grammar
        when skill.json says it was measured so, as the local engine decodes: each grammar goes out as
        xgrammar EBNF in `structured_outputs: {"grammar": ...}` (vLLM >= 0.10.2; its xgrammar backend
        compiles it), one /completions call per distinct grammar (one for a label set; one per tool
        set for function calls, which need `inputs`). A grammar that cannot be built sends its rows
        free (logged once per spec, counted in `free_rows`); answers are parsed and checked as always.
        Raises RemoteError when the server fails."""
        from core.prompting import parse_output
        from eval_gates.predict import answer_grammars
        from teachers.constrained import GrammarError, grammar_ebnf

        specs = answer_grammars(cfg, len(prompts), inputs) or [None] * len(prompts)
        groups: dict[str | None, list[int]] = {}
        for i, spec in enumerate(specs):
            text = None
            if spec is not None:
                try:
                    text = grammar_ebnf(spec)
                except GrammarError:  # logged once per spec where it was built
                    self.free_rows += 1
            groups.setdefault(text, []).append(i)
        out: list[Answer | None] = [None] * len(prompts)
        for text, rows in groups.items():
            # return_token_ids (vLLM >= 0.10.2): per-choice prompt token counts for the response's usage
            body = {"model": key, "prompt": [prompts[i] for i in rows], "max_tokens": int(max_new_tokens),
                    "temperature": 0.0, "stop": ["\n"], "logprobs": 1, "return_token_ids": True}
            if text is not None:
                body["structured_outputs"] = {"grammar": text}
            data = self._call("POST", "/completions", json=body)
            choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
            if len(choices) != len(rows):
                raise RemoteError(f"{key}: {len(choices)} choices for {len(rows)} prompts")
            for i, c in zip(rows, choices):
                text_i = c.get("text") or ""
                raw, conf = answer_confidence(text_i, c.get("logprobs"))
                if signal == "min_logprob":
                    conf = min(answer_token_logprobs(text_i, c.get("logprobs")), default=None)
                elif signal != "mean_logprob":
                    conf = None  # not readable from this server's logprobs (the gateway keeps valid answers)
                finish = "stop" if "\n" in text_i else (c.get("finish_reason") or "stop")
                ptoks, ctoks = _token_counts(c, data.get("usage"), len(rows))
                out[i] = Answer(raw=raw, parsed=parse_output(cfg, raw), confidence=conf, finish_reason=finish,
                                prompt_tokens=ptoks, completion_tokens=ctoks)
        return out

    def close(self) -> None:
        self.client.close()
