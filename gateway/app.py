"""The HTTP face of the gateway (FastAPI): OpenAI-compatible chat/completions (streamed or not),
models, :predict, feedback, health, readiness and Prometheus metrics. Every answer names its skill,
version, lane, confidence and request id in the body and in `x-distill-*` headers; every error is
OpenAI's envelope {"error": {"message", "type", "param", "code"}} (gateway/protocol.py decides what
is honoured, accepted without effect, or refused, per parameter)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.config import GatewayConfig
from gateway.service import Gateway, GatewayError, Result, new_request_id

log = logging.getLogger("distill.gateway")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(..., description="system | developer | user | assistant | tool")
    content: Any = Field(None, description="Text, or OpenAI content parts (text parts only, joined by newlines).")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(..., description="Skill name: SKILL (production), SKILL@ALIAS or SKILL@VERSION.")
    messages: list[Message] = Field(..., min_length=1, description="The last message, the user's, is the skill's input.")
    tools: list[dict] | None = Field(None, description="OpenAI tools (function-call skills).")


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(..., description="Skill name: SKILL, SKILL@ALIAS or SKILL@VERSION.")
    prompt: Any = Field(..., description="The skill's input, or a list of inputs (one choice each); the gateway renders "
                                         "the skill's prompt around it.")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[Any] = Field(..., min_length=1, description="Inputs: text, or JSON objects for JSON-input skills.")
    version: str | None = Field(None, description="ALIAS or VERSION (default production).")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, description="The per-input request id of the answer (x-distill-request-id).")
    verdict: Literal["accepted", "rejected", "corrected"] = Field(..., description="What a person decided.")
    answer: Any = Field(None, description="The corrected answer (verdict corrected).")
    skill: str | None = Field(None, description="The skill, for requests older than this gateway process.")


def _headers(results: list[Result]) -> dict[str, str]:
    """x-distill-* headers, one comma-separated value per input (request ids included: each is a
    feedback id)."""
    r = results[0]
    conf = ",".join("" if x.confidence is None else f"{x.confidence:.6f}" for x in results)
    return {"x-distill-skill": r.skill, "x-distill-version": ",".join(str(x.version) if x.version else "none" for x in results),
            "x-distill-lane": ",".join(x.lane for x in results), "x-distill-confidence": conf,
            "x-distill-request-id": ",".join(x.id for x in results)}


def _distill(r: Result) -> dict:
    d = {"skill": r.skill, "version": r.version, "lane": r.lane, "confidence": r.confidence,
         "request_id": r.id, "latency_ms": round(r.latency_ms, 3)}
    if r.reason:  # degraded: why the teacher did not answer; keep: why a below-threshold answer was kept (budget)
        d["degraded_reason" if r.lane == "degraded" else "reason"] = r.reason
    d.update(r.extra)
    return d


def _param(loc) -> str:
    """A pydantic location as a parameter path: ('body', 'messages', 0, 'content') -> messages[0].content."""
    out = ""
    for p in loc:
        if p == "body" and not out:
            continue
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def _created(folder: Path | None, default: float) -> int:
    """When a version was published (its checksums.json, written last by publish), else `default`."""
    try:
        return int((Path(folder) / "checksums.json").stat().st_mtime)
    except (OSError, TypeError):
        return int(default)


def create_app(cfg: GatewayConfig, gateway: Gateway | None = None):
    """The FastAPI app; the Gateway starts with the app (lifespan) and closes with it."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException

    from gateway import protocol as P
    from gateway.guard import Guard

    class SafeJSON(JSONResponse):
        """JSON without NaN/inf (null instead) and without a failure on a lone surrogate."""

        def render(self, content) -> bytes:
            return P.dumps(content)

    gw = gateway or Gateway(cfg)
    started = time.time()

    @asynccontextmanager
    async def lifespan(app):
        await asyncio.to_thread(gw.start)
        try:
            yield
        finally:
            await asyncio.to_thread(gw.close)

    app = FastAPI(title="distill gateway", lifespan=lifespan, default_response_class=SafeJSON)
    app.state.gateway = gw
    tokens = set()
    if cfg.auth_tokens_env:
        tokens = {t.strip() for t in os.environ.get(cfg.auth_tokens_env, "").split(",") if t.strip()}
        if not tokens:
            raise ValueError(f"auth_tokens_env: the environment variable {cfg.auth_tokens_env} holds no token")
    app.add_middleware(Guard, tokens=tokens, max_body_bytes=cfg.max_body_bytes,
                       on_refused=lambda status: gw.metrics.refused.labels(str(status)).inc())

    def error(status: int, message: str, **extra) -> JSONResponse:
        if 400 <= status < 500:
            gw.metrics.refused.labels(str(status)).inc()
        return SafeJSON(P.error_body(status, message, **extra), status_code=status,
                        headers={"www-authenticate": "Bearer"} if status == 401 else None)

    @app.exception_handler(GatewayError)
    async def on_gateway_error(request, e: GatewayError):
        return error(e.status, e.message, **e.extra)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, e: RequestValidationError):
        errs = e.errors()
        if any(err.get("type") == "json_invalid" for err in errs):
            err = next(err for err in errs if err.get("type") == "json_invalid")
            return error(400, f"body: not valid JSON ({err.get('ctx', {}).get('error', err.get('msg'))})", param="body",
                         code="invalid_json")
        fields = [_param(err.get("loc", ())) for err in errs]
        msg = "; ".join(f"{f}: {err.get('msg')}" for f, err in zip(fields, errs))
        return error(422, msg, param=fields[0] if fields else None, fields=fields)

    @app.exception_handler(HTTPException)
    async def on_http(request, e: HTTPException):
        detail = e.detail if isinstance(e.detail, str) else str(e.detail)
        if e.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return error(e.status_code, detail)

    @app.exception_handler(Exception)
    async def on_crash(request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"internal error ({type(e).__name__}); the gateway's log has the details")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """200 when every skill's production version is served; 503 while loading, or naming each
        production version that did not load and left its skill without one. A skill still served by
        its previous version after a failed swap is ready and listed under `stale`."""
        if not gw.ready:
            return error(503, "loading the served versions", code="not_ready")
        errors = dict(gw.load_errors)
        unserved = {n: e for n, e in errors.items() if gw.production.get(n) is None}
        if unserved:
            names = "; ".join(f"{n}@{e['version']}: {e['error']}" for n, e in unserved.items())
            return error(503, f"not ready: production version(s) did not load: {names}", code="not_ready",
                         not_loaded=unserved)
        out = {"status": "ready", "skills": {n: (s.version if s else None) for n, s in gw.production.items()}}
        if errors:
            out["stale"] = errors
        return out

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        data = []
        for d in gw.describe():
            s = gw.production.get(d.get("id"))
            data.append({"created": _created(s.folder if s else None, started), **d})
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        """OpenAI's model object for every addressable name: SKILL, SKILL@ALIAS, SKILL@VERSION."""
        name, _, sel = model_id.partition("@")
        if name not in gw.skills:
            raise GatewayError(404, f"model: unknown skill {name!r}; known: {', '.join(gw.skills) or 'none'}",
                               field="model", code="model_not_found", known=gw.skills)
        if not sel or sel == "production":
            s = gw.production.get(name)
            version = s.version if s else None
        else:
            version = gw._cached_version(name, sel)
            if version is None:
                version = await asyncio.to_thread(gw.resolve_ref, name, sel)
            s = gw.loaded.get((name, version))
        folder = s.folder if s else None
        if folder is None and version is not None:
            try:
                folder = await asyncio.to_thread(gw.registry.path, name, version)
            except Exception:
                folder = None
        return {"id": model_id, "object": "model", "created": await asyncio.to_thread(_created, folder, started),
                "owned_by": "distill", "skill": name, "version": version, "loaded": s is not None}

    async def prepare(model: str, o) -> tuple[Any, Any]:
        served = await gw.lookup(model)
        task = gw.task(model.partition("@")[0], served)
        P.check_for_skill(o, task, served)
        return served, task

    def skill_input(task, text: str, where: str, tools) -> str:
        gw.check_input(text, where)  # empty, unencodable or too long: before the skill wraps it (tools JSON)
        if task is None:
            return text
        try:
            return task.api_input(text, tools)
        except ValueError as e:
            field = str(e).partition(":")[0]
            raise GatewayError(422, str(e), field=field if field in ("tools", "tool_choice") else where) from None

    def sse_response(chunks, headers: dict) -> StreamingResponse:
        async def gen():
            for c in chunks:
                yield c

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        t0 = time.perf_counter()
        raw = body.model_dump(exclude_unset=True)
        o = P.chat_options(raw)
        text, where = P.chat_input(raw["messages"])
        served, task = await prepare(body.model, o)
        x = skill_input(task, text, where, P.select_tools(o, task))
        rid = new_request_id()
        r = (await gw.answer(body.model, [x], rid, where=[where]))[0]
        message = task.api_message(r.answer) if task is not None else {"role": "assistant", "content": r.answer}
        finish = "tool_calls" if message.get("tool_calls") else "stop"
        head = {"id": "chatcmpl-" + rid, "created": int(time.time()), "model": body.model}
        use = P.usage([r])
        h = _headers([r])
        h["x-distill-overhead-ms"] = f"{(time.perf_counter() - t0) * 1000 - r.latency_ms:.3f}"
        if o.stream:
            return sse_response(P.chat_chunks(head, message, finish, use, o.include_usage, _distill(r)), h)
        out = {**head, "object": "chat.completion",
               "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
               "usage": use, "distill": _distill(r)}
        return SafeJSON(out, headers=h)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        raw = body.model_dump(exclude_unset=True)
        o = P.completion_options(raw)
        prompts = P.completion_prompts(raw.get("prompt"))
        served, task = await prepare(body.model, o)
        where = ["prompt"] if len(prompts) == 1 else [f"prompt[{i}]" for i in range(len(prompts))]
        xs = [skill_input(task, p, w, None) for p, w in zip(prompts, where)]
        rid = new_request_id()
        results = await gw.answer(body.model, xs, rid, where=where)
        head = {"id": "cmpl-" + rid, "created": int(time.time()), "model": body.model, "object": "text_completion"}
        use = P.usage(results)
        if o.stream:
            return sse_response(P.completion_chunks(head, [r.answer for r in results], ["stop"] * len(results), use,
                                                    o.include_usage, [_distill(r) for r in results]), _headers(results))
        out = {**head, "choices": [{"index": i, "text": r.answer, "finish_reason": "stop", "logprobs": None}
                                   for i, r in enumerate(results)],
               "usage": use, "distill": _distill(results[0]) if len(results) == 1 else [_distill(r) for r in results]}
        return SafeJSON(out, headers=_headers(results))

    @app.post("/v1/skills/{skill}:predict")
    async def predict(skill: str, body: PredictRequest):
        from core.structured import canonical_json

        rid = new_request_id()
        ref = skill if body.version is None else f"{skill}@{body.version}"
        for i, x in enumerate(body.inputs):
            if x is None:
                raise GatewayError(422, f"inputs[{i}]: null is not an input", field=f"inputs[{i}]", code="empty_input")
        inputs = [x if isinstance(x, str) else canonical_json(x) for x in body.inputs]
        results = await gw.answer(ref, inputs, rid)
        out = {"skill": skill, "request_id": rid, "request_ids": [r.id for r in results],
               "predictions": [{"answer": r.answer, **_distill(r)} for r in results], "usage": P.usage(results)}
        return SafeJSON(out, headers=_headers(results))

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest):
        from core.structured import canonical_json

        answer = body.answer if body.answer is None or isinstance(body.answer, str) else canonical_json(body.answer)
        skill = await asyncio.to_thread(gw.feedback, body.id, body.verdict, answer, body.skill)  # may read the table
        return SafeJSON({"id": body.id, "skill": skill, "verdict": body.verdict, "status": "queued"}, status_code=202)

    return app


