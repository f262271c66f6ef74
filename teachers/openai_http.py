"""OpenAI-compatible HTTP teacher (vLLM, llama.cpp server, TGI, Ollama, OpenAI, LiteLLM).

Minimal spine version: the completions endpoint, a bounded thread pool, a per-request
timeout and a few retries on connection errors, 429 and 5xx. The key is read from the
environment variable the skill names and is never logged or stored.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import httpx

from teachers.local import Completion


class TeacherUnreachable(RuntimeError):
    pass


class OpenAITeacher:
    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout_s: float = 60.0,
                 max_in_flight: int = 8, retries: int = 2):
        self.base_url = base_url.rstrip("/")
        self.name = model
        self.model = model
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers)
        self.max_in_flight = max_in_flight
        self.retries = retries

    def check(self) -> None:
        """Fail fast, with one clear line, when the server does not answer."""
        try:
            self.client.get(f"{self.base_url}/models", timeout=5).raise_for_status()
        except httpx.HTTPError as e:
            raise TeacherUnreachable(f"teacher unreachable at {self.base_url} ({type(e).__name__}: {e})") from None

    def _one(self, prompt: str, max_tokens: int, temperature: float, seed: int, stop: list[str]) -> Completion:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
                "seed": seed, "stop": stop}
        for attempt in range(self.retries + 1):
            t0 = time.time()
            try:
                r = self.client.post(f"{self.base_url}/completions", json=body)
                if r.status_code == 429 or r.status_code >= 500:
                    raise httpx.HTTPStatusError(f"status {r.status_code}", request=r.request, response=r)
                r.raise_for_status()
                data = r.json()
                choice = data["choices"][0]
                usage = data.get("usage") or {}
                return Completion(text=choice.get("text", ""), finish_reason=choice.get("finish_reason") or "stop",
                                  prompt_tokens=int(usage.get("prompt_tokens", 0)),
                                  completion_tokens=int(usage.get("completion_tokens", 0)), seconds=time.time() - t0)
            except (httpx.TransportError, httpx.HTTPStatusError) as e:
                if attempt == self.retries:
                    raise TeacherUnreachable(f"teacher request to {self.base_url} failed: {e}") from None
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def complete(self, prompts: Sequence[str], max_new_tokens: int, temperature: float = 0.0, batch_size: int = 16,
                 seed: int = 0, stop_at_newline: bool = True,
                 progress: Callable[[int], None] | None = None) -> list[Completion]:
        stop = ["\n"] if stop_at_newline else []

        def run(i_p):
            i, p = i_p
            c = self._one(p, max_new_tokens, temperature, seed * 100_003 + i, stop)
            if progress:
                progress(1)
            return c

        with ThreadPoolExecutor(max_workers=self.max_in_flight) as pool:
            return list(pool.map(run, enumerate(prompts)))
