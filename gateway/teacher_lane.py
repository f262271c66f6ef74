"""The skill's teacher, for the escalate and verify lanes, through the project's teacher client
(`teachers.open_teacher`: retries, budgets, cache, keys). One worker thread per skill owns the
client (its SQLite cache is bound to one thread) and answers queued requests in batches."""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Sequence

from gateway.batcher import DynamicBatcher

log = logging.getLogger("distill.gateway")

# After the teacher could not be opened, fail fast for this long before trying again.
REOPEN_AFTER_S = 5.0


@dataclass
class TeacherAnswer:
    """The teacher's answer to one input: `answer` (canonical) or `error` (why there is none)."""

    answer: str | None
    error: str | None = None
    raw: str | None = None


class TeacherLane:
    """submit(input) -> Future[TeacherAnswer]. `skill` is a core.skills.Skill (its config's teacher
    block and its seeds as few-shot examples), or None when the skill has no teacher here."""

    def __init__(self, skill, max_batch: int = 32, max_wait_ms: float = 5.0, missing: str = "no skill.yaml"):
        self.skill, self.missing = skill, missing
        self.name = skill.name if skill is not None else "-"
        self._stack: contextlib.ExitStack | None = None
        self._teacher = None
        self._picker = None
        self._failed_at: float | None = None
        self._why = ""
        self.batcher = DynamicBatcher(self._answer, max_batch, max_wait_ms, name=f"teacher-{self.name}")

    def submit(self, input: str) -> Future:
        return self.batcher.submit(input)

    def _open(self):
        """The Teacher, opened on first use (in the worker thread); raises RuntimeError while it cannot be."""
        if self._teacher is not None:
            return self._teacher
        if self.skill is None:
            raise RuntimeError(f"no teacher for this skill ({self.missing})")
        if self._failed_at is not None and time.monotonic() - self._failed_at < REOPEN_AFTER_S:
            raise RuntimeError(self._why)
        from teachers import open_teacher
        from teachers.strategies import shot_picker

        stack = contextlib.ExitStack()
        try:
            self._teacher = stack.enter_context(open_teacher(self.skill.config.teacher))
            self._picker = shot_picker(self.skill)
        except Exception as e:
            stack.close()
            self._failed_at, self._why = time.monotonic(), f"teacher unreachable: {type(e).__name__}: {e}"
            raise RuntimeError(self._why) from None
        self._stack, self._failed_at = stack, None
        return self._teacher

    def _answer(self, inputs: Sequence[str]) -> list[TeacherAnswer]:
        from core import prompting
        from core.tasks import get_task
        from teachers.base import Completion, Request
        from teachers.strategies import answer_max_tokens, response_format_for

        try:
            teacher = self._open()
        except RuntimeError as e:
            return [TeacherAnswer(None, str(e)) for _ in inputs]
        cfg = self.skill.config
        task = get_task(cfg)
        prompts = []
        for x in inputs:
            shots = self._picker.pick(x)
            prompts.append(prompting.format_prompt(cfg, x, [(s.input, s.output) for s in shots]))
        rf = response_format_for(self.skill)
        reqs = [Request(prompt=p, max_tokens=answer_max_tokens(cfg), temperature=0.0, stop=("\n",), response_format=rf)
                for p in prompts]

        def check(c, i):
            answer = prompting.parse_output(cfg, c.text)
            if answer is None:
                return "unparseable_answer"
            bad = task.output_problem(answer, inputs[i])
            return bad[0] if bad else None

        try:
            outcomes = teacher.run(reqs, validate=check)
        except Exception as e:  # error-rate stop, unreachable endpoint: this batch has no teacher answer
            self._close()
            return [TeacherAnswer(None, f"teacher failed: {type(e).__name__}: {e}") for _ in inputs]
        out = []
        for o in outcomes:
            if isinstance(o, Completion):
                out.append(TeacherAnswer(prompting.parse_output(cfg, o.text), raw=o.text))
            else:
                out.append(TeacherAnswer(None, f"teacher: {o.cause}" + (f" ({o.detail[:200]})" if o.detail else ""), o.text))
        return out

    def _close(self) -> None:
        if self._stack is not None:
            with contextlib.suppress(Exception):
                self._stack.close()
        self._stack = self._teacher = None

    def close(self) -> None:
        self.batcher.close()
        self._close()
