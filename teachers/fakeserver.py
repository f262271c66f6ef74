"""A small OpenAI-compatible server on loopback that answers after a fixed delay and injects
faults (429 with Retry-After, 500, 503 with Retry-After, slow answers, malformed JSON, dropped
connections), and optionally enforces a real rate limit (a token bucket: 429 with Retry-After
beyond it).

Used by the fault tests and benchmarks/teacher_throughput.py: a real server (aiohttp) with
real sockets, where a fault is what a real endpoint cannot be made to do on demand.
`GET /stats` returns request counts (`?times=1`: also when each answer went out), so a test
can see what the client actually sent; `POST /admin/rate {"rate": R}` changes the rate limit and
`POST /admin/reset {"fault_rate": f, "seed": s, "rate_limit": R, ...}` starts a fresh measurement.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import random
import threading
import time
from collections import Counter
from typing import Callable

from aiohttp import web

# fault(prompt, nth request for this prompt (1-based), nth request overall) -> None or a fault name
FaultPolicy = Callable[[str, int, int], str | None]
FAULTS = ("429", "500", "503", "slow", "malformed", "drop")


def default_answer(prompt: str, body: dict) -> str:
    return "answer " + hashlib.sha256(prompt.encode()).hexdigest()[:8]


def random_faults(rate: float, kinds: tuple[str, ...] = ("429", "500"), seed: int = 0) -> FaultPolicy:
    rng = random.Random(seed)
    return lambda prompt, nth, total: rng.choice(kinds) if rng.random() < rate else None


class TokenBucket:
    """A rate limit as API gateways enforce it: `rate` tokens a second, at most `burst` kept;
    each request takes one token or is refused. Times are seconds of `clock`."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate}")
        self.clock = clock
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, rate * 0.05)  # 50 ms worth by default
        self.tokens = self.burst
        self.t = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now

    def take(self) -> float:
        """0.0 when a token was taken; otherwise the seconds until one will be there (nothing taken)."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the limit from now on (tokens already earned are kept, up to the new burst)."""
        if rate <= 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate}")
        self._refill()
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, rate * 0.05)
        self.tokens = min(self.tokens, self.burst)


