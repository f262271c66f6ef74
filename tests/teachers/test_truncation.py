"""An answer cut at the token limit is not an answer (issue 15, item 7): the label and
self_consistency answerers re-ask it, then drop it as `truncated`; the input writers already did.
The backend is a fake only to inject the fault (a cut answer on demand)."""

from __future__ import annotations

import json

from core.records import Example
from core.structured import first_json_object
from teachers.base import Request
from teachers.client import ClientSettings, Teacher
from teachers.local import Completion
from teachers.strategies import label, self_consistency

CUT = "Could you please send me the quarterly sales report for the"


class CutBackend:
    """Answers every prompt with `text`, finish_reason `finish`."""

    name = "cut"

    def __init__(self, text: str, finish: str = "length"):
        self.text, self.finish, self.sent = text, finish, 0

    def identity(self):
        return {"backend": "cut", "text": self.text, "finish": self.finish}

    def complete_requests(self, requests: list[Request]) -> list[Completion]:
        self.sent += len(requests)
        return [Completion(self.text, self.finish, 10, 8, 0.0) for _ in requests]


def _inputs(skill, n=3):
    return [Example(id=f"n{i}", skill=skill.name, input=f"new input number {i} about something", output=None,
                    source="teacher") for i in range(n)]


def _generation_skill(tmp_path):
    from core.scaffold import create_skill
    from core.skills import load_skill

    folder = create_skill("polite", "generation", tmp_path)
    rows = [{"id": f"s{i}", "input": f"send me the report {i}", "output": f"Could you send me report {i}?"}
            for i in range(3)]
    (folder / "seeds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "eval.jsonl").write_text(json.dumps({"id": "e", "input": "call me", "output": "Call me?"}) + "\n")
    return load_skill("polite", root=tmp_path)


def test_label_rejects_a_cut_answer_after_the_re_asks(tmp_path):
    skill = _generation_skill(tmp_path)
    backend = CutBackend(CUT)
    t = Teacher(backend, ClientSettings(invalid_retries=2))
    kept, rejected = label(skill, t, _inputs(skill))
    assert kept == [] and [r.reason for r in rejected] == ["truncated"] * 3
    assert backend.sent == 9  # asked, then re-asked twice
    whole = Teacher(CutBackend("Could you send me the report?", finish="stop"))
    kept, rejected = label(skill, whole, _inputs(skill))
    assert len(kept) == 3 and not rejected


def test_self_consistency_never_votes_with_cut_samples(tmp_path):
    skill = _generation_skill(tmp_path)
    kept, rejected = self_consistency(skill, Teacher(CutBackend(CUT)), _inputs(skill, 2))
    assert kept == [] and {r.reason for r in rejected} == {"no_valid_sample"}
    assert rejected[0].detail["reasons"] == {"truncated": skill.config.expansion.self_consistency_samples}


def test_a_cut_json_answer_is_truncated_not_rescued(skill):
    from core.skills import SkillConfig
    from tests.core.skillkit import EXTRACT_SCHEMA, config

    cfg = SkillConfig.model_validate(config("extraction", output_schema=EXTRACT_SCHEMA))
    skill.config = cfg
    cut = '{"person": "Ana", "amount": 4, "date": null, "extra": {"city": "Oslo"}, "note": "paid on'
    kept, rejected = label(skill, Teacher(CutBackend(cut)), _inputs(skill, 1))
    assert kept == [] and rejected[0].reason == "truncated"


def test_a_label_followed_by_a_cut_explanation_is_still_a_label(skill):
    kept, rejected = label(skill, Teacher(CutBackend("billing - because the customer was charged tw")),
                           _inputs(skill, 2))
    assert [e.output for e in kept] == ["billing", "billing"] and not rejected
    kept, rejected = label(skill, Teacher(CutBackend("feature_re"), ClientSettings(invalid_retries=0)),
                           _inputs(skill, 1))
    assert kept == [] and rejected[0].reason == "truncated"


def test_a_broken_outer_object_is_not_rescued_by_its_nested_object():
    assert first_json_object('{"person": "Ana", "address": {"city": "Oslo"}, "amount": 4') is None
    assert first_json_object('{"a": [1, {"b": 2}') is None
    assert first_json_object('{"a": "}{", "b": {"c": 1}} and more') == {"a": "}{", "b": {"c": 1}}
    assert first_json_object('{not json} then {"a": 1}') == {"a": 1}  # a closed bad object, then a good one
    assert first_json_object('Sure!\n```json\n{"name": "f", "arguments": {}}\n```') == {"name": "f", "arguments": {}}
