"""A small OpenAI-compatible server on loopback that answers after a fixed delay and injects
faults (429 with Retry-After, 500, slow answers, malformed JSON, dropped connections).

Used by the fault tests and benchmarks/teacher_throughput.py: a real server (aiohttp) with
real sockets, where a fault is what a real endpoint cannot be made to do on demand.
`GET /stats` returns request counts, so a test can see what the client actually sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import random
import threading
from collections import Counter
from typing import Callable

from aiohttp import web

# fault(prompt, nth request for this prompt (1-based), nth request overall) -> None or a fault name
FaultPolicy = Callable[[str, int, int], str | None]
FAULTS = ("429", "500", "slow", "malformed", "drop")


def default_answer(prompt: str, body: dict) -> str:
    return "answer " + hashlib.sha256(prompt.encode()).hexdigest()[:8]


def random_faults(rate: float, kinds: tuple[str, ...] = ("429", "500"), seed: int = 0) -> FaultPolicy:
    rng = random.Random(seed)
    return lambda prompt, nth, total: rng.choice(kinds) if rng.random() < rate else None


class FakeOpenAIServer:
    def __init__(self, delay_s: float = 0.0, fault: FaultPolicy | None = None,
                 answer: Callable[[str, dict], str] = default_answer, slow_s: float = 5.0, retry_after: str = "1",
                 require_key: str | None = None):
        self.delay_s, self.fault, self.answer = delay_s, fault, answer
        self.slow_s, self.retry_after = slow_s, retry_after
        self.require_key = require_key
        self.per_prompt: Counter = Counter()
        self.total = 0
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
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"total": self.total, "faults": dict(self.faults),
                                  "unique_prompts": len(self.per_prompt)})

    async def _complete(self, request: web.Request) -> web.StreamResponse:
        if self.require_key and request.headers.get("Authorization") != f"Bearer {self.require_key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        body = await request.json()
        chat = request.path.endswith("/chat/completions")
        prompt = (body["messages"][-1]["content"] if chat else body["prompt"])
        self.total += 1
        self.per_prompt[prompt] += 1
        if self.keep_bodies:
            self.bodies.append(body)
        self.auth_headers.append(request.headers.get("Authorization", ""))
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
        if fault == "malformed":
            return web.Response(text='{"choices": [{"text": "unterminated', content_type="application/json")
        if fault == "drop":
            assert request.transport is not None
            request.transport.abort()  # the client sees the connection reset, no response
            return web.Response(status=500)
        text = self.answer(prompt, body)
        usage = {"prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": max(1, len(text) // 4)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} if chat
                  else {"index": 0, "text": text, "finish_reason": "stop"})
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
            else:
                choice["logprobs"] = {"tokens": [first], "token_logprobs": [-0.1], "top_logprobs": [top],
                                      "text_offset": [len(prompt)]}
        return web.Response(text=json.dumps({"id": "x", "object": "chat.completion" if chat else "text_completion",
                                             "model": body.get("model"), "choices": [choice], "usage": usage}),
                            content_type="application/json")

    # --- lifecycle --------------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
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


def serve_in_process(port_conn, delay_s: float, fault_rate: float = 0.0, seed: int = 0) -> None:
    """Entry point for a server in its own process (benchmarks: keeps its CPU off the client's)."""
    srv = FakeOpenAIServer(delay_s=delay_s, fault=random_faults(fault_rate, seed=seed) if fault_rate else None,
                           retry_after="0")
    srv.keep_bodies = False
    loop = asyncio.new_event_loop()
    loop.run_until_complete(srv._start(0))
    port_conn.send(srv.port)
    loop.run_forever()