class FakeOpenAIServer:
    """`rate_limit`: requests/s allowed (token bucket of `burst` requests, 5% of a second's by
    default); a request beyond it is refused at once with 429 and the wait for the next token
    in `Retry-After` (whole seconds, rounded up: RFC 9110 delay-seconds) and `retry-after-ms`, before
    any fault or delay."""

    def __init__(self, delay_s: float = 0.0, fault: FaultPolicy | None = None,
                 answer: Callable[[str, dict], str] = default_answer, slow_s: float = 5.0, retry_after: str = "1",
                 require_key: str | None = None, rate_limit: float | None = None, burst: float | None = None,
                 models: tuple[str, ...] = ("fake",)):
        self.delay_s, self.fault, self.answer = delay_s, fault, answer
        self.models = list(models)  # what GET /v1/models lists (a vLLM server: its --lora-modules names too)
        self.slow_s, self.retry_after = slow_s, retry_after
        self.require_key = require_key
        self.bucket = TokenBucket(rate_limit, burst) if rate_limit else None
        self.per_prompt: Counter = Counter()
        self.total = 0
        self.rate_limited = 0  # 429s from the token bucket (not counted in `faults`)
        self.limited_times: list[float] = []  # time.monotonic() of each of those 429s
        self.ok = 0
        self.ok_times: list[float] = []  # time.monotonic() as each successful answer went out
        self.faults: Counter = Counter()
        self.auth_headers: list[str] = []
        self.bodies: list[dict] = []
        self.keep_bodies = True
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- handlers ---------------------------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})

    async def _stats(self, request: web.Request) -> web.Response:
        out = {"total": self.total, "ok": self.ok, "rate_limited": self.rate_limited, "faults": dict(self.faults),
               "unique_prompts": len(self.per_prompt), "now": time.monotonic(),
               "rate_limit": self.bucket.rate if self.bucket else None}
        if request.query.get("times"):
            out["ok_times"], out["limited_times"] = self.ok_times, self.limited_times
        return web.json_response(out)

    def reset(self, fault: FaultPolicy | None = None, rate_limit: float | None = None,
              burst: float | None = None, delay_s: float | None = None) -> None:
        """Forget every count and answer; new fault policy and rate limit (None: none) and, if
        given, a new delay (seconds before each answer)."""
        self.fault = fault
        if delay_s is not None:
            self.delay_s = float(delay_s)
        self.bucket = TokenBucket(rate_limit, burst) if rate_limit else None
        self.per_prompt.clear()
        self.faults.clear()
        self.total = self.rate_limited = self.ok = 0
        self.ok_times, self.limited_times, self.bodies, self.auth_headers = [], [], [], []

    async def _reset(self, request: web.Request) -> web.Response:
        """POST {"fault_rate": f, "seed": s, "rate_limit": R, "burst": B, "delay_s": L}: random 429/500
        faults at rate f, a token bucket of R requests/s holding B, answers after L seconds."""
        body = await request.json()
        rate = float(body.get("fault_rate") or 0.0)
        self.reset(random_faults(rate, seed=int(body.get("seed", 0))) if rate else None, body.get("rate_limit"),
                   body.get("burst"), body.get("delay_s"))
        return web.json_response({"ok": True, "now": time.monotonic()})

    async def _set_rate(self, request: web.Request) -> web.Response:
        """POST {"rate": R[, "burst": B]}: change the token bucket (start one when there is none)."""
        body = await request.json()
        if self.bucket is None:
            self.bucket = TokenBucket(body["rate"], body.get("burst"))
        else:
            self.bucket.set_rate(body["rate"], body.get("burst"))
        return web.json_response({"rate_limit": self.bucket.rate, "now": time.monotonic()})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        if self.require_key and request.headers.get("Authorization") != f"Bearer {self.require_key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        msgs = body.get("messages") or [{"content": ""}]  # an empty list: a client probing the limits (curator)
        prompts = body["prompt"] if not chat and isinstance(body.get("prompt"), list) else None  # a batch (vLLM)
        prompt = str(msgs[-1].get("content", "")) if chat else (prompts[0] if prompts else body["prompt"])
        self.total += 1
        self.per_prompt[prompt] += 1
        if self.keep_bodies:
            self.bodies.append(body)
        self.auth_headers.append(request.headers.get("Authorization", ""))
        wait = self.bucket.take() if self.bucket else 0.0
        if wait > 0:
            self.rate_limited += 1
            self.limited_times.append(time.monotonic())
            ms = math.ceil(wait * 1000)
            return web.json_response({"error": {"message": "rate limit exceeded", "type": "requests"}}, status=429,
                                     headers={"Retry-After": str(math.ceil(ms / 1000)), "retry-after-ms": str(ms)})
        fault = self.fault(prompt, self.per_prompt[prompt], self.total) if self.fault else None
        if fault:
            self.faults[fault] += 1
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        elif self.delay_s:
            await asyncio.sleep(self.delay_s)
        if fault == "429":
            return web.json_response({"error": {"message": "rate limited"}}, status=429,
                                     headers={"Retry-After": self.retry_after})
        if fault == "500":
            return web.json_response({"error": {"message": "boom"}}, status=500)
        if fault == "503":  # overloaded, and says when to come back
            return web.json_response({"error": {"message": "overloaded"}}, status=503,
                                     headers={"Retry-After": self.retry_after})
        if fault == "malformed":
            return web.Response(text='{"choices": [{"text": "unterminated', content_type="application/json")
        if fault == "drop":
            assert request.transport is not None
            request.transport.abort()  # the client sees the connection reset, no response
            return web.Response(status=500)
        if prompts is not None:  # one choice per prompt, in order
            for p in prompts[1:]:
                self.per_prompt[p] += 1
            choices = [self._choice(p, self.answer(p, body), body, chat, i) for i, p in enumerate(prompts)]
        else:
            choices = [self._choice(prompt, self.answer(prompt, body), body, chat, 0)]
        self.ok += 1
        self.ok_times.append(time.monotonic())
        text = "".join(c.get("text") or "" for c in choices) if not chat else choices[0]["message"]["content"]
        n_prompt = sum(len(p) for p in (prompts or [prompt]))
        usage = {"prompt_tokens": max(1, n_prompt // 4), "completion_tokens": max(1, len(text) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return web.Response(text=json.dumps({"id": "x", "object": "chat.completion" if chat else "text_completion",
                                             "model": body.get("model"), "choices": choices, "usage": usage}),
                            content_type="application/json")

    @staticmethod
    def _choice(prompt: str, text: str, body: dict, chat: bool, index: int) -> dict:
        choice = ({"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                  else {"index": index, "text": text, "finish_reason": "stop"})
        if body.get("return_token_ids") and not chat:  # vLLM >= 0.10.2: the tokens of each choice (4 chars a token here)
            choice["prompt_token_ids"] = list(range(max(1, len(prompt) // 4)))
            choice["token_ids"] = list(range(max(1, len(text) // 4)))
        if body.get("echo") and not chat and body.get("logprobs") is not None:
            # Prompt logprobs (vLLM / OpenAI legacy completions): one token per word, logprob -len(word)/10.
            toks = [(m.start(), m.group(0)) for m in re.finditer(r"\s*\S+", prompt)]
            choice["text"] = prompt + text
            choice["logprobs"] = {"tokens": [t for _, t in toks], "text_offset": [o for o, _ in toks],
                                  "token_logprobs": [None] + [-len(t.strip()) / 10 for _, t in toks[1:]]}
        elif body.get("logprobs"):  # first-token top logprobs, as OpenAI-compatible servers return them
            first = (" " + text.split()[0]) if text.split() else " "
            top = {first: -0.1, " the": -3.0, " a": -4.0}
            if chat:
                choice["logprobs"] = {"content": [{"token": first, "logprob": -0.1, "top_logprobs": [
                    {"token": t, "logprob": v} for t, v in top.items()]}]}
            elif len(text.split()) <= 1:
                choice["logprobs"] = {"tokens": [first], "token_logprobs": [-0.1], "top_logprobs": [top],
                                      "text_offset": [len(prompt)]}
            else:  # every generated token (one per word, its leading space included), logprob -len(word)/10;
                # the first token's top list as above
                toks = [(m.start(), m.group(0)) for m in re.finditer(r"\s*\S+|\s+", text)]
                lps = [-len(t.strip()) / 10 if t.strip() else -0.05 for _, t in toks]
                choice["logprobs"] = {"tokens": [t for _, t in toks], "token_logprobs": lps,
                                      "top_logprobs": [top] + [{t: v} for (_, t), v in zip(toks[1:], lps[1:])],
                                      "text_offset": [len(prompt) + o for o, _ in toks]}
        return choice

    # --- lifecycle --------------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/admin/rate", self._set_rate)
        app.router.add_post("/admin/reset", self._reset)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        return app

    async def _start(self, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def start(self, port: int = 0) -> "FakeOpenAIServer":
        """Serve from a daemon thread; returns once the port is bound."""
        ready = threading.Event()

        def main() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start(port))
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())  # type: ignore[union-attr]
            self._loop.close()

        self._thread = threading.Thread(target=main, daemon=True, name="fake-openai")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            assert self._thread is not None
            self._thread.join(10)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_in_process(port_conn, delay_s: float, fault_rate: float = 0.0, seed: int = 0,
                     rate_limit: float | None = None) -> None:
    """Entry point for a server in its own process (benchmarks: keeps its CPU off the client's)."""
    srv = FakeOpenAIServer(delay_s=delay_s, fault=random_faults(fault_rate, seed=seed) if fault_rate else None,
                           retry_after="0", rate_limit=rate_limit)
    srv.keep_bodies = False
    loop = asyncio.new_event_loop()
    loop.run_until_complete(srv._start(0))
    port_conn.send(srv.port)
    loop.run_forever()
