"""The consumer API on a real (tiny, random) Gemma 3 + LoRA adapter: resolve, load, predict, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from registry import Registry, RegistryError, load, predict, resolve
from registry.consumer import Predictor, build_prompt, skill_config
from registry.stage import skill_spec

SKILL = "ticket-triage"


@pytest.fixture
def tiny_skill(skill_root):
    from core.skills import load_skill

    return load_skill(SKILL, "tiny")


@pytest.fixture
def lora_dir(tmp_path, tiny_model_path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def _publish(reg: Registry, skill, adapter: Path, **kw) -> int:
    return reg.publish(SKILL, adapter, metrics={"eval": {"accuracy": 0.5}}, lineage={"run_id": "r1"},
                       routing={"expected_accuracy": 0.5}, skill_spec=skill_spec(skill.config),
                       model_card="---\nlibrary_name: peft\n---\n", **kw)


def _reference_logits(tiny_model_path: str, adapter: Path, ids) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), str(adapter))
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_version_folder_loads_as_is_with_peft(tiny_skill, lora_dir, tiny_model_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reg = Registry()
    _publish(reg, tiny_skill, lora_dir)
    folder = reg.path(SKILL)
    ids = torch.tensor([[2, 10, 20, 30]])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), str(folder))
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert torch.allclose(got, _reference_logits(tiny_model_path, lora_dir, ids), atol=1e-5)


def test_skill_json_carries_what_consumers_need(tiny_skill, lora_dir):
    reg = Registry()
    _publish(reg, tiny_skill, lora_dir)
    spec = json.loads((reg.path(SKILL) / "skill.json").read_text())
    assert spec["task"] == "classification" and spec["task_type"] == "classification"
    assert spec["labels"] == tiny_skill.config.labels
    assert "{input}" in spec["prompt_template"]
    assert spec["base_model"] == tiny_skill.config.student.base_model
    cfg = skill_config(spec)
    assert cfg.labels == tiny_skill.config.labels and cfg.instruction == tiny_skill.config.instruction


def test_load_returns_the_adapter_on_its_base(tiny_skill, lora_dir, tiny_model_path):
    reg = Registry()
    _publish(reg, tiny_skill, lora_dir)
    model, tok = load(SKILL)
    ids = torch.tensor([tok("Ticket: refund please")["input_ids"]])
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert type(model).__name__.startswith("PeftModel")
    assert torch.allclose(got, _reference_logits(tiny_model_path, lora_dir, ids), atol=1e-5)


def test_load_refuses_a_stray_pickle_and_a_corrupted_adapter(tiny_skill, lora_dir):
    reg = Registry()
    _publish(reg, tiny_skill, lora_dir)
    folder = reg.path(SKILL)
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(RegistryError, match="adapter_model.bin: file not listed"):
        load(SKILL)
    (folder / "adapter_model.bin").unlink()
    data = bytearray((folder / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="adapter_model.safetensors: sha256 mismatch"):
        resolve(SKILL)


def test_predict_formats_like_training_and_parses(tiny_skill, lora_dir):
    from core.prompting import format_prompt, parse_output

    reg = Registry()
    _publish(reg, tiny_skill, lora_dir)
    inputs = ["I was charged twice this month", "The app crashes when I upload a photo"]
    p = Predictor(resolve(SKILL))
    assert p.prompts(inputs) == [format_prompt(tiny_skill.config, x) for x in inputs]
    raw = p.generate(inputs, max_new_tokens=6)
    assert all("\n" not in r for r in raw)
    expected = [parse_output(tiny_skill.config, r) for r in raw]
    got = predict(SKILL, inputs, max_new_tokens=6)
    assert got == expected
    assert all(x is None or x in tiny_skill.config.labels for x in got)
    with pytest.raises(RegistryError, match="list of inputs"):
        predict(SKILL, "one string")


def test_bundled_template_wins_when_the_code_template_changed(tiny_skill):
    spec = skill_spec(tiny_skill.config)
    spec["prompt_template"] = "OLD {template} with {braces}\nTicket: {input}\nTeam:"
    cfg = skill_config(spec)
    assert build_prompt(spec, cfg, "a  b\nc") == "OLD {template} with {braces}\nTicket: a b c\nTeam:"


def test_remote_resolve_and_load_from_s3(tiny_skill, lora_dir, s3_url, tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "consumer-home"))
    reg = Registry(s3_url)
    _publish(reg, tiny_skill, lora_dir)
    folder = resolve(SKILL, registry=s3_url)
    assert folder.is_relative_to(tmp_path / "consumer-home" / "registry-cache")
    model, tok = load(SKILL, registry=reg)
    ids = torch.tensor([[2, 10, 20, 30]])
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert torch.allclose(got, _reference_logits(tiny_model_path, lora_dir, ids), atol=1e-5)


# ---------------------------------------------------------------- CLI


def _cli(*argv) -> int:
    from flows.cli import main

    return main(["registry", *argv])


def _adapter(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(name.encode())
    (d / "adapter_config.json").write_text("{}")
    return d


@pytest.fixture
def cli_registry(tmp_path, monkeypatch) -> Registry:
    monkeypatch.setenv("DISTILL_REGISTRY", str(tmp_path / "reg"))
    reg = Registry()
    for i, alias in enumerate(["production", "production", "candidate"]):
        reg.publish("intent", _adapter(tmp_path, f"a{i}"), metrics={"accuracy": i}, lineage={}, routing={},
                    skill_spec={"task": "classification"}, model_card="# card\n", alias=alias)
    return reg


def test_cli_list_show_path_pull(cli_registry, tmp_path, capsys):
    assert _cli("list") == 0
    assert "intent" in capsys.readouterr().out
    assert _cli("show", "intent@3") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 3 and shown["aliases"] == ["candidate"]
    assert _cli("path", "intent") == 0
    assert capsys.readouterr().out.strip() == str(cli_registry.path("intent", 2))
    assert _cli("path", "intent", "--alias", "candidate") == 0
    assert capsys.readouterr().out.strip().endswith("versions/3")
    assert _cli("pull", "intent@1", "--to", str(tmp_path / "pulled")) == 0
    assert (tmp_path / "pulled" / "adapter_model.safetensors").read_bytes() == b"a0"


def test_cli_promote_and_rollback(cli_registry, capsys):
    assert _cli("promote", "intent", "3") == 0
    assert cli_registry.aliases("intent")["production"] == 3
    assert _cli("rollback", "intent") == 0
    assert cli_registry.aliases("intent")["production"] == 2
    assert "intent: production -> 2" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["show", "nope"], "unknown skill 'nope'"),
    (["show", "intent@x"], "invalid version in 'intent@x'"),
    (["show", "intent@9"], "no version 9"),
    (["path", "intent", "--alias", "canary"], "no alias 'canary'"),
    (["promote", "intent"], "promote needs a VERSION"),
    (["promote", "intent", "two"], "invalid VERSION 'two'"),
    (["promote", "intent@2", "2"], "takes SKILL, not SKILL@VERSION"),
    (["show"], "needs a SKILL"),
    (["pull", "intent", "--to", "/proc/definitely/not/here"], ""),
])
def test_cli_errors_are_one_line_with_exit_code_2(cli_registry, capsys, argv, message):
    before = cli_registry.snapshot("intent")
    assert _cli(*argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert cli_registry.snapshot("intent") == before


def test_cli_pull_refuses_a_corrupted_version(cli_registry, tmp_path, capsys):
    (cli_registry.path("intent", 2) / "adapter_model.safetensors").write_bytes(b"evil")
    assert _cli("pull", "intent", "--to", str(tmp_path / "out")) == 2
    assert "corrupted" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
