"""The gateway's door, as plain ASGI middleware (it sees bytes, before FastAPI parses anything):
bearer tokens compared as bytes, the body bound counted over the bytes actually received (a chunked
body has no Content-Length to trust), compressed bodies refused, and JSON bodies that are not UTF-8
refused. Every refusal is OpenAI's error envelope."""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

from gateway.protocol import dumps, error_body

# Paths that answer without a token: probes an orchestrator calls.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class Guard:
    """ASGI middleware: `tokens` (empty: no auth) guard every path but OPEN_PATHS; `max_body_bytes`
    bounds every request body; `on_refused(status)` counts what it refuses."""

    def __init__(self, app, tokens: set[str], max_body_bytes: int, on_refused: Callable[[int], None] | None = None):
        self.app, self.max_body = app, max_body_bytes
        # Compared as UTF-8 bytes: hmac.compare_digest refuses non-ASCII str (a 500 before), and a
        # header arrives as bytes anyway.
        self.tokens = [t.encode("utf-8") for t in tokens]
        self.on_refused = on_refused

    async def _refuse(self, send, status: int, message: str, param: str | None = None, code: str | None = None,
                      **extra) -> None:
        if self.on_refused:
            self.on_refused(status)
        body = dumps(error_body(status, message, param, code, **extra))
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() != b"bearer ":
            return False
        given = auth[7:].strip()
        ok = False
        for t in self.tokens:  # no early exit: the time taken does not say which token came close
            ok |= hmac.compare_digest(given, t)
        return ok

    async def __call__(self, scope, receive: Callable[[], Awaitable[dict]], send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.tokens and scope.get("path") not in OPEN_PATHS and not self._authorized(headers):
            return await self._refuse(send, 401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                      code="invalid_api_key")
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        enc = headers.get(b"content-encoding", b"identity").strip().lower()
        if enc not in (b"", b"identity"):
            return await self._refuse(send, 415, f"content-encoding: {enc.decode('latin-1')!r} is not accepted; send the "
                                                 f"body uncompressed", param="content-encoding",
                                      code="unsupported_content_encoding")
        size = headers.get(b"content-length")
        if size is not None and size.strip().isdigit() and int(size) > self.max_body:
            return await self._refuse(send, 413, f"body: {int(size)} bytes; the limit is max_body_bytes={self.max_body}",
                                      param="body", code="body_too_large", limit="max_body_bytes")
        # Read the whole body, counting what arrives (a chunked body announces no length).
        chunks, got = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            part = msg.get("body", b"")
            got += len(part)
            if got > self.max_body:
                return await self._refuse(send, 413, f"body: more than max_body_bytes={self.max_body} bytes",
                                          param="body", code="body_too_large", limit="max_body_bytes")
            chunks.append(part)
            if not msg.get("more_body", False):
                break
        body = b"".join(chunks)
        ctype = headers.get(b"content-type", b"application/json").lower()
        if b"json" in ctype or not ctype:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as e:
                return await self._refuse(send, 400, f"body: not UTF-8 (byte 0x{body[e.start]:02x} at offset {e.start}); "
                                                     f"a JSON body must be UTF-8", param="body", code="invalid_encoding")
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: a disconnect, as the server reports it

        await self.app(scope, replay, send)
