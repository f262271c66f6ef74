import socket

import pytest

from core.skills import TeacherConfig, load_skill
from teachers import make_teacher
from teachers.expand import balanced_shots, label_inputs, new_inputs
from teachers.local import LocalModel
from teachers.openai_http import TeacherUnreachable


@pytest.fixture()
def skill(skill_root):
    return load_skill("ticket-triage", profile="tiny", root=skill_root)


def test_every_request_ends_kept_or_rejected_with_lineage(skill, tiny_model_path):
    teacher = LocalModel(tiny_model_path, name="tiny")
    kept, rejected = new_inputs(skill, teacher, 6, seed=0)
    assert len(kept) + len(rejected) == 6
    assert all(r.reason in {"truncated", "empty_generation"} for r in rejected)
    for e in kept:
        assert e.source == "teacher" and e.teacher == "tiny" and len(e.parent_ids) == 3
        assert {p for p in e.parent_ids} <= {s.id for s in skill.seeds}
    # Labeling: every input comes out labeled with a valid label or rejected as unparseable.
    inputs = [s for s in skill.eval_set[:5]]
    labeled, bad = label_inputs(skill, teacher, inputs, seed=0)
    assert len(labeled) + len(bad) == 5
    assert all(e.output in skill.config.labels for e in labeled)
    assert all(r.reason == "unparseable_answer" for r in bad)


def test_generation_is_deterministic_for_a_seed(skill, tiny_model_path):
    teacher = LocalModel(tiny_model_path)
    a = teacher.complete(["Ticket: hello", "Ticket: my invoice"], max_new_tokens=6, temperature=0.9, seed=3)
    b = teacher.complete(["Ticket: hello", "Ticket: my invoice"], max_new_tokens=6, temperature=0.9, seed=3)
    assert [c.text for c in a] == [c.text for c in b]
    assert all(c.prompt_tokens > 0 for c in a)


def test_balanced_shots_cover_every_label(skill):
    import random

    shots = balanced_shots(skill.seeds, 10, random.Random(0))
    assert len(shots) == 10
    assert {s.output for s in shots} == set(skill.config.labels)


def test_unreachable_http_teacher_fails_with_one_clear_error():
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = TeacherConfig(backend="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(TeacherUnreachable, match=f"teacher unreachable at http://127.0.0.1:{port}/v1"):
        make_teacher(cfg)
