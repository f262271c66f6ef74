"""The real `openai` Python client (sync and async; streamed and not; chat, completions, tool calls,
models) against the gateway on loopback, serving the tiny trained adapter with the fake OpenAI
teacher: what it supports answers as OpenAI would, what it refuses is a 4xx naming the parameter."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import httpx
import openai
import pytest

from tests.conftest import REPO
from tests.gateway.conftest import SKILL, publish, random_adapter, routing_with_threshold
from tests.gateway.test_lanes import tool_skill  # noqa: F401  (fixture)

TICKETS = [json.loads(x)["input"] for x in (REPO / "seeds" / SKILL / "eval.jsonl").read_text().splitlines()[:4]]


def _cfg(tmp_path, **kw):
    from gateway import GatewayConfig

    base = {"skills": [SKILL], "max_wait_ms": 20, "poll_s": 0.3, "traffic_url": f"sqlite:///{tmp_path}/traffic.db",
            "teacher_timeout_s": 20, "traffic_flush_ms": 20}
    base.update(kw)
    return GatewayConfig.model_validate(base)


@pytest.fixture
def served(teacher_skill, trained_adapter, tmp_path, run_gateway):
    from registry import Registry

    v1 = publish(Registry(), trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    g = run_gateway(_cfg(tmp_path))
    return g, v1


def _rows(tmp_path) -> dict[str, str]:
    with sqlite3.connect(tmp_path / "traffic.db") as c:
        return dict(c.execute(f"select id, request from traffic_{SKILL.replace('-', '_')}").fetchall())


def test_chat_and_completions_streamed_and_not_with_usage(served, tmp_path):
    g, v1 = served
    client = openai.OpenAI(base_url=g.url + "/v1", api_key="unused", max_retries=0)
    msgs = [{"role": "system", "content": "triage"}, {"role": "user", "content": TICKETS[0]}]
    whole = client.chat.completions.create(model=SKILL, messages=msgs)
    answer = whole.choices[0].message.content
    assert answer and whole.choices[0].finish_reason == "stop" and whole.object == "chat.completion"
    # usage: the small model's real token counts (the prompt holds the ticket: more tokens than its words / 2).
    u = whole.usage
    assert u.prompt_tokens > len(TICKETS[0].split()) // 2 and u.completion_tokens >= 1
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens

    # Streamed: a text/event-stream of chunks ending [DONE]; the same answer; usage last when asked.
    chunks = list(client.chat.completions.create(model=SKILL, messages=msgs, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len(chunks) >= 3 and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert not chunks[-1].choices and chunks[-1].usage.prompt_tokens == u.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    with httpx.stream("POST", g.url + "/v1/chat/completions", json={"model": SKILL, "messages": msgs, "stream": True},
                      timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream") and r.headers["x-distill-lane"]
        lines = [x for x in r.iter_lines() if x]
    assert lines[-1] == "data: [DONE]" and all(x.startswith("data: ") for x in lines)

    # Completions, whole and streamed, and a list of prompts (one choice each).
    c = client.completions.create(model=SKILL, prompt=TICKETS[1])
    assert c.choices[0].text and c.usage.prompt_tokens > 0 and c.usage.completion_tokens > 0
    parts = list(client.completions.create(model=SKILL, prompt=TICKETS[1], stream=True,
                                           stream_options={"include_usage": True}))
    assert "".join(p.choices[0].text for p in parts if p.choices) == c.choices[0].text
    assert parts[-1].usage.total_tokens == c.usage.total_tokens
    many = client.completions.with_raw_response.create(model=SKILL, prompt=TICKETS[:3])
    got = many.parse()
    assert [ch.index for ch in got.choices] == [0, 1, 2] and all(ch.text for ch in got.choices)
    assert len(many.headers["x-distill-request-id"].split(",")) == 3
    # Every answered request has its traffic row.
    g.gateway.traffic.flush()
    assert len(_rows(tmp_path)) == 3 + 2 + 3  # chats (whole, client stream, raw stream), completions, the list


def test_async_client_streams(served):
    g, _ = served

    async def main():
        client = openai.AsyncOpenAI(base_url=g.url + "/v1", api_key="unused", max_retries=0)
        whole = await client.chat.completions.create(model=SKILL, messages=[{"role": "user", "content": TICKETS[2]}])
        stream = await client.chat.completions.create(model=SKILL, messages=[{"role": "user", "content": TICKETS[2]}],
                                                      stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        comp = await client.completions.create(model=SKILL, prompt=TICKETS[3], stream=True)
        ctext = "".join([c.choices[0].text async for c in comp])
        await client.close()
        return whole.choices[0].message.content, text, ctext

    whole, text, ctext = asyncio.run(main())
    assert whole and text == whole and ctext


def test_models_list_and_retrieve_every_addressable_name(served, tiny_model_path, tmp_path):
    from registry import Registry

    g, v1 = served
    reg = Registry()
    v2 = publish(reg, random_adapter(tiny_model_path, tmp_path / "rand"), routing_with_threshold(None, "keep_all_valid"),
                 "r2", alias="candidate")
    client = openai.OpenAI(base_url=g.url + "/v1", api_key="unused", max_retries=0)
    (m,) = client.models.list().data
    assert m.id == SKILL and m.object == "model" and isinstance(m.created, int) and m.created > 0 and m.owned_by
    for name, version in ((SKILL, v1), (f"{SKILL}@production", v1), (f"{SKILL}@{v1}", v1), (f"{SKILL}@candidate", v2),
                          (f"{SKILL}@{v2}", v2)):
        got = client.models.retrieve(name)
        assert got.id == name and got.object == "model" and isinstance(got.created, int)
        assert got.model_extra["version"] == version
    for bad in ("nope", f"{SKILL}@99", f"{SKILL}@nope"):
        with pytest.raises(openai.NotFoundError) as e:
            client.models.retrieve(bad)
        assert e.value.body["param"] == "model" and e.value.body["type"] == "not_found_error"


def _refused(call, status: int, param: str):
    with pytest.raises(openai.APIStatusError) as e:
        call()
    assert e.value.status_code == status, e.value.body
    body = e.value.body
    assert set(body) >= {"message", "type", "param", "code"} and body["param"] == param, body
    assert param.split("[")[0].split(".")[0] in body["message"]
    return body


def test_parameters_are_honoured_or_refused_by_name(served, tmp_path):
    g, _ = served
    client = openai.OpenAI(base_url=g.url + "/v1", api_key="unused", max_retries=0)
    user = [{"role": "user", "content": TICKETS[0]}]
    chat = client.chat.completions.create
    _refused(lambda: chat(model=SKILL, messages=user, n=3), 400, "n")
    _refused(lambda: chat(model=SKILL, messages=user, logprobs=True, top_logprobs=2), 400, "logprobs")
    _refused(lambda: chat(model=SKILL, messages=user, stop=["."]), 400, "stop")
    _refused(lambda: chat(model=SKILL, messages=user, max_tokens=1), 400, "max_tokens")
    _refused(lambda: chat(model=SKILL, messages=user, max_completion_tokens=2), 400, "max_completion_tokens")
    _refused(lambda: chat(model=SKILL, messages=user, response_format={"type": "json_object"}), 400, "response_format")
    _refused(lambda: chat(model=SKILL, messages=user, response_format={"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}}}), 400, "response_format")
    _refused(lambda: chat(model=SKILL, messages=user, extra_body={"top_k": 5}), 400, "top_k")
    _refused(lambda: chat(model=SKILL, messages=user, tool_choice="bogus"), 400, "tool_choice")
    _refused(lambda: chat(model=SKILL, messages=user, tools=[{"type": "function", "function": {"name": "f"}}]), 400,
             "tools")
    _refused(lambda: chat(model=SKILL, messages=user, temperature=7), 400, "temperature")
    _refused(lambda: client.completions.create(model=SKILL, prompt=TICKETS[0], echo=True), 400, "echo")
    _refused(lambda: client.completions.create(model=SKILL, prompt=TICKETS[0], logprobs=2), 400, "logprobs")
    _refused(lambda: client.completions.create(model=SKILL, prompt=[1, 2, 3]), 400, "prompt")
    # Honoured: n=1, the newline stop, a max_tokens the answer fits in, text format; accepted without effect:
    # sampling settings (answers are greedy), so the answer is the same.
    base = chat(model=SKILL, messages=user).choices[0].message.content
    same = chat(model=SKILL, messages=user, n=1, stop="\n", max_tokens=4096, response_format={"type": "text"},
                temperature=0.9, top_p=0.5, seed=3, user="u1", tool_choice="none").choices[0].message.content
    assert same == base
    # A conversation that does not end with the user's message is not a skill input.
    _refused(lambda: chat(model=SKILL, messages=user + [{"role": "assistant", "content": "bil"}]), 422, "messages")


def test_content_parts_and_empty_inputs(served, tmp_path):
    g, _ = served
    client = openai.OpenAI(base_url=g.url + "/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create

    def ask(content):
        return lambda: chat(model=SKILL, messages=[{"role": "system", "content": "x"}, {"role": "user", "content": content}])

    for bad in (None, 5, {}):
        _refused(ask([{"type": "text", "text": bad}]), 422, "messages[1].content[0].text")
    _refused(ask([5]), 422, "messages[1].content[0]")
    _refused(ask(7), 422, "messages[1].content")
    _refused(ask([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]), 400,
             "messages[1].content[0].type")
    for empty in ("", "   \n\t", None, [], [{"type": "text", "text": " "}]):
        body = _refused(ask(empty), 422, "messages[1].content")
        assert body["code"] == "empty_input"
    _refused(lambda: client.completions.create(model=SKILL, prompt="  "), 422, "prompt")
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": [TICKETS[0], ""]}, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "inputs[1]"
    # Text parts are joined: the same answer as the plain text.
    parts = chat(model=SKILL, messages=[{"role": "user", "content": [{"type": "text", "text": TICKETS[0]}]}])
    plain = chat(model=SKILL, messages=[{"role": "user", "content": TICKETS[0]}])
    assert parts.choices[0].message.content == plain.choices[0].message.content
    # No refused request left a traffic row: only the two answered ones.
    g.gateway.traffic.flush()
    assert sorted(_rows(tmp_path).values()) == [TICKETS[0], TICKETS[0]]


TOOL_SKILL = "tool-calling"


def test_tool_calls_through_the_client(tool_skill, tiny_model_path, tmp_path, run_gateway):
    from core.skills import load_skill
    from registry import Registry
    from registry.stage import skill_spec
    from tests.gateway.test_lanes import _tool_eval

    skill = load_skill(TOOL_SKILL)
    Registry().publish(TOOL_SKILL, random_adapter(tiny_model_path, tmp_path / "rand"), metrics={"eval": {}},
                       lineage={"run_id": "t1"}, routing=routing_with_threshold(None, "keep_all_valid"),
                       skill_spec=skill_spec(skill.config), model_card="---\nlibrary_name: peft\n---\n", alias="production")
    g = run_gateway(_cfg(tmp_path, skills=[TOOL_SKILL]))
    client = openai.OpenAI(base_url=g.url + "/v1", api_key="unused", max_retries=0)
    item = _tool_eval()[0]
    tools = item["input"]["tools"]
    names = [t["function"]["name"] for t in tools]
    msgs = [{"role": "user", "content": item["input"]["request"]}]
    r = client.chat.completions.create(model=TOOL_SKILL, messages=msgs, tools=tools)
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name in names
    json.loads(call.function.arguments)
    # Streamed: the call's id and name first, then its arguments, as OpenAI streams them.
    chunks = list(client.chat.completions.create(model=TOOL_SKILL, messages=msgs, tools=tools, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id == call.id and deltas[0].function.name == call.function.name
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # tool_choice: a forced function is the one called (or no answer at all), never another.
    other = next(n for n in names if n != item["output"]["name"])
    try:
        forced = client.chat.completions.create(model=TOOL_SKILL, messages=msgs, tools=tools,
                                                tool_choice={"type": "function", "function": {"name": other}})
        assert forced.choices[0].message.tool_calls[0].function.name == other
    except openai.APIStatusError as e:  # the small model's call was invalid and the teacher's names another function
        assert e.status_code == 503
    _refused(lambda: client.chat.completions.create(model=TOOL_SKILL, messages=msgs, tools=tools, tool_choice="none"),
             400, "tool_choice")
    _refused(lambda: client.chat.completions.create(
        model=TOOL_SKILL, messages=msgs, tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}),
        400, "tool_choice")
    _refused(lambda: client.chat.completions.create(model=TOOL_SKILL, messages=msgs, tools=tools, tool_choice="bogus"),
             400, "tool_choice")
    _refused(lambda: client.chat.completions.create(model=TOOL_SKILL, messages=msgs), 422, "tools")



def test_json_object_is_honoured_only_for_skills_that_answer_json_objects():
    from core.config import SkillConfig
    from core.tasks import get_task
    from gateway.protocol import Options, check_for_skill
    from gateway.service import GatewayError
    from tests.core import skillkit

    def task(kind):
        return get_task(SkillConfig.model_validate(skillkit.config(kind)))

    check_for_skill(Options(json_object=True), task("extraction"), None)  # answers are JSON objects: accepted
    for kind in ("classification", "function_call"):
        with pytest.raises(GatewayError) as e:
            check_for_skill(Options(json_object=True), task(kind), None)
        assert e.value.status == 400 and e.value.extra["field"] == "response_format"
