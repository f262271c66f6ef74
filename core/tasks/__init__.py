"""Task types, one plug-in per file (see core/tasks/base.py for the protocol).

    from core.tasks import get_task
    task = get_task(cfg)            # the skill's task object
    task.parse_output(raw_text)     # every stage asks it; none branches on the type's name

The built-in types are imported first, in this order; any other module in this folder that
registers a type (`@register`) is found and imported too, so a new type is one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

from core.tasks.base import INVALID, TaskType, _REGISTRY, register

if TYPE_CHECKING:
    from core.config import SkillConfig

BUILTIN = ("classification", "extraction", "function_call", "generation")
_loaded = False


def _load() -> None:
    global _loaded
    if _loaded:
        return
    names = list(BUILTIN) + sorted(m.name for m in pkgutil.iter_modules(__path__)
                                   if m.name not in BUILTIN and m.name != "base" and not m.name.startswith("_"))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    _loaded = True


def task_names() -> tuple[str, ...]:
    """Every registered task type, built-ins first."""
    _load()
    return tuple(n for n in BUILTIN if n in _REGISTRY) + tuple(sorted(n for n in _REGISTRY if n not in BUILTIN))


def task_class(name: str) -> type[TaskType]:
    """The task type registered as `name`; ValueError naming the known ones."""
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown task type {name!r}; known: {', '.join(task_names())}") from None


def get_task(cfg: "SkillConfig") -> TaskType:
    """The task object of a skill config (cheap: build one where needed)."""
    return task_class(cfg.task)(cfg)


def score_items(task: TaskType, examples, predictions) -> tuple[list[dict], dict]:
    """Per-item scores and the aggregate table, in one call."""
    per_item = [task.score(e, p) for e, p in zip(examples, predictions)]
    return per_item, task.aggregate(per_item, examples, predictions)


__all__ = ["BUILTIN", "INVALID", "TaskType", "get_task", "register", "score_items", "task_class", "task_names"]


def answer_grammar_for(cfg: "SkillConfig", input: str | None) -> dict | None:
    """The grammar spec an answer to `input` is decoded under (`decoding.constrained`), or None when
    decoding is free, the type has none, or the type needs the input and cannot read this one (its
    answer is judged invalid anyway). The one rule for the student's decode path and the local teacher."""
    if not cfg.decoding.constrained:
        return None
    task = get_task(cfg)
    if not task.grammar_needs_input:
        return task.answer_grammar()
    try:
        return task.answer_grammar(input)
    except ValueError:
        return None
