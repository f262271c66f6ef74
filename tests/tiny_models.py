"""The tiny random model the tests (and benchmarks/flow_overhead.py) run on. A plain module,
not conftest.py, so a benchmark can import it without pulling in the test session's setup."""

from __future__ import annotations

from pathlib import Path


def build_tiny_model(folder: Path, corpus: list[str]) -> Path:
    """A 2-layer random Gemma 3 with a byte-level BPE tokenizer trained on `corpus`."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=600, min_frequency=1,
                            special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", eos_token="<eos>",
                                  bos_token="<bos>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        sliding_window=128, layer_types=["sliding_attention", "full_attention"],
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
    )
    model = Gemma3ForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def train_label_adapter(base: str, folder: Path, seed: int = 0, steps: int = 40) -> Path:
    """A LoRA adapter trained a few steps on the ticket-triage seeds with a plain loop (a fixture, not the
    product's trainer: quick, and its answers become labels)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.prompting import format_prompt
    from core.skills import load_skill

    repo = Path(__file__).resolve().parents[1]
    skill = load_skill("ticket-triage", root=repo / "seeds")  # prompts and seeds only: the model comes from `base`
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
