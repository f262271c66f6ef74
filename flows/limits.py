"""Coarse caps shared by every run against one Prefect API, and which failures are worth a retry.

`teacher-expansion` is a global concurrency limit: at most N teacher-expansion stages run
at once across all runs and skills on the server. The per-endpoint request rate is not
Prefect's job: the teacher client enforces teacher.rpm / teacher.tpm / teacher.max_in_flight
per endpoint (teachers/limits.py), because Prefect's slot-decay rate limits delivered about
0.6 calls/s against 5/s configured (../shared/PREFECT_NOTES.md).

What happens at the start of a teacher-expansion task:
- the limit exists on the API (created by `distill serve`, or by hand, docs/scheduling-and-refresh.md
  "Scheduled runs"): one slot is taken with strict=True, so an API that cannot grant it fails the task
  instead of silently running uncapped; the slot is held on a 60 s lease that the client
  renews, so a SIGKILLed run frees it within a minute;
- it does not exist (a manual `distill run` on the ephemeral API): no slot is asked for and
  the stage runs uncapped (one log line says how to create the limit). A manual run never
  fails for a missing limit.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("distill.flows")

TEACHER_EXPANSION_LIMIT = "teacher-expansion"
# Two expansions at once keep a shared endpoint busy while a third run trains; more mostly
# queue at the endpoint's own rpm/tpm budget. Change it on the server: `prefect gcl update`.
TEACHER_EXPANSION_SLOTS = 2
LEASE_S = 60.0  # the server's least lease; renewed every 45 s while the stage runs


def limit_exists(name: str) -> bool:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return True
        except ObjectNotFound:
            return False


def ensure_teacher_limit(slots: int | None = None) -> int:
    """Create the global `teacher-expansion` limit when missing (TEACHER_EXPANSION_SLOTS slots);
    `slots` given: set it to that. An existing limit keeps the value a team set on the server.
    Returns the limit now in force."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        if slots is not None:
            client.upsert_global_concurrency_limit_by_name(TEACHER_EXPANSION_LIMIT, slots)
            return slots
        try:
            return client.read_global_concurrency_limit_by_name(TEACHER_EXPANSION_LIMIT).limit
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=TEACHER_EXPANSION_LIMIT, limit=TEACHER_EXPANSION_SLOTS))
            return TEACHER_EXPANSION_SLOTS


@contextmanager
def teacher_expansion_slot() -> Iterator[bool]:
    """Hold one slot of the global teacher-expansion limit; yields whether a limit was enforced."""
    from prefect.concurrency.sync import concurrency

    if not limit_exists(TEACHER_EXPANSION_LIMIT):
        # Looked up once: asking Prefect for a missing limit again would only repeat the lookup and warn.
        log.info("no global concurrency limit %r on this Prefect API: teacher expansion is not capped across "
                 "runs (create it: `prefect gcl create %s --limit %d`, or `distill serve`)",
                 TEACHER_EXPANSION_LIMIT, TEACHER_EXPANSION_LIMIT, TEACHER_EXPANSION_SLOTS)
        yield False
        return
    with concurrency(TEACHER_EXPANSION_LIMIT, occupy=1, strict=True, lease_duration=LEASE_S):
        yield True


# --- retries -------------------------------------------------------------------------------------------------------


def _failure(state):
    try:
        return state.result(raise_on_failure=False)
    except Exception as e:  # the result could not be read: judge by that error
        return e


# Retries only where the network is (teacher endpoint, registry storage); the deterministic
# stages (provision, filter, train, evaluate) would fail the same way again. A retried expansion
# re-sends nothing already answered (durable response cache); per-request retries with backoff
# and the endpoint's rpm/tpm budget live in the teacher client (teachers/client.py).
def network_failure(task, task_run, state) -> bool:
    """retry_condition_fn of teacher-expansion: retry what a later attempt can fix (the endpoint
    down, too many failed requests, a broken connection), never a bad key, config or data.
    A retry costs little: every answer received is in the durable response cache."""
    import httpx

    from teachers.base import TeacherErrorRateExceeded, TeacherUnreachable

    return isinstance(_failure(state), (TeacherUnreachable, TeacherErrorRateExceeded, httpx.TransportError,
                                        ConnectionError, TimeoutError))


def registry_failure(task, task_run, state) -> bool:
    """retry_condition_fn of publish: only what a later attempt can fix (storage unreachable, a timeout,
    throttling, the lock held by another publisher: registry.store.is_transient). A bad routing profile,
    metrics that are not JSON, a corrupted version, a denied access fail at once. A retry never
    duplicates a version: a publish of a run id that already has one returns it."""
    from registry.store import is_transient

    failure = _failure(state)
    return isinstance(failure, BaseException) and is_transient(failure)
