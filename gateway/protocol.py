"""The OpenAI wire format of the gateway: which request parameters are honoured, accepted without
effect, or refused (docs/gateway.md's "OpenAI API: what is supported" table is this module); the text a
chat request's messages carry; the error envelope; JSON that never holds NaN or a lone surrogate;
and the server-sent events of `stream: true`.

Every refusal is a GatewayError whose message names the parameter and says why, and whose `param`
is that parameter, so a client sees `{"error": {"message", "type", "param", "code"}}` as OpenAI
sends it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from gateway.service import GatewayError

# --- errors ---------------------------------------------------------------------------------------------------------

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "invalid_request_error",
               413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 503: "service_unavailable_error", 504: "timeout_error"}
DEFAULT_CODES = {400: "invalid_request", 401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed",
                 413: "request_too_large", 415: "unsupported_media_type", 422: "invalid_value", 500: "internal_error",
                 503: "unavailable", 504: "timeout"}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None, **extra: Any) -> dict:
    """OpenAI's error envelope: {"error": {"message", "type", "param", "code", ...extra}}. `field`
    (the gateway's older name for the parameter) is read as `param`."""
    if param is None:
        param = extra.pop("field", None)
    else:
        extra.pop("field", None)
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param,
                      "code": code or DEFAULT_CODES.get(status, "server_error" if status >= 500 else "invalid_request"),
                      **extra}}


def refuse(param: str, why: str, status: int = 400, code: str = "unsupported_parameter") -> GatewayError:
    """A GatewayError naming `param`: '<param>: <why>'."""
    return GatewayError(status, f"{param}: {why}", field=param, code=code)


# --- JSON -----------------------------------------------------------------------------------------------------------


