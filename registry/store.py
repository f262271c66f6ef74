"""The adapter registry: immutable, numbered versions of each skill's LoRA adapter.

Layout (the consumer contract)::

    <registry>/<skill>/versions/<N>/adapter_model.safetensors
                                    adapter_config.json
                                    README.md        Hugging Face model card
                                    metrics.json     gate results
                                    lineage.json     seeds hash, dataset hash, teachers, run id, code revision
                                    routing.json     escalation threshold, expected quality, latency
                                    skill.json       prompt template, output schema, task type, base model
                                    novelty.json     training-input MinHash signatures (drift monitor; optional)
                                    checksums.json   sha256 of every other file in the folder
    <registry>/<skill>/aliases.json                 {"production": N, "candidate": M}
    <registry>/<skill>/alias_history.jsonl          one line per alias move

``Registry(root)`` is this tree on the local disk; ``Registry("s3://bucket/prefix")`` (any
fsspec URL) returns a :class:`registry.remote.ObjectRegistry` with the same API.

Guarantees (local disk):

* A version folder is built in a hidden temporary folder inside ``<registry>/<skill>/``
  and made visible with a single ``os.rename``; an existing version is never
  overwritten, and a failed publish leaves nothing visible behind.
* ``aliases.json`` and ``alias_history.jsonl`` are replaced atomically.
* Every writer of a skill holds an exclusive ``fcntl.flock`` on
  ``<registry>/<skill>/.lock``, so concurrent publishers (threads or processes)
  never get the same version number or lose an alias move.
* Consumers get a version through :meth:`Registry.resolve` / :meth:`Registry.pull`, which
  check the sha256 of every file against ``checksums.json`` and refuse a changed one.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from core.names import NameRule
from core.records import atomic_write_text, now_iso, parse_jsonl_lines, split_jsonl, write_json
from core.workdir import registry_root, work_dir

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
METADATA_FILES = ("metrics.json", "lineage.json", "routing.json", "skill.json")
CARD_FILE = "README.md"
CHECKSUMS_FILE = "checksums.json"
ALIASES_FILE = "aliases.json"
HISTORY_FILE = "alias_history.jsonl"
LOCK_FILE = ".lock"
VERSIONS_DIR = "versions"
TMP_PREFIX = ".tmp-publish-"
ACTIONS = ("publish", "promote", "rollback")
PRODUCTION = "production"
CACHE_DIR = "registry-cache"  # under DISTILL_HOME: local copies of versions pulled from remote storage

# Whole-string rules (NameRule: fullmatch; `$` would let "production\n" or "3\n" through).
_NAME = NameRule(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "letters, digits, '_', '-', '.', not starting with '.' or '-'")
# Version numbers as written in paths and refs: ASCII digits, no leading zero ("²".isdigit() is True,
# and int("٣") is 3: neither is a version folder name).
_VERSION = NameRule(r"[1-9][0-9]{0,17}", "integers 1, 2, 3, ...")
_URL_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
log = logging.getLogger("distill." + __name__)

_FILE_MODE = 0o644
_DIR_MODE = 0o755


class RegistryError(Exception):
    """A registry operation cannot be done; the message says which skill/version/file and why.

    Retrying does not help (bad arguments, data or config, a corrupted version) unless the error
    is a :class:`RegistryUnavailable`."""


class RegistryUnavailable(RegistryError):
    """The storage could not be reached or answered with a transient error (network, throttling,
    the lock held by another publisher): the same call may succeed later."""


_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNREFUSED,
                     errno.ECONNABORTED, errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN}
# Network errors of the storage clients that are not OSError subclasses (botocore, aiohttp, requests).
_TRANSIENT_NAMES = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                    "ClientConnectorError", "ServerDisconnectedError", "ClientOSError", "ServerTimeoutError",
                    "ConnectionError", "Timeout", "SlowDown", "Throttling")


def is_transient(e: BaseException) -> bool:
    """True when a later attempt of the same storage call may succeed: a broken or refused
    connection, a timeout, throttling, a 5xx mapped to EIO/EAGAIN, or a :class:`RegistryUnavailable`.
    False for everything a retry would hit again: missing objects, denied access, bad data or config
    (every other :class:`RegistryError`)."""
    if isinstance(e, RegistryUnavailable):
        return True
    if isinstance(e, RegistryError):
        return False
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    if isinstance(e, (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
        return True
    return any(n in c.__name__ for c in type(e).__mro__ for n in _TRANSIENT_NAMES)


def storage_error(where: str, action: str, e: BaseException) -> RegistryError:
    """`e` from the storage as a RegistryError naming the object; RegistryUnavailable when transient."""
    cls = RegistryUnavailable if is_transient(e) else RegistryError
    return cls(f"{where}: cannot {action} ({type(e).__name__}: {e})")


def is_version_name(name: Any) -> bool:
    """True for the folder names of versions: ASCII digits without a leading zero ("3", not "03", "²")."""
    return _VERSION.ok(name)


def is_skill_name(name: Any) -> bool:
    """True for names the registry accepts as a skill (letters, digits, '_', '-', '.', not starting with '.' or '-')."""
    return _NAME.ok(name)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_url(location: str | Path) -> bool:
    """True for fsspec URLs other than file:// (those are plain local folders)."""
    m = _URL_RE.match(str(location))
    return bool(m) and m.group(1).lower() not in ("file", "local")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_name(kind: str, name: Any) -> str:
    if not _NAME.ok(name):
        raise RegistryError(f"invalid {kind} name {name!r}: use {_NAME.rule}")
    return name


