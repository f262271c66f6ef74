"""backend: openai — the gateway's small model on a vLLM-compatible server (`--lora-modules
SKILL@VERSION=FOLDER`), here the project's fake OpenAI server on loopback: one /v1/completions call per
batch with the adapter's name as `model`, greedy, stop at the newline, `logprobs: 1`; the confidence is
the mean logprob of the answer's tokens (the text before the newline); lanes, retries, auth and a hot swap
work as with the local engine."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import REPO
from tests.gateway.conftest import SKILL, publish, routing_with_threshold, teacher_answer

TICKETS = [json.loads(x)["input"] for x in (REPO / "seeds" / SKILL / "eval.jsonl").read_text().splitlines()[:10]] + [
    "I forgot my password and cannot get in", "The app crashes on start"]


def slm_answer(prompt: str, body: dict) -> str:
    """The served adapters: version 1 answers the keyword label, in one token (logprob -0.1), except for
    account tickets, where it goes on past the newline ("account" then more text: the answer's one token has
    logprob -0.7, the rest must not count); version 2 answers 'other' for everything."""
    label = teacher_answer(prompt, body)
    if body["model"].endswith("@2"):
        return "other"
    return f"{label}\nTicket: more text" if label == "account" else label


def test_answer_confidence_is_the_mean_over_the_answer_tokens():
    from gateway.engine_openai import answer_confidence

    lp = {"tokens": [" bill", "ing", "\n", "Ticket"], "token_logprobs": [-0.5, -0.25, -0.01, -3.0],
          "text_offset": [100, 105, 108, 109]}
    assert answer_confidence(" billing\nTicket", lp) == (" billing", pytest.approx(-0.375))
    assert answer_confidence("billing", None) == ("billing", None)


def test_openai_backend_lanes_confidence_retries_and_swap(teacher_skill, trained_adapter, tmp_path, run_gateway,
                                                         fake_teacher, monkeypatch):
    from gateway import GatewayConfig
    from registry import Registry
    from teachers.fakeserver import FakeOpenAIServer

    reg = Registry()
    v1 = publish(reg, trained_adapter, routing_with_threshold(-0.5), "r1")
    v2 = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r2", alias=None)
    first = {"n": 0}

    def fault(prompt, nth, total):  # the very first completions call fails with a 500: the engine retries it
        first["n"] += 1
        return "500" if first["n"] == 1 else None

    vllm = FakeOpenAIServer(answer=slm_answer, fault=fault, require_key="k-123",
                            models=("google/gemma-3-270m", f"{SKILL}@{v1}", f"{SKILL}@{v2}")).start()
    monkeypatch.setenv("VLLM_KEY", "k-123")
    try:
        cfg = GatewayConfig.model_validate({
            "skills": [SKILL], "backend": "openai", "backend_url": vllm.base_url, "backend_api_key_env": "VLLM_KEY",
            "max_wait_ms": 50, "poll_s": 0.3, "traffic_url": f"sqlite:///{tmp_path}/traffic.db", "teacher_timeout_s": 20})
        g = run_gateway(cfg)
        r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": TICKETS}, timeout=60)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        # What went to the server: the adapter's name, greedy, skill.json's max_new_tokens, stop, logprobs, a batch.
        spec = json.loads((reg.resolve(SKILL, version=v1) / "skill.json").read_text())
        calls = [b for b in vllm.bodies if isinstance(b.get("prompt"), list)]
        assert vllm.faults["500"] == 1 and len(calls) >= 2  # the failed call and its retry
        for b in calls:
            assert b["model"] == f"{SKILL}@{v1}" and b["temperature"] == 0 and b["stop"] == ["\n"]
            assert b["logprobs"] == 1 and b["max_tokens"] == spec["max_new_tokens"]
        assert sum(len(b["prompt"]) for b in calls[1:]) == len(TICKETS)
        # Decoded under the label grammar, as the gates measured: xgrammar EBNF a vLLM server compiles.
        import xgrammar as xgr
        from xgrammar.testing import _is_grammar_accept_string as admits

        assert spec["decoding"]["constrained"] and len({b["structured_outputs"]["grammar"] for b in calls}) == 1
        grammar = xgr.Grammar.from_ebnf(calls[0]["structured_outputs"]["grammar"])
        assert admits(grammar, " billing") and not admits(grammar, " maybe") and not admits(grammar, "billing")
        assert set(vllm.auth_headers) == {"Bearer k-123"}
        # Lanes and confidence: one-token answers (-0.1 >= threshold -0.5) are kept; the account answer's
        # confidence is its own token's -0.7 (the text after the newline not counted): escalated to the teacher.
        for x, p in zip(TICKETS, preds):
            label = teacher_answer("Ticket: " + x, {})
            assert p["version"] == v1 and p["answer"] == label
            if label == "account":
                assert p["lane"] == "escalate" and p["confidence"] == pytest.approx(-0.7) and p["slm_answer"] == "account"
            else:
                assert p["lane"] == "keep" and p["confidence"] == pytest.approx(-0.1)
        assert {p["lane"] for p in preds} == {"keep", "escalate"}
        r = httpx.post(g.url + "/v1/chat/completions", timeout=60,
                       json={"model": SKILL, "messages": [{"role": "user", "content": "I was charged twice"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "billing"
        assert r.headers["x-distill-lane"] == "keep" and r.headers["x-distill-confidence"] == "-0.100000"
        # Promote version 2: the gateway sends new requests to the adapter `ticket-triage@2`.
        reg.promote(SKILL, v2, reason="test")
        end = time.time() + 30
        while time.time() < end:
            d = httpx.post(g.url + "/v1/completions", json={"model": SKILL, "prompt": TICKETS[0]}, timeout=60).json()
            if d["distill"]["version"] == v2:
                break
            time.sleep(0.2)
        assert d["distill"]["version"] == v2 and d["choices"][0]["text"] == "other"
        assert vllm.bodies[-1]["model"] == f"{SKILL}@{v2}"
    finally:
        vllm.stop()


def test_openai_backend_needs_the_adapter_on_the_server(teacher_skill, trained_adapter, tmp_path):
    from gateway import GatewayConfig
    from gateway.service import Gateway
    from registry import Registry
    from teachers.fakeserver import FakeOpenAIServer

    publish(Registry(), trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    with FakeOpenAIServer(models=("google/gemma-3-270m",)) as vllm:
        gw = Gateway(GatewayConfig.model_validate({"skills": [SKILL], "backend": "openai", "backend_url": vllm.base_url,
                                                   "traffic_url": f"sqlite:///{tmp_path}/t.db", "poll_s": 60}))
        try:
            gw.start()  # the version cannot be loaded: logged, nothing served
            assert gw.production.get(SKILL) is None
        finally:
            gw.close()
    with pytest.raises(ValueError, match="backend_url"):
        Gateway(GatewayConfig.model_validate({"skills": [SKILL], "backend": "openai",
                                              "traffic_url": f"sqlite:///{tmp_path}/t.db"}))


def test_openai_backend_sends_each_requests_own_grammar(tmp_path):
    """Function calls: one /completions call per tool set, each under the grammar of that request's
    own tools; a row whose grammar cannot be built goes free and is counted."""
    import xgrammar as xgr
    from xgrammar.testing import _is_grammar_accept_string as admits

    from core.config import SkillConfig
    from gateway.engine_openai import OpenAIEngine
    from teachers.fakeserver import FakeOpenAIServer
    from tests.core import skillkit

    def tool(name, props):
        return {"type": "function", "function": {"name": name, "description": name, "parameters": {
            "type": "object", "properties": props, "required": list(props)}}}

    weather = [tool("get_weather", {"city": {"type": "string"}})]
    timer = [tool("set_timer", {"minutes": {"type": "integer"}})]
    bad = [tool("odd", {"x": {"type": "integer", "minimum": 5, "maximum": 1}})]  # valid JSON Schema, no value
    inputs = [json.dumps({"request": r, "tools": t}) for r, t in
              (("Weather in Oslo?", weather), ("Timer for 5 minutes", timer), ("Weather in Rome?", weather),
               ("odd one", bad))]
    cfg = SkillConfig.model_validate(skillkit.config("function_call"))

    def answer(prompt, body):
        return '{"name":"get_weather","arguments":{"city":"Oslo"}}' if "Weather" in prompt else \
            '{"name":"set_timer","arguments":{"minutes":5}}'

    with FakeOpenAIServer(answer=answer) as vllm:
        engine = OpenAIEngine(vllm.base_url, retries=0)
        answers = engine.decode("tool-calling@1", cfg, [f"Request: {x}\nCall:" for x in inputs], 64, inputs=inputs)
        engine.close()
    calls = [b for b in vllm.bodies if isinstance(b.get("prompt"), list)]
    assert sorted(len(b["prompt"]) for b in calls) == [1, 1, 2]  # weather x2, timer, and the free row
    assert engine.free_rows == 1 and sum("structured_outputs" not in b for b in calls) == 1
    grammars = {"Weather" in b["prompt"][0]: xgr.Grammar.from_ebnf(b["structured_outputs"]["grammar"])
                for b in calls if "structured_outputs" in b}
    call = ' {"name":"get_weather","arguments":{"city":"Oslo"}}'
    assert admits(grammars[True], call) and not admits(grammars[False], call)
    assert admits(grammars[False], ' {"name":"set_timer","arguments":{"minutes":5}}')
    assert not admits(grammars[False], ' {"name":"set_timer","arguments":{"minutes":' + "9" * 16 + "}}")
    assert [a.parsed is not None for a in answers] == [True, True, True, True]  # in the order asked
