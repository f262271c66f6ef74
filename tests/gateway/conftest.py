"""Gateway fixtures: a trained tiny adapter published in a fresh registry, the project's fake
OpenAI server as the teacher, and the gateway itself under uvicorn on a free loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.tiny_models import train_label_adapter as train_adapter  # noqa: F401  (fixtures below)

SKILL = "ticket-triage"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_adapter(base: str, folder: Path, seed: int = 3) -> Path:
    """Random A and B: answers are garbage (invalid for a label skill)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(folder)
    return folder


def publish(reg, adapter: Path, routing: dict, run_id: str, alias: str = "production") -> int:
    from core.skills import load_skill
    from registry.stage import skill_spec

    skill = load_skill(SKILL, "tiny")
    return reg.publish(SKILL, adapter, metrics={"eval": {"accuracy": 0.5}}, lineage={"run_id": run_id},
                       routing=routing, skill_spec=skill_spec(skill.config), model_card="---\nlibrary_name: peft\n---\n",
                       alias=alias)


@pytest.fixture(scope="session")
def trained_adapter(tiny_model_path, tmp_path_factory):
    return train_adapter(tiny_model_path, tmp_path_factory.mktemp("trained") / "adapter")


def teacher_answer(prompt: str, body: dict) -> str:
    """The fake teacher: the label of the last ticket in the prompt by keyword, else 'other'."""
    last = prompt.rsplit("Ticket:", 1)[-1].lower()
    for word, label in (("charge", "billing"), ("refund", "billing"), ("crash", "bug"), ("error", "bug"),
                        ("password", "account"), ("login", "account"), ("feature", "feature_request"),
                        ("add", "feature_request")):
        if word in last:
            return label
    return "other"


@pytest.fixture
def fake_teacher():
    from teachers.fakeserver import FakeOpenAIServer

    server = FakeOpenAIServer(answer=teacher_answer).start()
    yield server
    if server._loop is not None and not server._loop.is_closed():  # a test may have stopped it already
        server.stop()


@pytest.fixture
def teacher_skill(skill_root, fake_teacher):
    """skill_root's ticket-triage with the fake OpenAI server as its teacher (no cache)."""
    import yaml

    path = skill_root / SKILL / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["teacher"] = {"backend": "openai", "base_url": fake_teacher.base_url, "model": "fake", "endpoint": "completions",
                      "few_shot": 2, "cache": False, "max_retries": 1, "timeout_s": 5}
    # The label answerer: the fake's scripted label is the teacher's answer (the lane answers with the skill's
    # option; test_teacher_option.py covers the score answerer and its calibration).
    cfg.setdefault("expansion", {})["strategies"] = ["self_instruct", "label"]
    cfg.setdefault("filters", {}).pop("target_precision", None)  # needs a confidence per answer (score)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return skill_root


class Running:
    """A gateway under uvicorn in a thread (gateway.app.InThread) on a free port; .url, .app, .gateway, .stop()."""

    def __init__(self, cfg, gateway=None, require_ready: bool = True):
        from gateway.app import InThread

        self._srv = InThread(cfg.model_copy(update={"port": 0}), gateway, ready_timeout_s=120,  # InThread binds a free port
                             require_ready=require_ready)
        self.app, self.gateway, self.server = self._srv.app, self._srv.gateway, self._srv.server
        self.thread, self.port, self.url = self._srv.thread, self._srv.port, self._srv.url

    def stop(self):
        self._srv.stop()


@pytest.fixture
def run_gateway():
    started = []

    def start(cfg, gateway=None, require_ready: bool = True):
        g = Running(cfg, gateway, require_ready)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


def routing_with_threshold(threshold: float | None, mode: str = "threshold") -> dict:
    return {"mode": mode, "threshold": threshold, "target_error_rate": 0.05,
            "escalation": {"on_invalid_output": True, "confidence_threshold": threshold}}


def read_json(p: Path) -> dict:
    return json.loads(p.read_text())


class StubEngine:
    """An engine without a model, for the HTTP and lane tests that need no real decode: answers the
    skill's first label (or `answer(prompt)`), with `confidence`; `load_s` makes each load slow;
    an input holding `poison` fails any batch it is in (a fault of that input alone). Counts loads
    and unloads per key."""

    def __init__(self, confidence: float | None = 0.0, load_s: float = 0.0, poison: str | None = None,
                 decode_s: float = 0.0, answer=None):
        import collections

        self.confidence, self.load_s, self.poison, self.decode_s, self.answer = confidence, load_s, poison, decode_s, answer
        self.loads: collections.Counter = collections.Counter()
        self.unloads: collections.Counter = collections.Counter()
        self.batches: list[int] = []
        self.loaded: set[str] = set()
        self.label = "billing"

    def load(self, key, folder, spec):
        if key in self.loaded:  # what PEFT says when an adapter name is added twice
            raise ValueError(f"adapter {key} already loaded")
        time.sleep(self.load_s)
        self.loaded.add(key)
        self.loads[key] += 1
        self.label = (spec.get("labels") or ["x"])[0]

    def unload(self, key):
        self.loaded.discard(key)
        self.unloads[key] += 1

    def tokenizer(self, key):
        return None

    def decode(self, key, cfg, prompts, max_new_tokens, inputs=None, **kw):  # kw: what newer engines take (signal)
        from gateway.engine import Answer

        time.sleep(self.decode_s)
        self.batches.append(len(prompts))
        if self.poison is not None and any(self.poison in p for p in prompts):
            raise RuntimeError("the backend cannot decode this batch")
        out = []
        for p in prompts:
            label = self.answer(p) if self.answer else self.label
            out.append(Answer(raw=f" {label}", parsed=label, confidence=self.confidence, finish_reason="stop",
                              prompt_tokens=len(p.split()), completion_tokens=1))
        return out

    def close(self):
        pass


@pytest.fixture
def drift_skill(tmp_path, monkeypatch):
    """seeds/ticket-triage with a short drift window (skill.yaml's drift block), a fresh work dir and registry."""
    import shutil

    import yaml

    from tests.conftest import REPO

    root = tmp_path / "seeds"
    shutil.copytree(REPO / "seeds" / SKILL, root / SKILL)
    path = root / SKILL / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["drift"] = {"window_requests": 20, "min_requests": 10, "sustain_requests": 3, "sustain_minutes": 0,
                    "cooldown_minutes": 60}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(root))
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "work"))
    monkeypatch.delenv("DISTILL_REGISTRY", raising=False)
    return root