def _check_version(version: Any) -> int:
    if isinstance(version, str) and is_version_name(version):
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"invalid version {version!r}: versions are integers 1, 2, 3, ...")
    return version


def parse_ref(ref: str) -> tuple[str, int | None]:
    """'SKILL' or 'SKILL@VERSION' -> (skill, version or None), with a clear error for a bad version."""
    skill, at, ver = str(ref).partition("@")
    _check_name("skill", skill)
    if not at:
        return skill, None
    if not is_version_name(ver):
        raise RegistryError(f"invalid version in {ref!r}: write SKILL@N with N = 1, 2, 3, ...")
    return skill, int(ver)


def _json_text(label: str, obj: Any) -> str:
    if not isinstance(obj, dict):
        raise RegistryError(f"{label} must be a dict, got {type(obj).__name__}")
    try:
        return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise RegistryError(f"{label} is not JSON-serialisable ({e})") from None


def _parse_aliases(where: str, text: str) -> dict[str, int]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RegistryError(f"{where}: cannot read aliases ({e})") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
    ):
        raise RegistryError(f"{where}: expected a flat mapping alias -> version number, got {data!r}")
    return data


def _parse_history(where: str, text: str) -> list[dict[str, Any]]:
    out = []
    for lineno, obj, problem in parse_jsonl_lines(split_jsonl(text)):  # \n only: U+2028 may sit in a reason
        if problem:
            raise RegistryError(f"{where}:{lineno}: {problem}")
        out.append(obj)
    return out