def json_safe(x: Any) -> Any:
    """`x` with every NaN or infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def dumps(x: Any) -> bytes:
    """Compact UTF-8 JSON of `x`: non-finite floats as null; text UTF-8 cannot encode (a lone
    surrogate) written as JSON escapes instead of failing the response."""
    x = json_safe(x)
    text = json.dumps(x, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(x, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


# --- request parameters ---------------------------------------------------------------------------------------------


def _number(lo: float, hi: float):
    def check(v):
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi
        return None if ok else f"must be a number from {lo:g} to {hi:g}"
    return check


def _type(t, what: str):
    return lambda v: None if isinstance(v, t) and not (t is int and isinstance(v, bool)) else f"must be {what}"


# Accepted and without effect: answers are greedy (the decode the eval gates measured), so sampling
# settings cannot change them; the rest is bookkeeping a skill endpoint has no use for.
NO_EFFECT = {
    "temperature": _number(0, 2), "top_p": _number(0, 1), "frequency_penalty": _number(-2, 2),
    "presence_penalty": _number(-2, 2), "seed": _type(int, "an integer"), "user": _type(str, "a string"),
    "metadata": _type(dict, "an object"), "store": _type(bool, "a boolean"), "service_tier": _type(str, "a string"),
    "prompt_cache_key": _type(str, "a string"), "safety_identifier": _type(str, "a string"),
    "reasoning_effort": _type(str, "a string"), "verbosity": _type(str, "a string"),
    "parallel_tool_calls": _type(bool, "a boolean"),
}
# Refused unless absent, null or the default: each would change the answer in a way a skill cannot honour.
# (Keyword form: OpenAI's deprecated `function_call` parameter, not the task type of that name.)
REFUSED_CHAT = dict(
    audio="audio output is not supported: a skill answers with text",
    prediction="predicted outputs are not supported",
    functions="the deprecated functions field is not supported; pass tools",
    function_call="the deprecated function_call field is not supported; pass tool_choice",
    web_search_options="web search is not supported",
)
HONOURED_CHAT = {"model", "messages", "stream", "stream_options", "n", "max_tokens", "max_completion_tokens", "stop",
                 "response_format", "tools", "tool_choice", "logprobs", "top_logprobs", "modalities", "logit_bias"}
HONOURED_COMPLETIONS = {"model", "prompt", "stream", "stream_options", "n", "max_tokens", "stop", "logprobs", "echo",
                        "suffix", "best_of", "logit_bias"}
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


@dataclass
class Options:
    """What a chat or completions request asks beyond its input."""

    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    max_tokens_param: str = "max_tokens"
    json_object: bool = False  # response_format {"type": "json_object"}
    tools: list | None = None
    tool_choice: Any = None
    extra: dict = field(default_factory=dict)


def _common(body: dict, honoured: set[str], refused: dict[str, str]) -> Options:
    for k, v in body.items():
        if k in honoured:
            continue
        if k in NO_EFFECT:
            if v is not None and (bad := NO_EFFECT[k](v)):
                raise refuse(k, bad, code="invalid_value")
            continue
        if k in refused:
            if v is not None:
                raise refuse(k, refused[k])
            continue
        raise refuse(k, "unrecognized request argument (see docs/gateway.md, 'OpenAI API: what is supported')", code="unknown_parameter")
    o = Options()
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise refuse("stream", "must be a boolean", code="invalid_value")
    o.stream = bool(stream)
    so = body.get("stream_options")
    if so is not None:
        if not o.stream:
            raise refuse("stream_options", "only allowed when stream is true", code="invalid_value")
        if not isinstance(so, dict) or set(so) - {"include_usage", "include_obfuscation"}:
            raise refuse("stream_options", "an object with include_usage (a boolean)", code="invalid_value")
        iu = so.get("include_usage")
        if iu is not None and not isinstance(iu, bool):
            raise refuse("stream_options.include_usage", "must be a boolean", code="invalid_value")
        o.include_usage = bool(iu)
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n != 1):
        raise refuse("n", f"{n!r} is not supported: only n=1 (answers are greedy, so more choices would all be the same)")
    stop = body.get("stop")
    if stop not in (None, "\n", [], ["\n"]):
        raise refuse("stop", "only the newline is supported: a skill's answer is one line and ends there (other "
                             "stop sequences would cut an answer into one the skill does not give)")
    lb = body.get("logit_bias")
    if lb not in (None, {}):
        raise refuse("logit_bias", "not supported: biasing tokens would change the skill's answer")
    for name in ("max_tokens", "max_completion_tokens"):
        v = body.get(name)
        if v is None:
            continue
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise refuse(name, "must be a positive integer", code="invalid_value")
        o.max_tokens, o.max_tokens_param = v, name
    return o


def chat_options(body: dict) -> Options:
    """The options of a /v1/chat/completions body (its keys as sent). Raises GatewayError 400 naming
    the first parameter that is refused, unknown or malformed."""
    o = _common(body, HONOURED_CHAT, REFUSED_CHAT)
    lp, top = body.get("logprobs"), body.get("top_logprobs")
    if lp not in (None, False):
        raise refuse("logprobs", "not supported: token log-probabilities are not returned (the answer's confidence, "
                                 "their mean over its tokens, is in distill.confidence and x-distill-confidence)")
    if top not in (None, 0):
        raise refuse("top_logprobs", "not supported (logprobs are not returned)")
    mods = body.get("modalities")
    if mods not in (None, ["text"]):
        raise refuse("modalities", 'only ["text"] is supported')
    rf = body.get("response_format")
    if rf is not None:
        kind = rf.get("type") if isinstance(rf, dict) else None
        if kind == "json_object":
            o.json_object = True
        elif kind == "json_schema":
            raise refuse("response_format", "json_schema is not supported: the skill's answer format is fixed "
                                            "(json_object is accepted for skills that answer with JSON objects)")
        elif kind != "text":
            raise refuse("response_format", 'must be {"type": "text"} or {"type": "json_object"}', code="invalid_value")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise refuse("tools", "must be a list of tools", code="invalid_value")
    o.tools = tools or None
    o.tool_choice = body.get("tool_choice")
    return o


def completion_options(body: dict) -> Options:
    """The options of a /v1/completions body. Raises GatewayError 400 naming the parameter."""
    o = _common(body, HONOURED_COMPLETIONS, {})
    if body.get("logprobs") is not None:
        raise refuse("logprobs", "not supported: token log-probabilities are not returned (the answer's confidence "
                                 "is in distill.confidence and x-distill-confidence)")
    if body.get("echo") not in (None, False):
        raise refuse("echo", "not supported: the prompt is the skill's input, not the text the model completed")
    if body.get("suffix") not in (None, ""):
        raise refuse("suffix", "not supported: a skill's answer follows its own prompt")
    if body.get("best_of") not in (None, 1):
        raise refuse("best_of", "only 1 is supported (answers are greedy)")
    return o


def completion_prompts(prompt: Any) -> list[str]:
    """The inputs of a completions `prompt`: a string, or a list of strings (one choice each).
    Raises GatewayError naming `prompt` for token ids or anything else."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, (int, list)) for p in prompt):
        raise refuse("prompt", "token ids are not supported; send text")
    raise refuse("prompt", "must be a string or a non-empty list of strings", status=422, code="invalid_value")