def serve(cfg: GatewayConfig) -> None:
    """Run the gateway with uvicorn until interrupted (`distill gateway`)."""
    import uvicorn

    uvicorn.run(create_app(cfg), host=cfg.host, port=cfg.port, log_level="info", access_log=False)


class InThread:
    """The gateway under uvicorn in a background thread of this process, for embedding it in a
    program, a test or a benchmark: `.url`, `.app`, `.gateway`, `.stop()`. Waits until /readyz
    answers 200 (`require_ready` False: until the gateway has started, ready or not; RuntimeError
    after `ready_timeout_s`)."""

    def __init__(self, cfg: GatewayConfig, gateway: Gateway | None = None, ready_timeout_s: float = 300.0,
                 require_ready: bool = True):
        import socket
        import threading

        import httpx
        import uvicorn

        port, sockets = cfg.port, None
        if not port:  # bind here and hand the socket over: no other process can take the port in between
            # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
            # without it each response's body waited ~40 ms behind its headers (Nagle + delayed ACK).
            family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((cfg.host, 0))
            port, sockets = sock.getsockname()[1], [sock]
        self.app = create_app(cfg, gateway)
        self.gateway = self.app.state.gateway
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=cfg.host, port=port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": sockets}, daemon=True)
        self.thread.start()
        self.port, self.url = port, f"http://{cfg.host}:{port}"
        end = time.time() + ready_timeout_s
        while time.time() < end:
            try:
                r = httpx.get(self.url + "/readyz", timeout=2)
                if r.status_code == 200 or (not require_ready and self.gateway.ready):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gateway at {self.url} did not become ready in {ready_timeout_s:.0f} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
