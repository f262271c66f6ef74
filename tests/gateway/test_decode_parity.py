"""One decoding path: the eval gate's per-item answers == registry.predict's == the gateway's for one
published version, and the confidence read from the generation's own scores equals the teacher-forced
mean answer-token log-probability (within 1e-4); routing.json's chosen signal is read the same way by the
gate and the gateway."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.gateway.conftest import SKILL, publish, routing_with_threshold


def test_gate_registry_and_gateway_answer_alike(skill_root, teacher_skill, tiny_model_path, trained_adapter, tmp_path,
                                                run_gateway):
    from core.prompting import format_prompt
    from core.skills import load_skill
    from eval_gates.evaluate import evaluate_candidate
    from eval_gates.replay import replay_items
    from eval_gates.routing import answer_logprobs
    from gateway import GatewayConfig
    from registry import Registry, predict
    from registry.consumer import Predictor

    skill = load_skill(SKILL, "tiny", root=skill_root)
    reg = Registry()
    version = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    folder = reg.resolve(SKILL, version=version)

    # The eval gates on the published folder (as a candidate): per-item answers and routing confidences.
    items, traffic = replay_items(skill)
    evaluate_candidate(skill, tiny_model_path, str(folder), None, items, tmp_path / "run", traffic=traffic)
    rows = [json.loads(x) for x in (tmp_path / "run" / "eval_items.jsonl").read_text().splitlines()]
    ev = [r for r in rows if r["set"] == "eval"]
    inputs, gate = [r["input"] for r in ev], [r["candidate"] for r in ev]
    assert len(inputs) == 10 and sum(g is not None for g in gate) >= 5  # the trained adapter answers with labels
    routing = json.loads((tmp_path / "run" / "routing.json").read_text())
    replay_inputs = [e.input for e in items]

    # registry.predict: the same answers.
    assert predict(SKILL, inputs) == gate

    # Confidence from the generation's scores == teacher-forced (the profile's definition).
    from eval_gates.predict import answer_grammars

    p = Predictor(folder)
    assert p.cfg.decoding.constrained  # skill.json says the gates decoded under the grammar: so does the consumer
    comps = p.local.complete(p.prompts(replay_inputs), max_new_tokens=p.spec["max_new_tokens"],
                             confidence=True, grammars=answer_grammars(p.cfg, len(replay_inputs), replay_inputs))
    signal = routing["signal"]  # the confidence the run chose (routing.signal auto: the best-separating one)
    assert signal in ("mean_logprob", "min_logprob", "mean_grammar_logprob", "min_grammar_logprob")
    assert [c.signals[signal] for c in comps] == pytest.approx(routing["confidences"], abs=1e-6)
    forced = answer_logprobs(p.model, p.tokenizer, [format_prompt(skill.config, x) for x in replay_inputs],
                             [c.text for c in comps])
    for c, f in zip(comps, forced):
        assert (c.confidence is None) == (f is None)
        if f is not None:
            assert abs(c.confidence - f) < 1e-4
    assert sum(c.confidence_source == "scores" for c in comps) >= len(comps) // 2  # read, not recomputed

    # The gateway: same answers (the small model's, whatever lane) and the same confidences, read with the
    # signal of the routing.json it serves (the run's own, published as the next version).
    version = publish(reg, trained_adapter, routing, "r2")
    g = run_gateway(GatewayConfig(skills=[SKILL], max_wait_ms=500, traffic_url=f"sqlite:///{tmp_path}/traffic.db"))
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": inputs}, timeout=120)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert [x["slm_answer"] for x in got] == gate
    assert all(x["version"] == version for x in got)
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": replay_inputs}, timeout=120)
    assert [x["confidence"] for x in r.json()["predictions"]] == pytest.approx(routing["confidences"], abs=1e-6)
