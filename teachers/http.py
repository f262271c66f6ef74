"""Async OpenAI-compatible HTTP backend on httpx (vLLM, SGLang, TGI, llama.cpp server,
Ollama, OpenAI, a LiteLLM proxy): the `completions` or `chat` endpoint.

It only sends one request and classifies what came back; concurrency, retries, the cache
and accounting live in `teachers.client.Teacher`. The API key goes into the Authorization
header of the client and nowhere else (not in errors, identity, cache or logs).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlparse

import httpx

from teachers.base import (Completion, FatalRequestError, Request, RetryableError, TeacherAuthError, TeacherError,
                           TeacherUnreachable)

log = logging.getLogger("distill.teachers")

TOP_LOGPROBS = 20  # the most OpenAI's chat endpoint returns


def first_token_scores(top: dict[str, float], options: tuple[str, ...]) -> dict[str, float]:
    """Each option's score from the first answer token's top logprobs (see OpenAIBackend._score)."""
    floor = min(top.values()) - math.log(2)
    out = {}
    for opt in options:
        # Tokens may come with or without the leading space the option starts with.
        matches = [(len(t.strip()), lp) for t, lp in top.items()
                   if t.strip() and (opt.startswith(t) or opt.lstrip().startswith(t.lstrip()))]
        out[opt] = max(matches)[1] if matches else floor
    return out


# RFC 9110 10.2.3: Retry-After = HTTP-date / delay-seconds, delay-seconds = 1*DIGIT (ASCII digits only:
# not "1e9", "5.0", "+5", " 5", "inf" or "٣"). More than 10 digits (over 300 years) is not a wait either.
_DELAY_SECONDS = re.compile(r"[0-9]{1,10}")
# The three HTTP-date forms a recipient must accept (RFC 9110 5.6.7), whole string, ASCII only.
_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = r"(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(?P<h>[0-9]{2}):(?P<m>[0-9]{2}):(?P<s>[0-9]{2})"
_HTTP_DATES = (
    re.compile(rf"{_DAY}, (?P<d>[0-9]{{2}}) {_MONTH} (?P<y>[0-9]{{4}}) {_TIME} GMT"),  # IMF-fixdate
    re.compile(r"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), "
               rf"(?P<d>[0-9]{{2}})-{_MONTH}-(?P<y>[0-9]{{2}}) {_TIME} GMT"),  # obsolete RFC 850
    re.compile(rf"{_DAY} {_MONTH} (?P<d>[ 0-9][0-9]) {_TIME} (?P<y>[0-9]{{4}})"),  # obsolete asctime (GMT)
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(value: str) -> datetime | None:
    """An RFC 9110 HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime forms) as an aware
    UTC datetime; None for anything else (another zone, missing "GMT", extra spaces, a bad day)."""
    for form in _HTTP_DATES:
        m = form.fullmatch(value)
        if m is None:
            continue
        year = int(m["y"])
        if len(m["y"]) == 2:  # RFC 9110: a two-digit year more than 50 years ahead is in the past century
            now = datetime.now(timezone.utc).year
            year += now - now % 100
            if year > now + 50:
                year -= 100
        try:
            return datetime(year, _MONTHS.index(m["mon"]) + 1, int(m["d"]), int(m["h"]), int(m["m"]), int(m["s"]),
                            tzinfo=timezone.utc)
        except ValueError:  # 31 Feb, 25:00:00
            return None
    return None


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds, per RFC 9110: delay-seconds (`1*DIGIT`, ASCII) or an HTTP-date (always
    GMT, whatever this machine's time zone; a date in the past is 0). None when absent or anything
    else ("1e9", "5.0", "-1", "+5", " 5", "inf", "٣", 11+ digits): the caller backs off on its own."""
    if not value:
        return None
    if _DELAY_SECONDS.fullmatch(value):
        return float(int(value))
    when = http_date(value)
    if when is None:
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _retry_after_of(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI's, more precise; ASCII digits only, like
    delay-seconds) or `Retry-After`; None if neither holds a valid value. Callers cap it
    (ClientSettings.max_retry_wait_s)."""
    ms = headers.get("retry-after-ms")
    if ms and _DELAY_SECONDS.fullmatch(ms):
        return int(ms) / 1000
    return _retry_after(headers.get("retry-after"))


@functools.lru_cache(maxsize=1)
def _ssl_context():
    import ssl

    import certifi

    return ssl.create_default_context(cafile=certifi.where())


class OpenAIBackend:
    """One OpenAI-compatible endpoint. `open()`/`aclose()` bracket each async run (the httpx
    client belongs to one event loop)."""

    def __init__(self, base_url: str, model: str, endpoint: str = "completions", api_key: str | None = None,
                 timeout_s: float = 60.0, max_connections: int = 64, name: str | None = None,
                 backend_label: str = "openai", identity: dict[str, Any] | None = None,
                 score_method: str = "auto"):
        if endpoint not in ("completions", "chat"):
            raise ValueError(f"teacher.endpoint must be 'completions' or 'chat', got {endpoint!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.endpoint = endpoint
        self.name = name or model
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self.backend_label = backend_label
        self._identity = identity  # e.g. the embedded llama.cpp server: its port changes every run
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client: httpx.AsyncClient | None = None
        self._clients: list[httpx.AsyncClient] = []
        self._rf_ok = True  # turned off when the server rejects response_format (answers are validated locally anyway)
        self._path = "/completions" if endpoint == "completions" else "/chat/completions"
        if score_method == "auto":
            score_method = "first_token" if endpoint == "chat" or backend_label == "llama_cpp" else "echo"
        self.score_method = score_method

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIBackend({self.base_url!r}, model={self.model!r}, endpoint={self.endpoint!r})"

    def identity(self) -> dict[str, Any]:
        """What makes an answer differ: the host (not path or credentials), model and endpoint."""
        if self._identity is not None:
            return dict(self._identity)
        return {"backend": self.backend_label, "host": urlparse(self.base_url).netloc, "model": self.model,
                "endpoint": self.endpoint}

    def check(self) -> None:
        """Fail fast, with one clear line, when the server does not answer."""
        try:
            r = httpx.get(f"{self.base_url}/models", headers=self._headers, timeout=5)
        except httpx.HTTPError as e:
            raise TeacherUnreachable(f"teacher unreachable at {self.base_url} ({type(e).__name__}: {e})") from None
        if r.status_code in (401, 403):
            raise TeacherAuthError(f"teacher at {self.base_url} refused the API key (HTTP {r.status_code}); "
                                   "check teacher.api_key_env / teacher.api_key_secret")
        if r.status_code >= 500:
            raise TeacherUnreachable(f"teacher unreachable at {self.base_url} (HTTP {r.status_code} on /models)")

    # httpcore's pool scans every connection for each request it places (quadratic at high
    # concurrency: 7 ms of CPU per request at 64 in flight, measured); clients of at most
    # SHARD connections each, used in turn, keep every scan short.
    SHARD = 8

    async def open(self) -> None:
        n = max(1, -(-self.max_connections // self.SHARD))
        per = -(-self.max_connections // n)
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        timeout = httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s))
        verify = _ssl_context() if self.base_url.startswith("https") else True  # one context, loaded once
        self._clients = [httpx.AsyncClient(base_url=self.base_url, headers=self._headers, limits=limits,
                                           timeout=timeout, verify=verify) for _ in range(n)]
        self._next = 0
        self._client = self._clients[0]

    async def aclose(self) -> None:
        for c in getattr(self, "_clients", []):
            await c.aclose()
        self._clients = []
        self._client = None

    def body(self, req: Request) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": req.max_tokens, "temperature": req.temperature,
                                "top_p": req.top_p, "seed": req.seed}
        if req.stop:
            body["stop"] = list(req.stop)
        if self.endpoint == "chat":
            msgs = req.messages or (("user", req.prompt or ""),)
            body["messages"] = [{"role": r, "content": c} for r, c in msgs]
        else:
            body["prompt"] = req.prompt_text()
        if req.response_format and self._rf_ok:
            rf = json.loads(req.response_format)
            if self.backend_label == "llama_cpp" and rf.get("type") == "json_schema":
                # llama-cpp-python's server takes {"type": "json_object", "schema": ...} (a grammar), not json_schema
                rf = {"type": "json_object", "schema": rf["json_schema"]["schema"]}
            body["response_format"] = rf
        return body

    async def send(self, req: Request) -> Completion:
        assert self._clients, "call open() first"
        if req.options is not None:
            return await self._score(req)
        return await self._post(req, self.body(req), self._read_completion)

    async def _score(self, req: Request) -> Completion:
        """Each option's log-likelihood after the prompt.

        echo: `echo` + `logprobs` on the completions endpoint return the logprob of every prompt
        token; an option's are the tokens past the prompt's end (one request per option).
        first_token: one request for the top-20 logprobs of the first answer token; an option
        scores the logprob of the longest listed token it starts with, and an option absent
        from the list gets an upper bound below the 20th (its true logprob is lower still)."""
        prompt = req.prompt_text()
        options = req.options or ()
        if self.score_method == "first_token":
            body = self.body(replace(req, max_tokens=1, stop=(), response_format=None, temperature=0.0))
            if self.endpoint == "chat":
                body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
            else:
                body["logprobs"] = TOP_LOGPROBS
            return await self._post(req, body, lambda data, t0: Completion(
                text=json.dumps(first_token_scores(self._top_logprobs(data), options)), finish_reason="scored",
                prompt_tokens=int((data.get("usage") or {}).get("prompt_tokens") or 0), completion_tokens=0,
                seconds=time.perf_counter() - t0))
        if self.endpoint != "completions":
            raise FatalRequestError("scoring_needs_completions", "echo scoring needs the completions endpoint")
        t0 = time.perf_counter()
        scores, prompt_tokens = {}, 0
        for opt in options:
            body = {"model": self.model, "prompt": prompt + opt, "max_tokens": 1, "temperature": 0.0,
                    "echo": True, "logprobs": 1}

            def read(data: dict[str, Any], t0: float, start=len(prompt), end=len(prompt + opt)) -> Completion:
                lp = data["choices"][0].get("logprobs") or {}
                offsets, values = lp.get("text_offset"), lp.get("token_logprobs")
                if not offsets or not values:
                    raise TeacherError(f"teacher at {self.base_url} returned no prompt logprobs for echo+logprobs, "
                                       "which the score answerer needs: set teacher.score_method: first_token, or "
                                       "use the label or self_consistency answerer in expansion.strategies")
                total = sum(v for o, v in zip(offsets, values) if start <= o < end and v is not None)
                return Completion(text=str(total), finish_reason="scored",
                                  prompt_tokens=int((data.get("usage") or {}).get("prompt_tokens") or 0),
                                  completion_tokens=0, seconds=time.perf_counter() - t0)

            c = await self._post(req, body, read)
            scores[opt] = float(c.text)
            prompt_tokens += c.prompt_tokens
        return Completion(text=json.dumps(scores), finish_reason="scored", prompt_tokens=prompt_tokens,
                          completion_tokens=0, seconds=time.perf_counter() - t0)

    def _top_logprobs(self, data: dict[str, Any]) -> dict[str, float]:
        lp = data["choices"][0].get("logprobs") or {}
        if self.endpoint == "chat":
            content = lp.get("content") or []
            top = {t["token"]: float(t["logprob"]) for t in (content[0].get("top_logprobs") or [])} if content else {}
        else:
            tops = lp.get("top_logprobs") or []
            top = {k: float(v) for k, v in (tops[0] or {}).items()} if tops else {}
        if not top:
            raise TeacherError(f"teacher at {self.base_url} returned no logprobs, which the score answerer needs: "
                               "use the label or self_consistency answerer in expansion.strategies")
        return top

    def _read_completion(self, data: dict[str, Any], t0: float) -> Completion:
        choice = data["choices"][0]
        text = choice["text"] if self.endpoint == "completions" else choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("text is not a string")
        usage = data.get("usage") or {}
        return Completion(text=text, finish_reason=choice.get("finish_reason") or "stop",
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          seconds=time.perf_counter() - t0)

    async def _post(self, req: Request, body: dict[str, Any], read) -> Completion:
        """POST one body and classify what came back; `read(json, t0)` makes the Completion."""
        client = self._clients[self._next % len(self._clients)]
        self._next += 1
        t0 = time.perf_counter()
        try:
            r = await client.post(self._path, json=body)
        except httpx.TimeoutException as e:
            raise RetryableError("timeout", detail=type(e).__name__) from None
        except httpx.TransportError as e:  # refused, reset, closed mid-response
            raise RetryableError("connection_error", detail=type(e).__name__) from None
        code = r.status_code
        if code == 429:
            raise RetryableError("http_429", retry_after=_retry_after_of(r.headers), congestion=True)
        if code >= 500:  # an error to retry; a congestion signal only when a 503 says when to come back
            wait = _retry_after_of(r.headers)
            raise RetryableError("http_5xx", retry_after=wait, detail=f"HTTP {code}",
                                 congestion=code == 503 and wait is not None)
        if code in (401, 403):
            raise TeacherAuthError(f"teacher at {self.base_url} refused the API key (HTTP {code}); "
                                   "check teacher.api_key_env / teacher.api_key_secret")
        if code in (400, 422) and req.response_format and self._rf_ok and "response_format" in r.text:
            self._rf_ok = False
            log.warning("teacher at %s rejected response_format (HTTP %d); sending without it, answers are "
                        "still validated locally", self.base_url, code)
            return await self.send(req)
        if code >= 400:
            raise FatalRequestError(f"http_{code}", detail=r.text[:200])
        try:
            return read(r.json(), t0)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RetryableError("malformed_response", detail=f"{type(e).__name__}: {str(e)[:100]}") from None
