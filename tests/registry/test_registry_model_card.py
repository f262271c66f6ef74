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
