"""The registry on object storage (s3://, gs://, memory://, any fsspec URL).

Same layout and API as the local :class:`registry.store.Registry`; what differs is how
the guarantees are kept without rename or flock:

* **Staging, then one visible step.** A publisher uploads every file under
  ``<skill>/.staging/<time>-<id>/`` first (no lock held: slow uploads block nobody), then,
  holding the skill's lock, claims version N, copies the staged files into
  ``<skill>/versions/N/`` (server-side copies) and writes ``checksums.json`` LAST. That
  manifest is the version's marker: readers list only versions that have one, so a
  version is invisible until complete.
* **Never overwritten.** The claim ``versions/N/.claim`` and the marker are written with
  an exclusive create (S3: a conditional ``PUT`` with ``If-None-Match: *``), so even two
  writers that both believe they hold the lock cannot both get N. ``.claim`` stays for
  good (pull and verify ignore it), so a number is never claimed twice, even when the
  claimant died (then its other files are removed).
* **Lock.** ``<skill>/.lock`` is a lease object created with the same exclusive create;
  a lease older than ``LOCK_LEASE_S`` (a dead holder) is taken over with a
  compare-and-swap (``PUT`` with ``If-Match: <etag>``), so two breakers cannot both win.
* **Atomic alias moves.** One object ``PUT`` replaces ``aliases.json`` (readers see the
  old or the new content); alias writers hold the lock.
* **Leftovers.** Staging prefixes and unmarked claimed versions older than
  ``ABANDONED_AFTER_S`` are removed by the next publisher.

Limits: backends other than S3 get the exclusive create fsspec offers them (exact for
``memory://``; best-effort check-then-write elsewhere), and lease expiry compares the
writer's clock with the time stored in the lease, so hosts need roughly synced clocks.
"""

from __future__ import annotations

import errno
import json
import os
import random
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from registry.store import (ADAPTER_FILES, CARD_FILE, CHECKSUMS_FILE, LOCK_FILE,
                            PRODUCTION, VERSIONS_DIR, Registry, RegistryError, _check_name, sha256_bytes,
                            sha256_file, verify_folder)

STAGING_DIR = ".staging"
CLAIM_FILE = ".claim"
# A publisher holds the lock for seconds (uploads happen before it is taken); 5 minutes means
# only a dead holder's lease is ever broken.
LOCK_LEASE_S = 300.0
# How long a publisher waits for the lock before giving up with a clear error.
LOCK_WAIT_S = 600.0
# Staging uploads / claimed-but-unmarked versions older than this belong to a dead publisher.
ABANDONED_AFTER_S = 3600.0


def _precondition_failed(e: BaseException) -> bool:
    """s3fs maps a failed If-None-Match to FileExistsError, a failed If-Match to OSError(EINVAL)."""
    return isinstance(e, FileExistsError) or (isinstance(e, OSError) and e.errno == errno.EINVAL
                                              and "condition" in str(e).lower())


