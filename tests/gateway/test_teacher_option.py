"""The fallback is the teacher that was measured (issue 31): the gateway's escalate and verify lanes answer
with the option the run's teacher lane was measured with (answerer, similar shots and their seed, the
content-free prior of contextual calibration), through the same function; for the same input the gateway's
escalated answer equals the pipeline teacher's answer. The teacher is the tiny local model (transformers),
whose label scores depend on every token of the prompt, so a different option would show."""

from __future__ import annotations

import json

import httpx

from tests.gateway.conftest import SKILL, publish


def test_escalated_answers_equal_the_pipeline_teachers(skill_root, trained_adapter, tmp_path, run_gateway):
    import yaml

    from core.skills import load_skill
    from eval_gates.lanes import eval_items, measure_teacher_lane
    from gateway import GatewayConfig
    from registry import Registry
    from teachers import open_teacher
    from teachers.strategies import answer_inputs

    path = skill_root / SKILL / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["teacher"].update(cache=False, shot_selection="auto", calibration="auto")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    skill = load_skill(SKILL, "tiny", root=skill_root)
    assert "score" in skill.config.expansion.strategies

    # The pipeline's teacher lane, with the option an audit chose (similar shots, calibrated scores).
    run = tmp_path / "run"
    with open_teacher(skill.config.teacher, scoring=True) as teacher:
        lane = measure_teacher_lane(skill, teacher, run, seed=7, replay_items=[],
                                    choice={"shots": "similar", "calibration": "contextual"})
        option = json.loads((run / "teacher_option.json").read_text())
        inputs = [e.input for e in eval_items(skill)]
        # Another option gives other answers on these inputs: the comparison below can fail.
        other = answer_inputs(skill, teacher, inputs, {**option, "shots": "random", "prior": None,
                                                       "calibration": "none"})
    rows = [json.loads(x) for x in (run / "teacher_answers.jsonl").read_text().splitlines()]
    pipeline = {r["id"]: r["answer"] for r in rows}
    assert lane["n"] == len(inputs) == 10 and lane["answered"] == 10
    assert option["answerer"] == "score" and option["shots"] == "similar" and option["seed"] == 7
    assert option["calibration"] == "contextual" and set(option["prior"]) == set(skill.config.labels)
    assert [v.answer for v in other] != [pipeline[e.id] for e in eval_items(skill)]

    # A version whose routing.json carries that option; every request escalates (override always).
    routing = {"version": 2, "mode": "keep_all_valid", "threshold": None, "teacher_option": option,
               "curve": [{"threshold": None, "kept": 0, "teacher_share": 1.0, "served": 0.0}], "n": 10}
    publish(Registry(), trained_adapter, routing, "r1")
    g = run_gateway(GatewayConfig(skills=[SKILL], profile="tiny", max_wait_ms=50,
                                  traffic_url=f"sqlite:///{tmp_path}/traffic.db", teacher_timeout_s=120,
                                  overrides={SKILL: {"escalation": "always"}}))
    r = httpx.post(f"{g.url}/v1/skills/{SKILL}:predict", json={"inputs": inputs}, timeout=300)
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    assert all(p["lane"] == "escalate" for p in got)
    assert [p["answer"] for p in got] == [pipeline[e.id] for e in eval_items(skill)]
    # The verify lane asks the same teacher the same way.
    from gateway.service import teacher_option_of

    served = g.gateway.production[SKILL]
    assert teacher_option_of(served) == option
    v = g.gateway._verify_ask(SKILL, inputs[0], served.version)
    assert v.answer == pipeline[eval_items(skill)[0].id]