def _check_checksums(where: str, text: str | None) -> dict[str, str]:
    if text is None:
        raise RegistryError(f"{where}: missing (the version is incomplete)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RegistryError(f"{where}: cannot read checksums ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise RegistryError(f"{where}: expected a mapping file name -> sha256")
    for name in data:
        if "/" in name or name.startswith(".") or name == CHECKSUMS_FILE:
            raise RegistryError(f"{where}: bad file name {name!r} in checksums")
    return data


def verify_folder(folder: str | Path) -> dict[str, str]:
    """Check a local version folder against its checksums.json (no file missing, extra or changed).

    Returns the checksums; raises RegistryError naming the first bad file.
    """
    folder = Path(folder)
    expected = _check_checksums(str(folder / CHECKSUMS_FILE),
                                (folder / CHECKSUMS_FILE).read_text(encoding="utf-8")
                                if (folder / CHECKSUMS_FILE).is_file() else None)
    present = {p.name for p in folder.iterdir()} - {CHECKSUMS_FILE}
    for name in sorted(present - set(expected)):
        raise RegistryError(f"{folder / name}: file not listed in {CHECKSUMS_FILE} (version folder was modified)")
    for name, digest in sorted(expected.items()):
        f = folder / name
        if not f.is_file():
            raise RegistryError(f"{f}: listed in {CHECKSUMS_FILE} but missing")
        actual = sha256_file(f)
        if actual != digest:
            raise RegistryError(f"{f}: sha256 mismatch (expected {digest}, got {actual}); the file was changed")
    return expected


class Registry:
    """A registry of LoRA adapters on the local filesystem (default: ``registry_root()``).

    Given an fsspec URL (``s3://bucket/prefix``, ``gs://...``, ``memory://...``) the
    constructor returns an :class:`registry.remote.ObjectRegistry` instead; extra keyword
    arguments are fsspec storage options (e.g. ``endpoint_url`` for S3-compatible servers).
    """

    def __new__(cls, root: str | Path | None = None, **storage_options: Any):
        if cls is Registry and is_url(root if root is not None else registry_root()):
            from registry.remote import ObjectRegistry

            return super().__new__(ObjectRegistry)
        return super().__new__(cls)

    def __init__(self, root: str | Path | None = None, **storage_options: Any) -> None:
        root = str(root if root is not None else registry_root())
        if root.startswith("file://"):
            root = root[len("file://"):]
        if storage_options:
            raise RegistryError(f"storage options {sorted(storage_options)} only apply to URL registries, not {root}")
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    @property
    def location(self) -> str:
        """Where the registry lives: a folder or a URL."""
        return str(self.root)

    # ------------------------------------------------------------------ storage primitives (local disk)
    # `rel` paths are POSIX paths relative to the registry root: "<skill>/versions/3/README.md".

    def _read_text(self, rel: str) -> str | None:
        """Content of a file, None if it does not exist."""
        try:
            return (self.root / rel).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise RegistryError(f"{self.root / rel}: cannot read ({e})") from None

    def _write_text(self, rel: str, text: str) -> None:
        """Replace a file atomically (readers see the old or the new content)."""
        atomic_write_text(self.root / rel, text)
        os.chmod(self.root / rel, _FILE_MODE)

    def _delete(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)

    def _where(self, rel: str) -> str:
        """A file's location for error messages."""
        return str(self.root / rel)

    def _version_names(self, skill: str, version: int) -> set[str]:
        d = self._version_dir(skill, version)
        return {p.name for p in d.iterdir()} if d.is_dir() else set()

    def _file_digest(self, rel: str) -> str | None:
        p = self.root / rel
        return sha256_file(p) if p.is_file() else None

    def _fetch(self, rel: str, dest: Path) -> None:
        shutil.copyfile(self.root / rel, dest)

    def _version_location(self, skill: str, version: int) -> Any:
        return self._version_dir(skill, version)

    def _skill_dir(self, skill: str) -> Path:
        return self.root / _check_name("skill", skill)

    def _versions_dir(self, skill: str) -> Path:
        return self._skill_dir(skill) / VERSIONS_DIR

    def _version_dir(self, skill: str, version: int) -> Path:
        return self._versions_dir(skill) / str(version)

    @contextmanager
    def _lock(self, skill: str) -> Iterator[None]:
        """Exclusive lock on ``<registry>/<skill>/.lock`` (never deleted: deleting lock files races)."""
        d = self._skill_dir(skill)
        d.mkdir(parents=True, exist_ok=True)
        fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _versions(self, skill: str) -> list[int]:
        d = self._versions_dir(skill)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and is_version_name(p.name))

    def _skill_names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return [p.name for p in self.root.iterdir() if p.is_dir() and is_skill_name(p.name)]

    # ---------------------------------------------------------------- reading

    def _aliases(self, skill: str) -> dict[str, int]:
        rel = f"{_check_name('skill', skill)}/{ALIASES_FILE}"
        text = self._read_text(rel)
        return {} if text is None else _parse_aliases(self._where(rel), text)

    def _history(self, skill: str) -> list[dict[str, Any]]:
        rel = f"{_check_name('skill', skill)}/{HISTORY_FILE}"
        text = self._read_text(rel)
        return [] if text is None else _parse_history(self._where(rel), text)

    def _require_skill(self, skill: str) -> list[int]:
        versions = self._versions(skill)
        if not versions:
            known = self.skills()
            hint = f"known skills: {', '.join(known)}" if known else "the registry is empty"
            raise RegistryError(f"unknown skill {skill!r} in registry {self.location} ({hint})")
        return versions

    def skills(self) -> list[str]:
        """Skills with at least one published version, sorted by name."""
        return sorted(s for s in self._skill_names() if self._versions(s))

    def versions(self, skill: str) -> list[int]:
        """Published version numbers of `skill`, ascending ([] for a skill never published)."""
        return self._versions(skill)

    def aliases(self, skill: str) -> dict[str, int]:
        """The alias -> version mapping of `skill` ({} when none)."""
        return self._aliases(skill)

    def alias_history(self, skill: str) -> list[dict[str, Any]]:
        """Every alias move of `skill`, oldest first."""
        return self._history(skill)

    def version_of(self, skill: str, version: int | None = None, alias: str = PRODUCTION) -> int:
        """The version number `version` names (checked to exist), else the one `alias` points at."""
        versions = self._require_skill(skill)
        if version is None:
            aliases = self._aliases(skill)
            if alias not in aliases:
                known = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
                raise RegistryError(
                    f"skill {skill!r} has no alias {alias!r} (aliases: {known}; versions: {versions})"
                )
            version = aliases[alias]
            if version not in versions:
                raise RegistryError(f"alias {alias!r} of skill {skill!r} points at missing version {version}")
            return version
        version = _check_version(version)
        if version not in versions:
            raise RegistryError(f"skill {skill!r} has no version {version} (versions: {versions})")
        return version

    def path(self, skill: str, version: int | None = None, alias: str = PRODUCTION) -> Any:
        """Where a version lives (a local folder; a URL for remote storage): `version` if given,
        else the version `alias` points at. Consumers wanting a verified local folder use resolve()."""
        return self._version_location(skill, self.version_of(skill, version, alias))

    def _load_json(self, skill: str, version: int, name: str) -> Any:
        rel = f"{skill}/{VERSIONS_DIR}/{version}/{name}"
        text = self._read_text(rel)
        if text is None:
            raise RegistryError(f"{self._where(rel)}: missing")
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise RegistryError(f"{self._where(rel)}: cannot read ({e})") from None

    def show(self, skill: str, version: int | None = None, alias: str = PRODUCTION) -> dict[str, Any]:
        """What a version is: number, aliases pointing at it, metrics, lineage, routing, skill spec."""
        n = self.version_of(skill, version, alias)
        return {
            "skill_name": skill,
            "version": n,
            "path": str(self._version_location(skill, n)),
            "aliases": sorted(a for a, v in self._aliases(skill).items() if v == n),
            "metrics": self._load_json(skill, n, "metrics.json"),
            "lineage": self._load_json(skill, n, "lineage.json"),
            "routing": self._load_json(skill, n, "routing.json"),
            "skill": self._load_json(skill, n, "skill.json"),
        }

    def _checksums(self, skill: str, version: int) -> dict[str, str]:
        rel = f"{skill}/{VERSIONS_DIR}/{version}/{CHECKSUMS_FILE}"
        return _check_checksums(self._where(rel), self._read_text(rel))

    def verify(self, skill: str, version: int) -> None:
        """Recompute sha256 of every file against checksums.json; raise RegistryError naming a bad file."""
        version = self.version_of(skill, version)
        expected = self._checksums(skill, version)
        base = f"{skill}/{VERSIONS_DIR}/{version}"
        present = self._version_names(skill, version) - {CHECKSUMS_FILE}
        for name in sorted(present - set(expected)):
            raise RegistryError(
                f"{self._where(f'{base}/{name}')}: file not listed in {CHECKSUMS_FILE} (version folder was modified)"
            )
        for name, digest in sorted(expected.items()):
            actual = self._file_digest(f"{base}/{name}")
            if actual is None:
                raise RegistryError(f"{self._where(f'{base}/{name}')}: listed in {CHECKSUMS_FILE} but missing")
            if actual != digest:
                raise RegistryError(
                    f"{self._where(f'{base}/{name}')}: sha256 mismatch (expected {digest}, got {actual}); "
                    "the file was changed"
                )

    def snapshot(self, skill: str) -> dict[str, str]:
        """{path relative to <registry>/<skill>: sha256} for every file except .lock ({} if absent)."""
        d = self._skill_dir(skill)
        if not d.is_dir():
            return {}
        out = {}
        for p in sorted(d.rglob("*")):
            rel = p.relative_to(d).as_posix()
            if rel == LOCK_FILE or not p.is_file():
                continue
            out[rel] = sha256_file(p)
        return out

    # ---------------------------------------------------------------- consumers

    def pull(self, skill: str, version: int | None = None, alias: str = PRODUCTION, *,
             to: str | Path) -> Path:
        """Copy a version into the new local folder `to`, checking every file's sha256 on the way.

        Files are fetched into a temporary sibling folder that is renamed to `to` only once
        every file matched ``checksums.json``; a corrupted or extra file raises RegistryError
        and leaves nothing at `to`.
        """
        n = self.version_of(skill, version, alias)
        to = Path(to).expanduser().resolve()
        if to.exists() and (not to.is_dir() or any(to.iterdir())):
            raise RegistryError(f"cannot pull {skill}@{n} into {to}: it exists and is not an empty folder")
        to.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{to.name}.pull-", dir=to.parent))
        try:
            self._pull_into(skill, n, tmp)
            if to.exists():
                to.rmdir()  # empty (checked above)
            os.rename(tmp, to)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return to

    def _pull_into(self, skill: str, version: int, dest: Path) -> None:
        base = f"{skill}/{VERSIONS_DIR}/{version}"
        checksums_text = self._read_text(f"{base}/{CHECKSUMS_FILE}")
        expected = _check_checksums(self._where(f"{base}/{CHECKSUMS_FILE}"), checksums_text)
        extra = self._version_names(skill, version) - set(expected) - {CHECKSUMS_FILE} - self._ignored_names()
        if extra:
            raise RegistryError(
                f"{self._where(base)}: files not listed in {CHECKSUMS_FILE}: {', '.join(sorted(extra))}; refusing it"
            )
        for name, digest in sorted(expected.items()):
            target = dest / name
            try:
                self._fetch(f"{base}/{name}", target)
            except FileNotFoundError:
                raise RegistryError(f"{self._where(f'{base}/{name}')}: listed in {CHECKSUMS_FILE} but missing") from None
            actual = sha256_file(target)
            if actual != digest:
                raise RegistryError(
                    f"{self._where(f'{base}/{name}')}: corrupted (sha256 {actual}, expected {digest}); "
                    f"refusing {skill}@{version}, nothing was kept"
                )
            os.chmod(target, _FILE_MODE)
        (dest / CHECKSUMS_FILE).write_text(checksums_text, encoding="utf-8")

    def _ignored_names(self) -> set[str]:
        return set()

    def cache_dir(self) -> Path:
        """Local copies of this registry's versions: <DISTILL_HOME>/registry-cache/<location key>/."""
        key = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.location)[-60:].strip("_")
        return work_dir() / CACHE_DIR / f"{key}-{sha256_bytes(self.location.encode())[:10]}"

    def resolve(self, skill: str, alias: str = PRODUCTION, version: int | None = None) -> Path:
        """A verified local folder holding the version `alias` (or `version`) names.

        On the local disk that is the version folder itself (verified in place); on remote
        storage the version is downloaded once into :meth:`cache_dir` and re-verified on
        every call, so a corrupted cached file is dropped and fetched again.
        """
        n = self.version_of(skill, version, alias)
        self.verify(skill, n)
        return self._version_dir(skill, n)

    # ---------------------------------------------------------------- writing

    def _publish_inputs(self, skill: str, adapter_dir: str | Path, metrics: dict, lineage: dict, routing: dict,
                        skill_spec: dict, model_card: Any, alias: str | None,
                        extra: dict[str, dict[str, Any]] | None = None) -> tuple[Path, dict[str, str]]:
        """Check every argument before anything is written; returns the adapter folder and metadata texts."""
        _check_name("skill", skill)
        if alias is not None:
            _check_name("alias", alias)
        adapter_dir = Path(adapter_dir)
        if not adapter_dir.is_dir():
            raise RegistryError(f"adapter folder {adapter_dir} does not exist")
        for name in ADAPTER_FILES:
            if not (adapter_dir / name).is_file():
                raise RegistryError(f"adapter folder {adapter_dir} has no {name} (missing file {adapter_dir / name})")
        texts = {
            "metrics.json": _json_text("metrics", metrics),
            "lineage.json": _json_text("lineage", lineage),
            "routing.json": _json_text("routing", routing),
            "skill.json": _json_text("skill_spec", skill_spec),
        }
        for name, obj in (extra or {}).items():
            if (not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*\.json", name)
                    or name in texts or name in (*ADAPTER_FILES, CHECKSUMS_FILE)):
                raise RegistryError(f"extra: bad file name {name!r} (a new <name>.json, lowercase, not one of "
                                    f"{', '.join([*texts, CHECKSUMS_FILE])})")
            texts[name] = _json_text(name, obj)
        if not (isinstance(model_card, str) or callable(model_card)):
            raise RegistryError(f"model_card must be a string or a callable(version) -> str, got {type(model_card).__name__}")
        return adapter_dir, texts

    @staticmethod
    def _render_card(model_card: str | Callable[[int], str], version: int) -> str:
        card = model_card(version) if callable(model_card) else model_card
        if not isinstance(card, str):
            raise RegistryError(f"model_card callable returned {type(card).__name__}, expected str")
        return card

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
        """Write a new immutable version of `skill` and (if `alias`) point the alias at it.

        `model_card` may be a string, or a callable given the assigned version number
        (so a card can name its own version without racing other publishers). `extra`: more JSON
        files of the version by name (novelty.json), checksummed like the rest; a name that is not
        `<name>.json` or clashes with a file above raises RegistryError.
        Returns the new version number.
        """
        adapter_dir, texts = self._publish_inputs(skill, adapter_dir, metrics, lineage, routing, skill_spec,
                                                  model_card, alias, extra)
        run_id = lineage.get("run_id")
        with self._lock(skill):
            existing = self.published_run(skill, run_id)
            if existing is not None:
                log.info("%s run %s is already published as version %d: not publishing it again",
                         skill, run_id, existing)
                return existing
            sdir = self._skill_dir(skill)
            self._remove_stale_temps(sdir)
            version = self._next_version(skill)
            tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=sdir))
            created_versions_dir = False
            target = self._version_dir(skill, version)
            try:
                os.chmod(tmp, _DIR_MODE)
                for name in ADAPTER_FILES:
                    shutil.copyfile(adapter_dir / name, tmp / name)
                    with open(tmp / name, "rb+") as f:
                        os.fsync(f.fileno())
                for name, text in texts.items():
                    atomic_write_text(tmp / name, text)
                atomic_write_text(tmp / CARD_FILE, self._render_card(model_card, version))
                checksums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.name != CHECKSUMS_FILE}
                write_json(tmp / CHECKSUMS_FILE, checksums)
                for p in tmp.iterdir():
                    os.chmod(p, _FILE_MODE)
                _fsync_dir(tmp)

                vdir = self._versions_dir(skill)
                if not vdir.exists():
                    vdir.mkdir()
                    created_versions_dir = True
                if os.path.lexists(target):
                    raise RegistryError(
                        f"version {version} of skill {skill!r} already exists at {target}; versions are immutable"
                    )
                os.rename(tmp, target)  # the single step that makes the version visible
                _fsync_dir(vdir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                if created_versions_dir:
                    try:
                        self._versions_dir(skill).rmdir()
                    except OSError:
                        pass
                raise

            if alias is not None:
                try:
                    self.verify(skill, version)  # an alias only ever points at a version that verifies
                    self._move_alias(skill, alias, version, "publish", reason)
                except BaseException:
                    # The alias could not be moved: withdraw the version so the failed
                    # publish leaves nothing visible (no alias ever pointed at it).
                    self._withdraw(skill, version)
                    raise
            return version

    def published_run(self, skill: str, run_id: Any) -> int | None:
        """The version whose lineage.json names `run_id` (the newest such), else None.

        A run publishes at most once: a publish retried after its commit point, or a run resumed
        after a kill between publish and the pool append, gets this version back instead of a copy.
        A version whose lineage cannot be read is skipped (it is not this run's to claim)."""
        if not isinstance(run_id, str) or not run_id:
            return None
        for version in reversed(self._versions(skill)):
            text = self._read_text(f"{skill}/{VERSIONS_DIR}/{version}/lineage.json")
            try:
                lineage = json.loads(text) if text is not None else None
            except json.JSONDecodeError:
                continue
            if isinstance(lineage, dict) and lineage.get("run_id") == run_id:
                return version
        return None

    def version_location(self, skill: str, version: int) -> Any:
        """Where `version` of `skill` lives (folder or URL), computed without touching storage."""
        return self._version_location(_check_name("skill", skill), _check_version(version))

    def promote(self, skill: str, version: int, reason: str = "") -> int:
        """Point production at `version` (which must exist and pass verify)."""
        version = _check_version(version)
        _check_name("skill", skill)
        with self._lock(skill):
            self.version_of(skill, version)
            self.verify(skill, version)
            if self._aliases(skill).get(PRODUCTION) == version:
                return version  # already there: no move, no history line
            self._move_alias(skill, PRODUCTION, version, "promote", reason)
        return version

    def rollback(self, skill: str, reason: str = "") -> int:
        """Point production back where it was before its last move; returns that version."""
        _check_name("skill", skill)
        with self._lock(skill):
            self._require_skill(skill)
            moves = [h for h in self._history(skill) if h.get("alias") == PRODUCTION]
            if not moves:
                raise RegistryError(f"skill {skill!r}: production has never moved, nothing to roll back to")
            last = moves[-1]
            current = self._aliases(skill).get(PRODUCTION)
            if last.get("to") != current:
                raise RegistryError(
                    f"skill {skill!r}: production is {current} but the last recorded move went to {last.get('to')}; "
                    f"{ALIASES_FILE} and {HISTORY_FILE} disagree, fix by hand"
                )
            target = last.get("from")
            if target is None:
                raise RegistryError(
                    f"skill {skill!r}: production had no version before its last move (to {current}), "
                    "nothing to roll back to"
                )
            self.version_of(skill, target)
            self.verify(skill, target)
            self._move_alias(skill, PRODUCTION, target, "rollback", reason)
        return target

    # ---------------------------------------------------------------- helpers (call with the lock held)

    def _next_version(self, skill: str) -> int:
        versions = self._versions(skill)
        return (versions[-1] + 1) if versions else 1

    def _move_alias(self, skill: str, alias: str, version: int, action: str, reason: str) -> None:
        """Point `alias` at `version` and append the move to the history (each file replaced atomically;
        aliases.json is the commit point and is restored if the history cannot be written)."""
        assert action in ACTIONS
        arel, hrel = f"{skill}/{ALIASES_FILE}", f"{skill}/{HISTORY_FILE}"
        old_aliases_text = self._read_text(arel)
        aliases = {} if old_aliases_text is None else _parse_aliases(self._where(arel), old_aliases_text)
        old_history_text = self._read_text(hrel) or ""
        if old_history_text and not old_history_text.endswith("\n"):
            old_history_text += "\n"
        entry = {
            "time": now_iso(),
            "alias": alias,
            "from": aliases.get(alias),
            "to": version,
            "action": action,
            "reason": reason,
        }
        aliases[alias] = version
        self._write_text(arel, json.dumps(aliases, indent=2, ensure_ascii=False) + "\n")
        try:
            self._write_text(hrel, old_history_text + json.dumps(entry, ensure_ascii=False) + "\n")
        except BaseException:
            if old_aliases_text is None:
                self._delete(arel)
            else:
                self._write_text(arel, old_aliases_text)
            raise

    def _withdraw(self, skill: str, version: int) -> None:
        """Hide a just-published version again (one rename) and delete it."""
        sdir = self._skill_dir(skill)
        trash = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=sdir))
        try:
            os.rename(self._version_dir(skill, version), trash / "v")
        finally:
            shutil.rmtree(trash, ignore_errors=True)

    def _remove_stale_temps(self, sdir: Path) -> None:
        """Temp folders left by a publisher that died (every publisher holds the lock we hold now)."""
        for p in sdir.glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)
