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
