"""Gateway fixtures: a trained tiny adapter published in a fresh registry, the project's fake
OpenAI server as the teacher, and the gateway itself under uvicorn on a free loopback port."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

SKILL = "ticket-triage"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_adapter(base: str, folder: Path, seed: int = 0, steps: int = 40) -> Path:
    """A LoRA adapter trained a few steps on the ticket-triage seeds (answers become labels)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.prompting import format_prompt
    from core.skills import load_skill

    from tests.conftest import REPO

    skill = load_skill(SKILL, root=REPO / "seeds")  # prompts and seeds only: the model comes from `base`
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    rows = []
    for e in skill.seeds:
        p = tok(format_prompt(skill.config, e.input))["input_ids"]
        a = tok(" " + e.output + "\n", add_special_tokens=False)["input_ids"]
        rows.append((p + a, [-100] * len(p) + a))
    model.train()
    for step in range(steps):
        batch = rows[(step * 8) % len(rows):][:8]
        width = max(len(r[0]) for r in batch)
        ids = torch.tensor([[tok.pad_token_id] * (width - len(i)) + i for i, _ in batch])
        lab = torch.tensor([[-100] * (width - len(l)) + l for _, l in batch])
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(i) for i, _ in batch])[:, None]).long()
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(folder)
    return folder


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
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return skill_root


class Running:
    """A gateway under uvicorn in a thread; .url, .app, .gateway, .stop()."""

    def __init__(self, cfg):
        import uvicorn

        from gateway.app import create_app

        self.port = free_port() if not cfg.port else cfg.port
        self.app = create_app(cfg)
        self.gateway = self.app.state.gateway
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"
        import httpx

        end = time.time() + 120
        while time.time() < end:
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def run_gateway():
    started = []

    def start(cfg):
        g = Running(cfg)
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