def check_for_skill(o: Options, task, served) -> None:
    """The checks that depend on the skill: max_tokens against the version's answer limit, and
    response_format json_object only for skills whose answers are JSON objects."""
    limit = getattr(served, "max_new_tokens", None)
    if o.max_tokens is not None and limit is not None and o.max_tokens < limit:
        raise refuse(o.max_tokens_param, f"{o.max_tokens} is below {served.key}'s answer limit of {limit} tokens; an "
                                         f"answer cut short is not an answer: omit it or pass at least {limit}")
    if o.json_object:
        calls = is_function_call(task)
        if calls or task is None or not task.json_output:
            what = "a tool call" if calls else "text that is not a JSON object"
            raise refuse("response_format", f"json_object cannot be honoured: this skill answers with {what}")


def is_function_call(task) -> bool:
    """Whether the skill answers with a function call (its input carries the request's tools)."""
    return bool(getattr(task, "api_tools", False))


def select_tools(o: Options, task) -> list | None:
    """The tools the skill's input gets after `tool_choice`: all of them (auto, required, absent),
    only the forced function, or those of an allowed_tools choice. Raises GatewayError naming
    `tool_choice` (or `tools`) for a choice the skill cannot honour."""
    calls = is_function_call(task)
    tc, tools = o.tool_choice, o.tools
    if not calls:
        if tools:
            raise refuse("tools", "this skill answers with text; it calls no functions")
        if tc not in (None, "none", "auto"):
            raise refuse("tool_choice", f"{tc!r} cannot be honoured: this skill calls no functions")
        return None
    if tc is None or tc in ("auto", "required"):
        return tools
    if tc == "none":
        raise refuse("tool_choice", "'none' cannot be honoured: this skill always answers with a function call")
    names = [t.get("function", {}).get("name") for t in tools or [] if isinstance(t, dict)
             and isinstance(t.get("function"), dict)]
    if isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("function"), dict):
        want = tc["function"].get("name")
        if want not in names:
            raise refuse("tool_choice", f"function {want!r} is not in tools ({', '.join(map(str, names)) or 'none'})",
                         code="invalid_value")
        return [t for t, n in zip(tools, names) if n == want]
    if isinstance(tc, dict) and tc.get("type") == "allowed_tools" and isinstance(tc.get("allowed_tools"), dict):
        allowed = tc["allowed_tools"]
        wanted = {(t.get("function") or {}).get("name") for t in allowed.get("tools") or [] if isinstance(t, dict)}
        if allowed.get("mode", "auto") not in ("auto", "required") or not wanted or not wanted <= set(names):
            raise refuse("tool_choice", "allowed_tools must list functions that are in tools, mode auto or required",
                         code="invalid_value")
        return [t for t, n in zip(tools, names) if n in wanted]
    raise refuse("tool_choice", f'{tc!r} is not a tool choice: "none", "auto", "required" or '
                                '{"type": "function", "function": {"name": ...}}', code="invalid_value")


