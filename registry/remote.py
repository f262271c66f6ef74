"""The registry on object storage (s3://, gs://, memory://, any fsspec URL).

Same layout and API as the local :class:`registry.store.Registry`; what differs is how
the guarantees are kept without rename or flock:

* **Staging, then one visible step.** A publisher uploads every file under
  ``<skill>/.staging/<random id>/`` first (no lock held: slow uploads block nobody), then,
  holding the skill's lock, claims version N, copies the staged files into
  ``<skill>/versions/N/`` (server-side copies) and writes ``checksums.json`` LAST. That
  manifest is the version's marker: readers list only versions that have one, so a
  version is invisible until complete.
* **Never overwritten.** The claim ``versions/N/.claim`` and the marker are written with
  an exclusive create (S3: a conditional ``PUT`` with ``If-None-Match: *``), so even two
  writers that both believe they hold the lock cannot both get N. ``.claim`` stays for
  good (pull and verify ignore it), so a number is never claimed twice, even when the
  claimant died (then its other files are removed).
* **Lock.** ``<skill>/.lock`` is a lease object, never deleted: it is taken with an exclusive
  create, or with a compare-and-swap of a released lease (``PUT`` with ``If-Match: <etag>``), and
  released by a compare-and-swap back to a released lease, so a holder can never delete or
  overwrite another holder's lease. A lease that was not released (a dead holder) is broken only
  after the waiter has seen the very same lease object for ``LOCK_LEASE_S`` on its own monotonic
  clock: no comparison of clocks between hosts. A holder stops before each commit step (the
  version's marker, an alias move) once it has held the lock for half a lease, so a broken lease
  and its old holder never overlap, whatever the hosts' clocks say.
* **Preconditions per store.** S3: ``If-None-Match: *`` / ``If-Match: <etag>``. ``memory://``: the
  store lives in this process, so one process-wide mutex makes create and compare-and-swap exact.
  Other stores (``gs://``, ``az://``, ...): this code has no tested precondition for them, so
  publish, promote and rollback are refused (:class:`RegistryError` saying so) unless the registry is
  opened with ``single_writer=True`` (or ``DISTILL_REGISTRY_SINGLE_WRITER=1``): the operator's
  promise that one publisher at a time writes it. Reading works everywhere.
* **Atomic alias moves.** One object ``PUT`` replaces ``aliases.json`` (readers see the
  old or the new content); alias writers hold the lock.
* **Leftovers, judged on the store's clock only.** The next publisher removes staging prefixes and
  unmarked claimed versions older than ``ABANDONED_AFTER_S``, where "older" compares the store's own
  modification times (S3 ``LastModified``) with the store's time of the lease it has just renewed:
  never a writer's wall clock (a publisher whose clock ran 2 h behind lost its live upload to another's
  clean-up). A publisher waiting for the lock refreshes its staging (``.alive``) so it never looks
  abandoned, the cleaner's own staging (named in its lease) is never removed, and a store that
  records no modification times gets no clean-up at all.

* **Verified before an alias moves.** A publish re-reads the version it just committed and checks
  every file's sha256 before pointing an alias at it; promote and rollback do the same.
* **One version per run.** A publish whose ``lineage.run_id`` already has a version returns that
  version; errors after the commit point (staging clean-up, lock release) are logged, not raised.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from registry.store import (ADAPTER_FILES, CARD_FILE, CHECKSUMS_FILE, LOCK_FILE,
                            PRODUCTION, VERSIONS_DIR, Registry, RegistryError, RegistryUnavailable, _check_name,
                            is_skill_name, is_version_name, sha256_bytes, sha256_file, storage_error, verify_folder)

log = logging.getLogger("distill." + __name__)

STAGING_DIR = ".staging"
CLAIM_FILE = ".claim"
# A publisher holds the lock for seconds (uploads happen before it is taken); 5 minutes means
# only a dead holder's lease is ever broken. A waiter breaks a lease only after seeing the same
# lease object this long (its own monotonic clock); a holder commits nothing after half of it.
LOCK_LEASE_S = 300.0
# How long a publisher waits for the lock before giving up with a clear error.
LOCK_WAIT_S = 600.0
# Staging uploads / claimed-but-unmarked versions older than this, by the store's own clock, belong to
# a dead publisher. A live one waiting for the lock refreshes its staging every tenth of it.
ABANDONED_AFTER_S = 3600.0
ALIVE_FILE = ".alive"
SINGLE_WRITER_ENV = "DISTILL_REGISTRY_SINGLE_WRITER"
# memory:// lives in this process: one mutex makes its create-if-absent and compare-and-swap exact.
_MEMORY_GUARD = threading.Lock()


def _precondition_failed(e: BaseException) -> bool:
    """s3fs maps a failed If-None-Match to FileExistsError, a failed If-Match to OSError(EINVAL)."""
    return isinstance(e, FileExistsError) or (isinstance(e, OSError) and e.errno == errno.EINVAL
                                              and "condition" in str(e).lower())


def modified_at(info: dict[str, Any]) -> float | None:
    """An object's modification time as the STORE recorded it (POSIX seconds), from an fsspec info
    dict: S3 ``LastModified``, Azure ``last_modified``, GCS ``updated``, local ``mtime``, memory://
    ``created``. None when the store records none (its objects are then never judged stale)."""
    for key in ("LastModified", "last_modified", "updated", "mtime", "modified", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()
    return None


def _lease(data: bytes) -> dict[str, Any]:
    try:
        lease = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return lease if isinstance(lease, dict) else {}


class _NoGuard:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class ObjectRegistry(Registry):
    """The registry on any fsspec filesystem; built by ``Registry("s3://bucket/prefix")``."""

    def __init__(self, root: str | Path | None = None, *, single_writer: bool | None = None,
                 **storage_options: Any) -> None:
        import fsspec

        from core.workdir import registry_root

        if single_writer is None:
            single_writer = os.environ.get(SINGLE_WRITER_ENV, "") not in ("", "0")
        self.single_writer = bool(single_writer)
        self._tls = threading.local()  # the leases this thread holds: {skill: (owner, monotonic time taken)}
        url = str(root if root is not None else registry_root()).rstrip("/")
        # skip_instance_cache: a fresh client per Registry, so no stale listing cache is shared.
        self.fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **storage_options)
        self.url = url
        self.base = path.rstrip("/")
        self.root = None  # no local folder: see location / cache_dir()
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.s3 = "s3" in protocols
        # How this store makes create-if-absent and compare-and-swap exact (None: it cannot here).
        self.preconditions = "s3" if self.s3 else "memory" if "memory" in protocols else None
        if self.s3:
            bucket = self.base.split("/", 1)[0]
            try:
                exists = self.fs.exists(bucket)
            except Exception as e:  # wrong endpoint, no credentials: say so once, clearly
                raise storage_error(f"registry {url}", f"reach the bucket {bucket!r}", e) from None
            if not exists:
                raise RegistryError(f"registry {url}: bucket {bucket!r} does not exist (create it first)")

    @property
    def location(self) -> str:
        return self.url

    # ------------------------------------------------------------------ storage primitives

    def _p(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def _where(self, rel: str) -> str:
        return f"{self.url}/{rel}"

    def _version_location(self, skill: str, version: int) -> str:
        return self._where(f"{skill}/{VERSIONS_DIR}/{version}")

    def _read_text(self, rel: str) -> str | None:
        try:
            return self.fs.cat_file(self._p(rel)).decode("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise storage_error(self._where(rel), "read", e) from None

    def _write_text(self, rel: str, text: str) -> None:
        self.fs.pipe_file(self._p(rel), text.encode("utf-8"))  # one PUT: atomic for readers

    def _delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self._p(rel))
        except FileNotFoundError:
            pass

    def _create(self, rel: str, data: bytes) -> bool:
        """Create `rel` only if it does not exist; False when it already did.

        S3: ``If-None-Match: *``; memory://: under the process-wide mutex; other stores only with
        ``single_writer`` (a check, then a write)."""
        path = self._p(rel)
        if self.preconditions == "memory":
            with _MEMORY_GUARD:
                if self.fs.exists(path):
                    return False
                self.fs.pipe_file(path, data)
                return True
        if self.preconditions is None:
            self._require_exclusion("create " + self._where(rel))
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, data)
            return True
        try:
            self.fs.pipe_file(path, data, mode="create")
            return True
        except (FileExistsError, OSError) as e:
            if _precondition_failed(e):
                return False
            raise

    def _token(self, rel: str) -> tuple[str, bytes] | None:
        """(version token, content) of `rel`, None when absent: S3's ETag; elsewhere the content's sha256
        (every lease body carries a fresh nonce, so equal content means the same write)."""
        path = self._p(rel)
        try:
            if self.preconditions == "s3":
                self.fs.invalidate_cache()
                etag = self.fs.info(path).get("ETag")
                data = self.fs.cat_file(path)
                return (etag or sha256_bytes(data)), data
            data = self.fs.cat_file(path)
            return sha256_bytes(data), data
        except FileNotFoundError:
            return None

    def _replace_if(self, rel: str, token: str, data: bytes) -> bool:
        """Write `data` to `rel` only if it still is the version `token` names (compare-and-swap)."""
        path = self._p(rel)
        if self.preconditions == "s3":
            try:
                self.fs.pipe_file(path, data, IfMatch=token)
                return True
            except OSError as e:
                if _precondition_failed(e) or isinstance(e, FileNotFoundError):
                    return False
                raise
        guard = _MEMORY_GUARD if self.preconditions == "memory" else _NoGuard()
        if self.preconditions is None:
            self._require_exclusion("replace " + self._where(rel))
        with guard:
            current = self._token(rel)
            if current is None or current[0] != token:
                return False
            self.fs.pipe_file(path, data)
            return True

    def _require_exclusion(self, what: str) -> None:
        if self.preconditions is None and not self.single_writer:
            raise RegistryError(
                f"registry {self.url}: cannot {what}: this store ({self.fs.protocol}) has no conditional write this "
                "registry can use (S3 If-None-Match/If-Match; memory://), so two publishers could both take the "
                f"lock. Open it with single_writer=True (or {SINGLE_WRITER_ENV}=1) only if one publisher at a "
                "time writes it; reading needs neither"
            )

    def _find(self, rel: str) -> list[str]:
        """Every file under `rel`, as paths relative to the registry root (fresh listing)."""
        self.fs.invalidate_cache()
        prefix = self._p(rel).rstrip("/") + "/"
        try:
            found = self.fs.find(prefix)
        except FileNotFoundError:
            return []
        return sorted(p[len(self.base) + 1:] for p in found if p.startswith(prefix))

    def _find_times(self, rel: str) -> dict[str, float | None]:
        """{path relative to the registry root: the store's modification time (`modified_at`)} for
        every file under `rel` (fresh listing)."""
        self.fs.invalidate_cache()
        prefix = self._p(rel).rstrip("/") + "/"
        try:
            found = self.fs.find(prefix, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(self.base) + 1:]: modified_at(info) for p, info in found.items() if p.startswith(prefix)}

    def _version_names(self, skill: str, version: int) -> set[str]:
        base = f"{skill}/{VERSIONS_DIR}/{version}/"
        return {r[len(base):] for r in self._find(base.rstrip("/"))} - {CLAIM_FILE}

    def _ignored_names(self) -> set[str]:
        return {CLAIM_FILE}

    def _file_digest(self, rel: str) -> str | None:
        try:
            with self.fs.open(self._p(rel), "rb") as f:
                import hashlib

                h = hashlib.sha256()
                while block := f.read(1 << 20):
                    h.update(block)
                return h.hexdigest()
        except FileNotFoundError:
            return None

    def _fetch(self, rel: str, dest: Path) -> None:
        self.fs.get_file(self._p(rel), str(dest))

    def _version_files(self, skill: str) -> dict[int, set[str]]:
        """{N: file names} for every claimed version folder (visible or not)."""
        out: dict[int, set[str]] = {}
        base = f"{skill}/{VERSIONS_DIR}/"
        for rel in self._find(base.rstrip("/")):
            num, _, name = rel[len(base):].partition("/")
            if is_version_name(num) and name and "/" not in name:
                out.setdefault(int(num), set()).add(name)
        return out

    def _versions(self, skill: str) -> list[int]:
        _check_name("skill", skill)
        return sorted(n for n, names in self._version_files(skill).items() if CHECKSUMS_FILE in names)

    def _skill_names(self) -> list[str]:
        self.fs.invalidate_cache()
        try:
            entries = self.fs.ls(self.base, detail=False)
        except FileNotFoundError:
            return []
        names = [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]
        # Folder markers (`x_$folder$`), stray files and odd names are not skills: skipped, not fatal.
        return [n for n in names if is_skill_name(n)]

    def snapshot(self, skill: str) -> dict[str, str]:
        """{path relative to <registry>/<skill>: sha256} for every object except the lock."""
        _check_name("skill", skill)
        out = {}
        for rel in self._find(skill):
            short = rel[len(skill) + 1:]
            if short != LOCK_FILE:
                out[short] = self._file_digest(rel) or ""
        return out

    # ------------------------------------------------------------------ consumers

    def resolve(self, skill: str, alias: str = PRODUCTION, version: int | None = None) -> Path:
        import shutil
        import tempfile

        n = self.version_of(skill, version, alias)
        dest = self.cache_dir() / skill / str(n)
        if dest.is_dir():
            try:
                verify_folder(dest)
                return dest
            except RegistryError:
                shutil.rmtree(dest, ignore_errors=True)  # damaged cache: fetch it again
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{n}.pull-", dir=dest.parent))
        try:
            self._pull_into(skill, n, tmp)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not (dest / CHECKSUMS_FILE).is_file():  # a concurrent resolver got there first otherwise
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    # ------------------------------------------------------------------ lock

    @contextmanager
    def _lock(self, skill: str, staging: str | None = None) -> Iterator[None]:
        """Hold ``<skill>/.lock`` (see the module docstring); raises RegistryUnavailable after LOCK_WAIT_S.

        `staging`: this publisher's staging prefix, named in its lease and refreshed (``.alive``) while
        it waits, so no other publisher's clean-up takes it for abandoned."""
        rel = f"{_check_name('skill', skill)}/{LOCK_FILE}"
        self._require_exclusion(f"lock skill {skill!r}")
        owner = uuid.uuid4().hex
        # taken_at: for people reading the lease; nothing compares it (it is this host's clock).
        body = json.dumps({"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
                           "taken_at": time.time(), "staging": staging}).encode()
        deadline = time.monotonic() + LOCK_WAIT_S
        watched: tuple[str, float] | None = None  # (token of the lease seen, monotonic time first seen)
        delay = 0.02
        beat = time.monotonic()
        while True:
            if self._create(rel, body):
                break
            current = self._token(rel)
            if current is not None:
                token, lease = current[0], _lease(current[1])
                now = time.monotonic()
                if lease.get("released"):
                    if self._replace_if(rel, token, body):
                        break
                elif watched is None or watched[0] != token:
                    watched = (token, now)
                elif now - watched[1] >= LOCK_LEASE_S:
                    log.warning("%s: breaking the lease of %s (unchanged for %.0f s: its holder is gone)",
                                self._where(rel), lease.get("owner"), now - watched[1])
                    if self._replace_if(rel, token, body):
                        break
            if time.monotonic() > deadline:
                raise RegistryUnavailable(f"{self._where(rel)}: could not get the skill's lock in {LOCK_WAIT_S:.0f} s "
                                          "(another publisher holds it)")
            if staging is not None and time.monotonic() - beat >= ABANDONED_AFTER_S / 10:
                self._touch(staging)  # still alive: the holder's clean-up keeps it
                beat = time.monotonic()
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
        held = self._held()
        held[skill] = (owner, time.monotonic())
        try:
            yield
        finally:
            held.pop(skill, None)
            try:
                self._release(rel, owner)
            except Exception as e:  # after a commit: log it; a lease left behind is broken after LOCK_LEASE_S
                log.warning("%s: could not release the lock (%s: %s); it will be broken after %.0f s",
                            self._where(rel), type(e).__name__, e, LOCK_LEASE_S)

    def _touch(self, staging: str) -> None:
        """Rewrite ``<staging>/.alive``: the store stamps it with its own time."""
        self.fs.pipe_file(self._p(f"{staging}/{ALIVE_FILE}"), uuid.uuid4().hex.encode())

    def _store_now(self, skill: str) -> float | None:
        """The store's own current time: this thread's lease on `skill` renewed (a compare-and-swap of
        it with a fresh nonce), then its modification time as the store records it. None when the
        store records none. RegistryUnavailable when the lease is no longer ours."""
        rel = f"{skill}/{LOCK_FILE}"
        owner = self._held().get(skill, (None, 0.0))[0]
        current = self._token(rel)
        lease = _lease(current[1]) if current is not None else {}
        if owner is None or lease.get("owner") != owner or \
                not self._replace_if(rel, current[0], json.dumps({**lease, "renewed": uuid.uuid4().hex}).encode()):
            raise RegistryUnavailable(f"skill {skill!r}: the lock was taken over: not cleaning up")
        self.fs.invalidate_cache()
        return modified_at(self.fs.info(self._p(rel)))

    def _held(self) -> dict[str, tuple[str, float]]:
        if not hasattr(self._tls, "held"):
            self._tls.held = {}
        return self._tls.held

    def _release(self, rel: str, owner: str) -> None:
        """Swap our lease for a released one; a lease that is no longer ours is left alone."""
        current = self._token(rel)
        if current is None or _lease(current[1]).get("owner") != owner:
            log.warning("%s: the lock was broken while held (another publisher took it)", self._where(rel))
            return
        released = json.dumps({"released": True, "owner": None, "nonce": uuid.uuid4().hex,
                               "released_at": time.time()}).encode()
        if not self._replace_if(rel, current[0], released):
            log.warning("%s: the lock was broken while held (another publisher took it)", self._where(rel))

    def _fence(self, skill: str, step: str) -> None:
        """Refuse a commit step unless this thread holds the skill's lease, for less than half of it."""
        owner, taken = self._held().get(skill, (None, 0.0))
        if owner is None:
            raise RegistryError(f"skill {skill!r}: {step} without holding the lock")
        held_s = time.monotonic() - taken
        if held_s > LOCK_LEASE_S / 2:
            raise RegistryUnavailable(
                f"skill {skill!r}: held the lock for {held_s:.1f} s, more than half its lease "
                f"({LOCK_LEASE_S:g} s): stopping before {step}, since a waiter may break the lease now"
            )
        current = self._token(f"{skill}/{LOCK_FILE}")
        if current is None or _lease(current[1]).get("owner") != owner:
            raise RegistryUnavailable(f"skill {skill!r}: the lock was taken over: stopping before {step}")

    # ------------------------------------------------------------------ publish

    def _next_version(self, skill: str) -> int:
        claimed = self._version_files(skill)  # claimed numbers are never reused
        return max(claimed, default=0) + 1

    def _clean_abandoned(self, skill: str, keep: str | None = None) -> None:
        """Remove what dead publishers left (lock held): staging uploads and unmarked versions whose
        newest object is older than ABANDONED_AFTER_S, both times the store's own (`_store_now`,
        `modified_at`), never a writer's clock. `keep`: this publisher's own staging, never removed.
        Objects without a modification time, and everything on a store that records none, stay."""
        now = self._store_now(skill)
        if now is None:
            log.warning("%s: the store records no modification times: leftovers are not cleaned up",
                        self._where(skill))
            return

        def abandoned(times: list[float | None]) -> bool:
            return bool(times) and None not in times and now - max(times) > ABANDONED_AFTER_S  # type: ignore[type-var]

        staging: dict[str, dict[str, float | None]] = {}
        for rel, when in self._find_times(f"{skill}/{STAGING_DIR}").items():
            parts = rel.split("/")
            if len(parts) > 3:  # <skill>/.staging/<token>/<file>; anything else is not ours
                staging.setdefault(f"{skill}/{STAGING_DIR}/{parts[2]}", {})[rel] = when
        for prefix, files in staging.items():
            if prefix != keep and abandoned(list(files.values())):
                self.fs.rm([self._p(r) for r in files])
        for n, names in self._version_files(skill).items():
            if CHECKSUMS_FILE in names or names == {CLAIM_FILE}:
                continue
            vrel = f"{skill}/{VERSIONS_DIR}/{n}"
            claim = self._read_text(f"{vrel}/{CLAIM_FILE}")
            try:
                withdrawn = bool(json.loads(claim).get("withdrawn")) if claim else False  # our marker, not a clock
            except (ValueError, AttributeError):
                withdrawn = False
            times = self._find_times(vrel)
            if withdrawn or abandoned(list(times.values())):
                self.fs.rm([self._p(f"{vrel}/{x}") for x in names - {CLAIM_FILE}])

    def publish(
        self,
        skill: str,
        adapter_dir: str | Path,
        *,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        routing: dict[str, Any],
        skill_spec: dict[str, Any],
        model_card: str | Callable[[int], str],
        alias: str | None = PRODUCTION,
        reason: str = "",
        extra: dict[str, dict[str, Any]] | None = None,
    ) -> int:
        adapter_dir, texts = self._publish_inputs(skill, adapter_dir, metrics, lineage, routing, skill_spec,
                                                  model_card, alias, extra)
        self._require_exclusion(f"publish {skill!r}")
        run_id = lineage.get("run_id")
        existing = self.published_run(skill, run_id)  # checked again under the lock
        if existing is not None:
            log.info("%s run %s is already published as version %d: not publishing it again", skill, run_id, existing)
            return existing
        staging = f"{skill}/{STAGING_DIR}/{uuid.uuid4().hex}"  # no clock in the name: nobody may judge it by one
        checksums: dict[str, str] = {}
        try:
            for name in ADAPTER_FILES:
                checksums[name] = sha256_file(adapter_dir / name)
                self.fs.put_file(str(adapter_dir / name), self._p(f"{staging}/{name}"))
            for name, text in texts.items():
                data = text.encode("utf-8")
                checksums[name] = sha256_bytes(data)
                self.fs.pipe_file(self._p(f"{staging}/{name}"), data)
            with self._lock(skill, staging=staging):
                existing = self.published_run(skill, run_id)
                if existing is not None:
                    log.info("%s run %s is already published as version %d: not publishing it again",
                             skill, run_id, existing)
                    return existing
                self._clean_abandoned(skill, keep=staging)
                missing = set(checksums) - {r.rsplit("/", 1)[-1] for r in self._find(staging)}
                if missing:  # only after a pause longer than ABANDONED_AFTER_S: upload again
                    raise RegistryUnavailable(
                        f"{self._where(staging)}: the staged upload lost {', '.join(sorted(missing))} (removed as "
                        f"abandoned after {ABANDONED_AFTER_S:g} s by the store's clock); publish again")
                version = self._commit(skill, staging, checksums, model_card)
                if alias is not None:
                    try:
                        self.verify(skill, version)  # an alias only ever points at a version that verifies
                        self._move_alias(skill, alias, version, "publish", reason)
                    except BaseException:
                        self._withdraw(skill, version)
                        raise
                return version
        finally:
            # After the commit point nothing may fail the publish (a retry would publish again):
            # a staging upload left behind is removed by a later publisher (ABANDONED_AFTER_S).
            try:
                self.fs.rm(self._p(staging), recursive=True)
            except FileNotFoundError:
                pass
            except Exception as e:
                log.warning("%s: could not remove the staging upload (%s: %s); a later publish removes it",
                            self._where(staging), type(e).__name__, e)

    def _move_alias(self, skill: str, alias: str, version: int, action: str, reason: str) -> None:
        self._fence(skill, f"moving alias {alias!r}")
        super()._move_alias(skill, alias, version, action, reason)

    def _commit(self, skill: str, staging: str, checksums: dict[str, str],
                model_card: str | Callable[[int], str]) -> int:
        """Claim the next number, copy the staged files in, write the marker last (lock held)."""
        version = self._next_version(skill)
        vrel = f"{skill}/{VERSIONS_DIR}/{version}"
        claim = json.dumps({"time": time.time(), "staging": staging}).encode()  # time: for people, never compared
        if not self._create(f"{vrel}/{CLAIM_FILE}", claim):
            raise RegistryError(
                f"version {version} of skill {skill!r} already exists at {self._where(vrel)}; versions are immutable"
            )
        try:
            card = self._render_card(model_card, version).encode("utf-8")
            checksums = {**checksums, CARD_FILE: sha256_bytes(card)}
            self.fs.pipe_file(self._p(f"{vrel}/{CARD_FILE}"), card)
            for name in checksums:
                if name != CARD_FILE:
                    self.fs.copy(self._p(f"{staging}/{name}"), self._p(f"{vrel}/{name}"))
            marker = (json.dumps(dict(sorted(checksums.items())), indent=2) + "\n").encode()
            self._fence(skill, f"making version {version} visible")
            if not self._create(f"{vrel}/{CHECKSUMS_FILE}", marker):  # the step that makes it visible
                raise RegistryError(f"version {version} of skill {skill!r} was completed by another writer")
        except BaseException:
            # Never visible: drop the files, keep the claim so the number is not reused.
            leftovers = [self._p(r) for r in self._find(vrel) if not r.endswith(CLAIM_FILE)
                         and not r.endswith(CHECKSUMS_FILE)]
            if leftovers:
                self.fs.rm(leftovers)
            raise
        return version  # .claim stays: it is what makes the number impossible to claim again

    def _withdraw(self, skill: str, version: int) -> None:
        """Hide a just-published version (marker first, one DELETE) and delete its files."""
        vrel = f"{skill}/{VERSIONS_DIR}/{version}"
        self.fs.pipe_file(self._p(f"{vrel}/{CLAIM_FILE}"), json.dumps({"time": 0, "withdrawn": True}).encode())
        self._delete(f"{vrel}/{CHECKSUMS_FILE}")
        rest = [self._p(r) for r in self._find(vrel) if not r.endswith(CLAIM_FILE)]
        if rest:
            self.fs.rm(rest)

