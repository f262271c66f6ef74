"""The bundled GGUF's conversion parses the file once (trainers.base_model._one_gguf_parse): transformers builds
a gguf.GGUFReader for the tokenizer, the config and the weights, and each parse reads the whole vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")


def _tiny_gguf(path):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list([f"tok{i}" for i in range(64)])
    w.add_tensor("blk.0.attn_q.weight", np.arange(16, dtype=np.float32).reshape(4, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_one_parse_per_file_while_converting_and_the_reader_restored_after(tmp_path):
    from trainers.base_model import _one_gguf_parse

    a, b = _tiny_gguf(tmp_path / "a.gguf"), _tiny_gguf(tmp_path / "b.gguf")
    original = gguf.GGUFReader
    with _one_gguf_parse():
        first = gguf.GGUFReader(a)
        assert gguf.GGUFReader(str(a)) is first  # the same file: the same reader, parsed once
        assert gguf.GGUFReader(b) is not first
        from gguf import GGUFReader  # how transformers imports it, inside load_gguf_checkpoint

        assert GGUFReader(a) is first
        # what the shared reader returns is what a fresh parse returns
        fresh = original(a)
        assert [t.name for t in first.tensors] == [t.name for t in fresh.tensors]
        assert np.array_equal(first.tensors[0].data, fresh.tensors[0].data)
    assert gguf.GGUFReader is original
    with pytest.raises(RuntimeError), _one_gguf_parse():
        raise RuntimeError("a failed conversion")
    assert gguf.GGUFReader is original  # restored on failure too
