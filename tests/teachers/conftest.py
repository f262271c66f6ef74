import hashlib

import pytest

from core.skills import load_skill
from teachers.fakeserver import FakeOpenAIServer

LABELS = ["billing", "bug", "feature_request", "account", "other"]


def triage_answer(prompt: str, body: dict | None = None) -> str:
    """A fake teacher for ticket-triage prompts: a ticket for self-instruct prompts, a label for label prompts."""
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    if prompt.endswith("Team:"):
        return " " + LABELS[h % len(LABELS)]
    return f" my invoice number {h % 10_000} was charged twice this month please help"


@pytest.fixture()
def skill(skill_root):
    return load_skill("ticket-triage", profile="tiny", root=skill_root)


@pytest.fixture()
def fake_server():
    servers = []

    def make(**kw) -> FakeOpenAIServer:
        srv = FakeOpenAIServer(**kw).start()
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop()
