"""One prompt for training, gates and serving (issue 16, item 13): for every shipped skill and both
prompt formats, the prompt token ids trl trains on equal those the eval gates decode and those the
registry consumer (and so the gateway) builds from skill.json, also when the bundled template is used."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from core.prompting import render_prompt
from core.skills import load_skill
from registry.consumer import build_prompt, skill_config
from registry.stage import skill_spec
from trainers.qlora import to_prompt_completion

REPO = Path(__file__).resolve().parents[2]
# A Gemma-style chat template (the tiny test tokenizer has none).
CHAT = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
        "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


@pytest.fixture(scope="module")
def chat_model(tiny_model_path, tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(tiny_model_path, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHAT
    tok.save_pretrained(folder)
    return str(folder)


def _trl_prompt_ids(model_path: str, cfg, examples) -> list[list[int]]:
    """The prompt part of each row exactly as trl's SFTTrainer prepares it for training."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(model_path)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model_path),
                         args=SFTConfig(output_dir="/tmp/unused-parity", max_length=None, completion_only_loss=True,
                                        report_to=[], use_cpu=True),
                         train_dataset=Dataset.from_list(to_prompt_completion(cfg, examples)), processing_class=tok)
    return [[t for t, lab in zip(r["input_ids"], r["labels"]) if lab == -100] for r in trainer.train_dataset]


@pytest.mark.parametrize("fmt", ["skill_template", "chat_template"])
@pytest.mark.parametrize("name", ["ticket-triage", "json-extraction", "tool-calling"])
def test_training_gates_and_consumer_see_the_same_prompt_ids(chat_model, name, fmt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chat_model)
    skill = load_skill(name, root=REPO / "seeds")
    cfg = skill.config.model_copy(deep=True)
    cfg.student.train.prompt_format = fmt
    examples = skill.eval_set[:6]
    train_ids = _trl_prompt_ids(chat_model, cfg, examples)
    spec = skill_spec(cfg)
    assert spec["prompt_format"] == fmt  # skill.json records how training rendered the prompt
    served_cfg = skill_config(spec, name)
    for ex, ids in zip(examples, train_ids):
        gate = tok(render_prompt(cfg, ex.input, tok))["input_ids"]  # what eval_gates.predict decodes
        consumer = tok(build_prompt(spec, served_cfg, ex.input, tok))["input_ids"]  # registry.predict, the gateway
        assert gate == ids and consumer == ids
        # A version trained with an older template: the bundled one is filled (tools and request for
        # function calls: no literal placeholders) and wrapped as training was.
        old = {**spec, "prompt_template": "Old instruction.\n\n" + spec["prompt_template"].split("\n\n", 1)[1]}
        text = build_prompt(old, served_cfg, ex.input, tok)
        assert text.count("Old instruction.") == 1 and "{tools}" not in text and "{request}" not in text
        assert "{input}" not in text and ("<start_of_turn>user" in text) == (fmt == "chat_template")
