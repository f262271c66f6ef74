"""The one small interface every teacher backend speaks, and the run's accounting.

A `Request` is one call (a prompt for the completions endpoint or local models, or
chat messages); a backend answers it with a `Completion` (text, finish reason, token
usage). Everything around the call (cache, retries, validation, accounting) lives in
`teachers.client.Teacher`, so a backend is only "send this, return that".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from teachers.local import Completion

__all__ = ["Completion", "Request", "Failure", "Backend", "AsyncBackend", "TeacherError", "TeacherUnreachable",
           "TeacherAuthError", "TeacherErrorRateExceeded", "RetryableError", "FatalRequestError", "percentile"]


class TeacherError(RuntimeError):
    """Base class for teacher errors that stop a run (the message says what to fix)."""


class TeacherUnreachable(TeacherError):
    pass


class TeacherAuthError(TeacherError):
    pass


class TeacherErrorRateExceeded(TeacherError):
    pass


class RetryableError(Exception):
    """A request failed in a way worth retrying (429, 5xx, timeout, broken connection).

    `retry_after`: the server's Retry-After in seconds, if it sent one. `congestion`: the server
    said it is overloaded (429, or 503 with Retry-After), so the client should send less."""

    def __init__(self, cause: str, retry_after: float | None = None, detail: str = "", congestion: bool = False):
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause, self.retry_after, self.detail, self.congestion = cause, retry_after, detail, congestion


class FatalRequestError(Exception):
    """A request the server will never answer (e.g. 400 prompt too long): recorded, not retried."""

    def __init__(self, cause: str, detail: str = ""):
        super().__init__(f"{cause}: {detail}" if detail else cause)
        self.cause, self.detail = cause, detail


@dataclass(frozen=True)
class Request:
    """One teacher call. `sample_index` tells apart n samples of the same prompt (self-consistency);
    `attempt` tells apart re-asks after an invalid answer, so each has its own cache entry."""

    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None  # ((role, content), ...), for chat endpoints
    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ("\n",)
    sample_index: int = 0
    seed: int = 0
    response_format: str | None = None  # canonical JSON text of the OpenAI response_format payload
    attempt: int = 0
    # Scoring instead of sampling: the teacher returns each option's log-likelihood after the
    # prompt (Completion.text is {"option": logprob, ...} as JSON) and writes nothing.
    options: tuple[str, ...] | None = None
    # Constrained decoding for a local model (canonical JSON of a core.tasks answer_grammar spec);
    # HTTP backends use response_format instead.
    grammar: str | None = None

    def cache_key(self, identity: dict[str, Any]) -> str:
        """sha256 of who answers (backend, host, model) and everything that shapes the answer."""
        payload = {"who": identity, "prompt": self.prompt, "messages": self.messages, "max_tokens": self.max_tokens,
                   "temperature": self.temperature, "top_p": self.top_p, "stop": list(self.stop),
                   "sample": self.sample_index, "seed": self.seed, "response_format": self.response_format,
                   "attempt": self.attempt}
        if self.options is not None:  # only scoring requests carry it, so earlier cache keys stay valid
            payload["options"] = list(self.options)
        if self.grammar is not None:  # likewise: only constrained requests carry it
            payload["grammar"] = self.grammar
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def prompt_text(self) -> str:
        """The prompt for a completions endpoint or a local model: chat messages joined by blank
        lines (a base model has no chat template)."""
        return self.prompt if self.prompt is not None else "\n\n".join(c for _, c in self.messages or ())

    def text_for_tokens(self) -> str:
        return self.prompt if self.prompt is not None else "\n".join(c for _, c in (self.messages or ()))


@dataclass
class Failure:
    """A request that ended without a kept response, and why (snake_case cause)."""

    cause: str
    detail: str = ""
    attempts: int = 1
    text: str | None = None  # the last answer, for invalid-output failures


class Backend(Protocol):
    """A synchronous batch backend (local transformers)."""

    name: str

    def identity(self) -> dict[str, Any]: ...

    def complete_requests(self, requests: Sequence[Request]) -> list[Completion]: ...


class AsyncBackend(Protocol):
    """An async one-request-at-a-time backend (HTTP): the client runs many at once."""

    name: str

    def identity(self) -> dict[str, Any]: ...

    async def send(self, request: Request) -> Completion: ...

    async def aclose(self) -> None: ...


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class Accounting:
    """What a run cost: one per Teacher, summed over every strategy's requests."""

    requests: int = 0  # logical requests (incl. re-asks after invalid answers)
    cache_hits: int = 0
    sent: int = 0  # calls that reached the backend, retries included
    retries: int = 0
    kept: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    invalid_retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def fail(self, cause: str) -> None:
        self.failures[cause] = self.failures.get(cause, 0) + 1

    def to_dict(self, prices: dict[str, float] | None = None) -> dict[str, Any]:
        p50, p95 = percentile(self.latencies, 0.5), percentile(self.latencies, 0.95)
        cost = None
        if prices:
            cost = round(self.prompt_tokens / 1000 * prices.get("prompt_per_1k", 0.0)
                         + self.completion_tokens / 1000 * prices.get("completion_per_1k", 0.0), 6)
        return {"requests": self.requests, "cache_hits": self.cache_hits, "sent": self.sent, "retries": self.retries,
                "kept": self.kept, "failures": dict(sorted(self.failures.items())),
                "invalid_retries": self.invalid_retries, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "latency_p50_s": None if p50 is None else round(p50, 4),
                "latency_p95_s": None if p95 is None else round(p95, 4),
                "estimated_cost": cost, "seconds": round(self.seconds, 2)}
