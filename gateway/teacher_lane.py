"""The skill's teacher, for the escalate and verify lanes, through the project's teacher client
(`teachers.open_teacher`: retries, budgets, cache, keys). One worker thread per skill owns the
client (its SQLite cache is bound to one thread) and answers queued requests in batches.

The teacher answers exactly as the version's run measured it: with the option in routing.json's
`teacher_option` (answerer, shots and their seed, the calibration prior), through
`teachers.strategies.answer_inputs`, the function the pipeline's teacher lane and its labelling use.
A version published without one is answered with the skill's configured option."""

from __future__ import annotations

import contextlib
import json
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
        self._default_option: dict | None = None
        self._seeds_hash: str | None = None
        self._warned: set[str] = set()
        self._failed_at: float | None = None
        self._why = ""
        self.batcher = DynamicBatcher(self._answer, max_batch, max_wait_ms, name=f"teacher-{self.name}")

    def submit(self, input: str, option: dict | None = None) -> Future:
        """Future[TeacherAnswer] for `input` under a teacher option (None: the skill's configured one)."""
        return self.batcher.submit((input, json.dumps(option, sort_keys=True) if option else ""))

    def _open(self):
        """The Teacher, opened on first use (in the worker thread); raises RuntimeError while it cannot be."""
        if self._teacher is not None:
            return self._teacher
        if self.skill is None:
            raise RuntimeError(f"no teacher for this skill ({self.missing})")
        if self._failed_at is not None and time.monotonic() - self._failed_at < REOPEN_AFTER_S:
            raise RuntimeError(self._why)
        from teachers import open_teacher
        from teachers.strategies import answerer

        stack = contextlib.ExitStack()
        try:
            self._teacher = stack.enter_context(open_teacher(self.skill.config.teacher,
                                                             scoring=answerer(self.skill.config) == "score"))
        except Exception as e:
            stack.close()
            self._failed_at, self._why = time.monotonic(), f"teacher unreachable: {type(e).__name__}: {e}"
            raise RuntimeError(self._why) from None
        self._stack, self._failed_at = stack, None
        return self._teacher

    def _answer(self, items: Sequence[tuple[str, str]]) -> list[TeacherAnswer]:
        """(input, option as canonical JSON or "") pairs -> answers in order; one teacher call per option."""
        from teachers.strategies import answer_inputs, teacher_option

        try:
            teacher = self._open()
        except RuntimeError as e:
            return [TeacherAnswer(None, str(e)) for _ in items]
        groups: dict[str, list[int]] = {}
        for i, (_, opt) in enumerate(items):
            groups.setdefault(opt, []).append(i)
        out: list[TeacherAnswer | None] = [None] * len(items)
        for opt, idx in groups.items():
            try:
                if opt:
                    option = json.loads(opt)
                    self._check_seeds(option)
                else:
                    if self._default_option is None:
                        self._default_option = teacher_option(self.skill, teacher, None, 0)
                    option = self._default_option
                got = answer_inputs(self.skill, teacher, [items[i][0] for i in idx], option)
                for i, v in zip(idx, got):
                    out[i] = TeacherAnswer(v.answer, v.error, v.raw)
            except ValueError as e:  # this option is unusable (a bad answerer): its requests only
                for i in idx:
                    out[i] = TeacherAnswer(None, f"teacher option: {e}")
            except Exception as e:  # error-rate stop, unreachable endpoint: no teacher answer for the rest
                self._close()
                for i in range(len(items)):
                    if out[i] is None:
                        out[i] = TeacherAnswer(None, f"teacher failed: {type(e).__name__}: {e}")
                break
        return out  # type: ignore[return-value]

    def _check_seeds(self, option: dict) -> None:
        """Warn once per option when the shots would come from other seeds than the measured run's."""
        from core.records import hash_examples

        want = option.get("seeds_hash")
        if want and self._seeds_hash is None:
            self._seeds_hash = hash_examples(self.skill.seeds)
        if want and want != self._seeds_hash and want not in self._warned:
            self._warned.add(want)
            log.warning("skill %s: its seeds changed since the served version's run measured the teacher; the "
                        "escalate lane's shots come from today's seeds", self.name)

    def _close(self) -> None:
        if self._stack is not None:
            with contextlib.suppress(Exception):
                self._stack.close()
        self._stack = self._teacher = None

    def close(self) -> None:
        self.batcher.close()
        self._close()
