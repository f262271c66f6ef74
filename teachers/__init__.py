"""Teacher backends and expansion strategies."""

from __future__ import annotations

from core.skills import TeacherConfig


def make_teacher(cfg: TeacherConfig, resolved_model: str | None = None):
    """The configured teacher: a local transformers model or an OpenAI-compatible server."""
    if cfg.backend == "openai":
        from teachers.openai_http import OpenAITeacher

        t = OpenAITeacher(cfg.base_url or "", cfg.model, cfg.api_key_env, cfg.timeout_s)
        t.check()
        return t
    from teachers.local import LocalModel

    return LocalModel(resolved_model or cfg.model, name=cfg.model)
