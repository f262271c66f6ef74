"""The HTTP face of the gateway (FastAPI): OpenAI-compatible chat/completions, :predict, feedback,
health, readiness and Prometheus metrics. Every answer names its skill, version, lane, confidence
and request id in the body and in `x-distill-*` headers."""

from __future__ import annotations

import hmac
import logging
import os
import time
from contextlib import asynccontextmanager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.config import GatewayConfig
from gateway.service import Gateway, GatewayError, Result, new_request_id

log = logging.getLogger("distill.gateway")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(..., description="system | user | assistant | tool")
    content: str | list | None = Field(None, description="Text, or OpenAI content parts (text parts are joined).")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(..., description="Skill name: SKILL (production), SKILL@ALIAS or SKILL@VERSION.")
    messages: list[Message] = Field(..., min_length=1, description="The last user message is the skill's input.")
    tools: list[dict] | None = Field(None, description="OpenAI tools (function-call skills).")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(..., description="Skill name: SKILL, SKILL@ALIAS or SKILL@VERSION.")
    prompt: str = Field(..., description="The skill's input (the gateway renders the skill's prompt around it).")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] = Field(..., min_length=1, description="Inputs: text, or JSON objects for JSON-input skills.")
    version: str | None = Field(None, description="ALIAS or VERSION (default production).")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, description="The request id of the answer (x-distill-request-id).")
    verdict: Literal["accepted", "rejected", "corrected"] = Field(..., description="What a person decided.")
    answer: Any = Field(None, description="The corrected answer (verdict corrected).")
    skill: str | None = Field(None, description="The skill, for requests older than this gateway process.")


def _text(content) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def _headers(results: list[Result], rid: str) -> dict[str, str]:
    r = results[0]
    conf = ",".join("" if x.confidence is None else f"{x.confidence:.6f}" for x in results)
    return {"x-distill-skill": r.skill, "x-distill-version": ",".join(str(x.version) if x.version else "none" for x in results),
            "x-distill-lane": ",".join(x.lane for x in results), "x-distill-confidence": conf,
            "x-distill-request-id": rid}


def _distill(r: Result) -> dict:
    d = {"skill": r.skill, "version": r.version, "lane": r.lane, "confidence": r.confidence,
         "request_id": r.id, "latency_ms": round(r.latency_ms, 3)}
    if r.reason:
        d["degraded_reason"] = r.reason
    d.update(r.extra)
    return d