class ObjectRegistry(Registry):
    """The registry on any fsspec filesystem; built by ``Registry("s3://bucket/prefix")``."""

    def __init__(self, root: str | Path | None = None, **storage_options: Any) -> None:
        import fsspec

        from core.workdir import registry_root

        url = str(root if root is not None else registry_root()).rstrip("/")
        # skip_instance_cache: a fresh client per Registry, so no stale listing cache is shared.
        self.fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **storage_options)
        self.url = url
        self.base = path.rstrip("/")
        self.root = None  # no local folder: see location / cache_dir()
        self.s3 = "s3" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        if self.s3:
            bucket = self.base.split("/", 1)[0]
            try:
                exists = self.fs.exists(bucket)
            except Exception as e:  # wrong endpoint, no credentials: say so once, clearly
                raise RegistryError(f"registry {url}: cannot reach the bucket {bucket!r} ({e})") from None
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
            raise RegistryError(f"{self._where(rel)}: cannot read ({e})") from None

    def _write_text(self, rel: str, text: str) -> None:
        self.fs.pipe_file(self._p(rel), text.encode("utf-8"))  # one PUT: atomic for readers

    def _delete(self, rel: str) -> None:
        try:
            self.fs.rm_file(self._p(rel))
        except FileNotFoundError:
            pass

    def _create(self, rel: str, data: bytes) -> bool:
        """Create `rel` only if it does not exist (S3: If-None-Match: *); False when it already did."""
        try:
            self.fs.pipe_file(self._p(rel), data, mode="create")
            return True
        except (FileExistsError, OSError) as e:
            if _precondition_failed(e):
                return False
            raise
        except (NotImplementedError, TypeError, ValueError):  # a backend without exclusive create
            if self.fs.exists(self._p(rel)):
                return False
            self.fs.pipe_file(self._p(rel), data)
            return True

    def _find(self, rel: str) -> list[str]:
        """Every file under `rel`, as paths relative to the registry root (fresh listing)."""
        self.fs.invalidate_cache()
        prefix = self._p(rel).rstrip("/") + "/"
        try:
            found = self.fs.find(prefix)
        except FileNotFoundError:
            return []
        return sorted(p[len(self.base) + 1:] for p in found if p.startswith(prefix))

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
            if num.isdigit() and num[0] != "0" and name and "/" not in name:
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
        return [n for n in names if n and not n.startswith(".")]

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
    def _lock(self, skill: str) -> Iterator[None]:
        rel = f"{_check_name('skill', skill)}/{LOCK_FILE}"
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + LOCK_WAIT_S
        delay = 0.02
        while True:
            body = json.dumps({"owner": owner, "expires": time.time() + LOCK_LEASE_S}).encode()
            if self._create(rel, body):
                break
            if self._take_over_expired(rel, body):
                break
            if time.monotonic() > deadline:
                raise RegistryError(f"{self._where(rel)}: could not get the skill's lock in {LOCK_WAIT_S:.0f} s "
                                    "(another publisher holds it)")
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)
        try:
            yield
        finally:
            # Delete the lease only while it is still ours (it may have been broken as expired).
            text = self._read_text(rel)
            if text is not None and json.loads(text).get("owner") == owner:
                self._delete(rel)

    def _take_over_expired(self, rel: str, body: bytes) -> bool:
        path = self._p(rel)
        try:
            self.fs.invalidate_cache()
            etag = self.fs.info(path).get("ETag")
            lease = json.loads(self.fs.cat_file(path))
        except FileNotFoundError:
            return False  # released meanwhile: the next create attempt gets it
        except json.JSONDecodeError:
            lease = {}
        if float(lease.get("expires", 0)) > time.time():
            return False
        if self.s3 and etag:
            try:  # compare-and-swap: only one breaker replaces the lease it saw
                self.fs.pipe_file(path, body, IfMatch=etag)
                return True
            except OSError as e:
                if _precondition_failed(e) or isinstance(e, FileNotFoundError):
                    return False
                raise
        self._delete(rel)  # no CAS on this backend: delete and race on the exclusive create
        return self._create(rel, body)

    # ------------------------------------------------------------------ publish

    def _next_version(self, skill: str) -> int:
        claimed = self._version_files(skill)  # claimed numbers are never reused
        return max(claimed, default=0) + 1

    def _clean_abandoned(self, skill: str) -> None:
        """Remove what dead publishers left: old staging uploads and old unmarked versions."""
        now = time.time()
        staging: dict[str, list[str]] = {}
        for rel in self._find(f"{skill}/{STAGING_DIR}"):
            token = rel.split("/")[2]
            staging.setdefault(token, []).append(rel)
        for token, rels in staging.items():
            started = token.split("-", 1)[0]
            if started.isdigit() and now - int(started) > ABANDONED_AFTER_S:
                self.fs.rm([self._p(r) for r in rels])
        for n, names in self._version_files(skill).items():
            if CHECKSUMS_FILE in names or names == {CLAIM_FILE}:
                continue
            claim = self._read_text(f"{skill}/{VERSIONS_DIR}/{n}/{CLAIM_FILE}")
            try:
                claimed_at = float(json.loads(claim)["time"]) if claim else 0.0
            except (ValueError, KeyError, TypeError):
                claimed_at = 0.0
            if now - claimed_at > ABANDONED_AFTER_S:
                self.fs.rm([self._p(f"{skill}/{VERSIONS_DIR}/{n}/{x}") for x in names - {CLAIM_FILE}])

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
    ) -> int:
        adapter_dir, texts = self._publish_inputs(skill, adapter_dir, metrics, lineage, routing, skill_spec,
                                                  model_card, alias)
        staging = f"{skill}/{STAGING_DIR}/{int(time.time())}-{uuid.uuid4().hex}"
        checksums: dict[str, str] = {}
        try:
            for name in ADAPTER_FILES:
                checksums[name] = sha256_file(adapter_dir / name)
                self.fs.put_file(str(adapter_dir / name), self._p(f"{staging}/{name}"))
            for name, text in texts.items():
                data = text.encode("utf-8")
                checksums[name] = sha256_bytes(data)
                self.fs.pipe_file(self._p(f"{staging}/{name}"), data)
            with self._lock(skill):
                self._clean_abandoned(skill)
                version = self._commit(skill, staging, checksums, model_card)
                if alias is not None:
                    try:
                        self._move_alias(skill, alias, version, "publish", reason)
                    except BaseException:
                        self._withdraw(skill, version)
                        raise
                return version
        finally:
            try:
                self.fs.rm(self._p(staging), recursive=True)
            except FileNotFoundError:
                pass

    def _commit(self, skill: str, staging: str, checksums: dict[str, str],
                model_card: str | Callable[[int], str]) -> int:
        """Claim the next number, copy the staged files in, write the marker last (lock held)."""
        version = self._next_version(skill)
        vrel = f"{skill}/{VERSIONS_DIR}/{version}"
        claim = json.dumps({"time": time.time(), "staging": staging}).encode()
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

