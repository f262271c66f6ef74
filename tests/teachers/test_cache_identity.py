"""The response cache knows who answered (issue 15, item 9): a local teacher's cache key names the
content of its weights, not only their path."""

from __future__ import annotations

import os
import shutil

from teachers.local import LocalBackend, LocalModel


def _replace_weights_keeping_size_and_mtime(folder):
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    st = path.stat()
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0  # new weights, same shapes and dtype: same file size
    save_file(tensors, str(path), metadata={"format": "pt"})
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_new_weights_behind_the_same_path_change_the_cache_identity(tiny_model_path, tmp_path):
    folder = tmp_path / "teacher"
    shutil.copytree(tiny_model_path, folder)
    before = LocalBackend(LocalModel(str(folder)), "my-teacher").identity()
    again = LocalBackend(LocalModel(str(folder)), "my-teacher").identity()
    assert before == again and before["weights"] and before["model"] == "my-teacher"
    _replace_weights_keeping_size_and_mtime(folder)
    after = LocalBackend(LocalModel(str(folder)), "my-teacher").identity()
    assert after["model"] == before["model"] and after["weights"] != before["weights"]