def create_app(cfg: GatewayConfig, gateway: Gateway | None = None):
    """The FastAPI app; the Gateway starts with the app (lifespan) and closes with it."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response

    gw = gateway or Gateway(cfg)

    @asynccontextmanager
    async def lifespan(app):
        import asyncio

        await asyncio.to_thread(gw.start)
        try:
            yield
        finally:
            await asyncio.to_thread(gw.close)

    app = FastAPI(title="distill gateway", lifespan=lifespan)
    app.state.gateway = gw
    tokens = set()
    if cfg.auth_tokens_env:
        tokens = {t.strip() for t in os.environ.get(cfg.auth_tokens_env, "").split(",") if t.strip()}
        if not tokens:
            raise ValueError(f"auth_tokens_env: the environment variable {cfg.auth_tokens_env} holds no token")

    def error(status: int, message: str, **extra) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "code": status, **extra}}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path.startswith("/v1/"):
            if tokens:
                auth = request.headers.get("authorization", "")
                given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
                if not any(hmac.compare_digest(given, t) for t in tokens):
                    return error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > cfg.max_body_bytes:
                return error(413, f"body: {size} bytes; the limit is max_body_bytes={cfg.max_body_bytes}", limit="max_body_bytes")
        return await call_next(request)

    @app.exception_handler(GatewayError)
    async def on_gateway_error(request, e: GatewayError):
        return error(e.status, e.message, **e.extra)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, e: RequestValidationError):
        errs = e.errors()
        fields = [".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body" for err in errs]
        msg = "; ".join(f"{f}: {err.get('msg')}" for f, err in zip(fields, errs))
        return error(422, msg, fields=fields)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not gw.ready:
            return error(503, "loading the served versions")
        return {"status": "ready", "skills": {n: (s.version if s else None) for n, s in gw.production.items()}}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": gw.describe()}

    def _input_for(ref: str, text: str, tools) -> str:
        name = ref.partition("@")[0] if isinstance(ref, str) else ""
        if name not in gw.skills:
            raise GatewayError(404, f"unknown skill {name!r}; known: {', '.join(gw.skills) or 'none'}", known=gw.skills)
        s = gw.production.get(name)
        task = gw.task(name, s)
        if task is None:
            return text
        try:
            return task.api_input(text, tools)
        except ValueError as e:
            raise GatewayError(422, str(e), field=str(e).partition(":")[0]) from None

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        t0 = time.perf_counter()
        users = [m for m in body.messages if m.role == "user"]
        if not users:
            raise GatewayError(422, "messages: no user message (the last user message is the skill's input)", field="messages")
        rid = new_request_id()
        x = _input_for(body.model, _text(users[-1].content), body.tools)
        r = (await gw.answer(body.model, [x], rid))[0]
        task = gw.task(r.skill, None)
        message = task.api_message(r.answer) if task is not None else {"role": "assistant", "content": r.answer}
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        out = {"id": "chatcmpl-" + rid, "object": "chat.completion", "created": int(time.time()), "model": body.model,
               "choices": [{"index": 0, "message": message, "finish_reason": finish}],
               "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, "distill": _distill(r)}
        h = _headers([r], rid)
        h["x-distill-overhead-ms"] = f"{(time.perf_counter() - t0) * 1000 - r.latency_ms:.3f}"
        return JSONResponse(out, headers=h)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        rid = new_request_id()
        x = _input_for(body.model, body.prompt, None)
        r = (await gw.answer(body.model, [x], rid))[0]
        out = {"id": "cmpl-" + rid, "object": "text_completion", "created": int(time.time()), "model": body.model,
               "choices": [{"index": 0, "text": r.answer, "finish_reason": "stop", "logprobs": None}],
               "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}, "distill": _distill(r)}
        return JSONResponse(out, headers=_headers([r], rid))

    @app.post("/v1/skills/{skill}:predict")
    async def predict(skill: str, body: PredictRequest):
        from core.structured import canonical_json

        rid = new_request_id()
        ref = skill if body.version is None else f"{skill}@{body.version}"
        inputs = [x if isinstance(x, str) else canonical_json(x) for x in body.inputs]
        results = await gw.answer(ref, inputs, rid)
        out = {"skill": skill, "request_id": rid,
               "predictions": [{"answer": r.answer, **_distill(r)} for r in results]}
        return JSONResponse(out, headers=_headers(results, rid))

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest):
        from core.structured import canonical_json

        answer = body.answer if body.answer is None or isinstance(body.answer, str) else canonical_json(body.answer)
        skill = gw.feedback(body.id, body.verdict, answer, body.skill)
        return JSONResponse({"id": body.id, "skill": skill, "verdict": body.verdict, "status": "queued"}, status_code=202)

    return app


def serve(cfg: GatewayConfig) -> None:
    """Run the gateway with uvicorn until interrupted (`distill gateway`)."""
    import uvicorn

    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="info", access_log=False)


class InThread:
    """The gateway under uvicorn in a background thread of this process, for embedding it in a
    program, a test or a benchmark: `.url`, `.app`, `.gateway`, `.stop()`. Waits until /readyz
    answers 200 (RuntimeError after `ready_timeout_s`)."""

    def __init__(self, cfg: GatewayConfig, gateway: Gateway | None = None, ready_timeout_s: float = 300.0):
        import socket
        import threading

        import httpx
        import uvicorn

        port = cfg.port
        if not port:
            with socket.socket() as sock:
                sock.bind((cfg.host, 0))
                port = sock.getsockname()[1]
        self.app = create_app(cfg, gateway)
        self.gateway = self.app.state.gateway
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=cfg.host, port=port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.port, self.url = port, f"http://{cfg.host}:{port}"
        end = time.time() + ready_timeout_s
        while time.time() < end:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway at {self.url} did not become ready in {ready_timeout_s:.0f} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