def chat_input(messages: list[dict]) -> tuple[str, str]:
    """(text, where) of a chat request: the last message, which must be the user's; its content a
    string or text parts (joined by newlines). `where` names it (messages[i].content) for errors.
    Earlier messages (a system prompt, history) are not part of a skill's input. Raises GatewayError
    naming the message, part or field for anything else."""
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise refuse(f"messages[{i}].role", f"{role!r} is not a role ({', '.join(ROLES)})", status=422,
                         code="invalid_value")
    i = len(messages) - 1
    if messages[i].get("role") != "user":
        raise refuse("messages", f"the last message is the {messages[i].get('role')}'s; a skill answers the last "
                                 f"message, which must be the user's (it does not continue a conversation)", status=422,
                     code="invalid_value")
    where = f"messages[{i}].content"
    content = messages[i].get("content")
    if content is None or isinstance(content, str):
        return content or "", where
    if not isinstance(content, list):
        raise refuse(where, "must be a string, a list of content parts or null", status=422, code="invalid_type")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise refuse(f"{where}[{j}]", "a content part must be an object with a type", status=422, code="invalid_type")
        kind = part.get("type")
        if kind != "text":
            raise refuse(f"{where}[{j}].type", f"{kind!r} parts are not supported: a skill reads text only")
        text = part.get("text")
        if not isinstance(text, str):
            raise refuse(f"{where}[{j}].text", f"must be a string, got {type(text).__name__ if text is not None else 'null'}",
                         status=422, code="invalid_type")
        texts.append(text)
    return "\n".join(texts), where


# --- responses ------------------------------------------------------------------------------------------------------


def usage(results) -> dict:
    """OpenAI usage from the small model's tokens of each answered input."""
    p = sum(r.prompt_tokens for r in results)
    c = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def chat_chunks(head: dict, message: dict, finish: str, use: dict, include_usage: bool, distill: dict) -> Iterator[bytes]:
    """The server-sent events of a streamed chat answer, as OpenAI sends them: the role, the content
    (or the tool call: name and id, then its arguments), the finish reason (with the gateway's
    `distill` block), the usage chunk when asked, then [DONE]."""
    head = {**head, "object": "chat.completion.chunk"}
    u = {"usage": None} if include_usage else {}

    def chunk(delta, finish_reason=None, **more):
        return sse({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
                    **u, **more})

    calls = message.get("tool_calls")
    if calls:
        first = [{"index": k, "id": c["id"], "type": "function", "function": {"name": c["function"]["name"], "arguments": ""}}
                 for k, c in enumerate(calls)]
        yield chunk({"role": "assistant", "content": None, "tool_calls": first})
        yield chunk({"tool_calls": [{"index": k, "function": {"arguments": c["function"]["arguments"]}}
                                    for k, c in enumerate(calls)]})
    else:
        yield chunk({"role": "assistant", "content": ""})
        if message.get("content"):
            yield chunk({"content": message["content"]})
    yield chunk({}, finish, distill=distill)
    if include_usage:
        yield sse({**head, "choices": [], "usage": use})
    yield DONE


def completion_chunks(head: dict, texts: list[str], finish: list[str], use: dict, include_usage: bool,
                      distill: list[dict]) -> Iterator[bytes]:
    """The server-sent events of streamed completions: each choice's text, then its finish reason,
    the usage chunk when asked, then [DONE]."""
    u = {"usage": None} if include_usage else {}
    for k, t in enumerate(texts):
        yield sse({**head, "choices": [{"index": k, "text": t, "logprobs": None, "finish_reason": None}], **u})
    for k, f in enumerate(finish):
        yield sse({**head, "choices": [{"index": k, "text": "", "logprobs": None, "finish_reason": f}], **u,
                   "distill": distill[k]})
    if include_usage:
        yield sse({**head, "choices": [], "usage": use})
    yield DONE
