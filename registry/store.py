"""The adapter registry: immutable, numbered versions of each skill's LoRA adapter.

Layout (the consumer contract)::

    <registry>/<skill>/versions/<N>/adapter_model.safetensors
                                    adapter_config.json
                                    README.md        Hugging Face model card
                                    metrics.json     gate results
                                    lineage.json     seeds hash, dataset hash, teacher, run id
                                    routing.json     escalation threshold, expected quality, latency
                                    skill.json       prompt template, labels, task type
                                    checksums.json   sha256 of every other file in the folder
    <registry>/<skill>/aliases.json                 {"production": N, "candidate": M}
    <registry>/<skill>/alias_history.jsonl          one line per alias move

Guarantees:

* A version folder is built in a hidden temporary folder inside ``<registry>/<skill>/``
  and made visible with a single ``os.rename``; an existing version is never
  overwritten, and a failed publish leaves nothing visible behind.
* ``aliases.json`` and ``alias_history.jsonl`` are replaced atomically.
* Every writer of a skill holds an exclusive ``fcntl.flock`` on
  ``<registry>/<skill>/.lock``, so concurrent publishers (threads or processes)
  never get the same version number or lose an alias move.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from core.records import DataError, atomic_write_text, now_iso, read_jsonl, write_json
from core.workdir import registry_root

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

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FILE_MODE = 0o644
_DIR_MODE = 0o755


class RegistryError(Exception):
    """A registry operation cannot be done; the message says which skill/version/file and why."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistryError(
            f"invalid {kind} name {name!r}: use letters, digits, '_', '-', '.', not starting with '.' or '-'"
        )
    return name


def _check_version(version: Any) -> int:
    if isinstance(version, str) and version.isdigit():
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise RegistryError(f"invalid version {version!r}: versions are integers 1, 2, 3, ...")
    return version


def _json_text(label: str, obj: Any) -> str:
    if not isinstance(obj, dict):
        raise RegistryError(f"{label} must be a dict, got {type(obj).__name__}")
    try:
        return json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise RegistryError(f"{label} is not JSON-serialisable ({e})") from None


class Registry:
    """A registry of LoRA adapters on the local filesystem (default: ``registry_root()``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root if root is not None else registry_root()).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r})"

    # ------------------------------------------------------------------ paths

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

    # ---------------------------------------------------------------- reading

    def _versions(self, skill: str) -> list[int]:
        d = self._versions_dir(skill)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit() and p.name[0] != "0")

    def _aliases(self, skill: str) -> dict[str, int]:
        f = self._skill_dir(skill) / ALIASES_FILE
        if not f.exists():
            return {}
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"{f}: cannot read aliases ({e})") from None
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in data.items()
        ):
            raise RegistryError(f"{f}: expected a flat mapping alias -> version number, got {data!r}")
        return data

    def _history(self, skill: str) -> list[dict[str, Any]]:
        f = self._skill_dir(skill) / HISTORY_FILE
        if not f.exists():
            return []
        try:
            return [obj for _, obj in read_jsonl(f)]
        except DataError as e:
            raise RegistryError(str(e)) from None

    def _require_skill(self, skill: str) -> list[int]:
        versions = self._versions(skill)
        if not versions:
            known = self.skills()
            hint = f"known skills: {', '.join(known)}" if known else "the registry is empty"
            raise RegistryError(f"unknown skill {skill!r} in registry {self.root} ({hint})")
        return versions

    def skills(self) -> list[str]:
        """Skills with at least one published version, sorted by name."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and _NAME_RE.match(p.name) and self._versions(p.name)
        )

    def versions(self, skill: str) -> list[int]:
        """Published version numbers of `skill`, ascending ([] for a skill never published)."""
        return self._versions(skill)

    def aliases(self, skill: str) -> dict[str, int]:
        """The alias -> version mapping of `skill` ({} when none)."""
        return self._aliases(skill)

    def alias_history(self, skill: str) -> list[dict[str, Any]]:
        """Every alias move of `skill`, oldest first."""
        return self._history(skill)

    def path(self, skill: str, version: int | None = None, alias: str = PRODUCTION) -> Path:
        """Folder of a version: `version` if given, else the version `alias` points at."""
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
        else:
            version = _check_version(version)
            if version not in versions:
                raise RegistryError(f"skill {skill!r} has no version {version} (versions: {versions})")
        return self._version_dir(skill, version)

    def show(self, skill: str, version: int | None = None, alias: str = PRODUCTION) -> dict[str, Any]:
        """What a version is: number, aliases pointing at it, metrics, lineage, routing, skill spec."""
        d = self.path(skill, version, alias)
        n = int(d.name)

        def load(name: str) -> Any:
            try:
                return json.loads((d / name).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise RegistryError(f"{d / name}: cannot read ({e})") from None

        return {
            "skill_name": skill,
            "version": n,
            "path": str(d),
            "aliases": sorted(a for a, v in self._aliases(skill).items() if v == n),
            "metrics": load("metrics.json"),
            "lineage": load("lineage.json"),
            "routing": load("routing.json"),
            "skill": load("skill.json"),
        }

    def verify(self, skill: str, version: int) -> None:
        """Recompute sha256 of every file against checksums.json; raise RegistryError naming a bad file."""
        d = self.path(skill, version)
        cfile = d / CHECKSUMS_FILE
        try:
            expected = json.loads(cfile.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise RegistryError(f"{cfile}: cannot read checksums ({e})") from None
        if not isinstance(expected, dict):
            raise RegistryError(f"{cfile}: expected a mapping file name -> sha256")
        present = {p.name for p in d.iterdir()} - {CHECKSUMS_FILE}
        for name in sorted(present - set(expected)):
            raise RegistryError(f"{d / name}: file not listed in {CHECKSUMS_FILE} (version folder was modified)")
        for name, digest in sorted(expected.items()):
            f = d / name
            if not f.is_file():
                raise RegistryError(f"{f}: listed in {CHECKSUMS_FILE} but missing")
            actual = sha256_file(f)
            if actual != digest:
                raise RegistryError(f"{f}: sha256 mismatch (expected {digest}, got {actual}); the file was changed")

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

    # ---------------------------------------------------------------- writing

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
        """Write a new immutable version of `skill` and (if `alias`) point the alias at it.

        `model_card` may be a string, or a callable given the assigned version number
        (so a card can name its own version without racing other publishers).
        Returns the new version number.
        """
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
        if not (isinstance(model_card, str) or callable(model_card)):
            raise RegistryError(f"model_card must be a string or a callable(version) -> str, got {type(model_card).__name__}")

        with self._lock(skill):
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
                card = model_card(version) if callable(model_card) else model_card
                if not isinstance(card, str):
                    raise RegistryError(f"model_card callable returned {type(card).__name__}, expected str")
                atomic_write_text(tmp / CARD_FILE, card)
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
                    self._move_alias(skill, alias, version, "publish", reason)
                except BaseException:
                    # The alias could not be moved: withdraw the version so the failed
                    # publish leaves nothing visible (no alias ever pointed at it).
                    self._withdraw(sdir, target)
                    raise
            return version

    def promote(self, skill: str, version: int, reason: str = "") -> int:
        """Point production at `version` (which must exist and pass verify)."""
        version = _check_version(version)
        with self._lock(skill):
            self._require_skill(skill)
            self.path(skill, version)
            self.verify(skill, version)
            if self._aliases(skill).get(PRODUCTION) == version:
                return version  # already there: no move, no history line
            self._move_alias(skill, PRODUCTION, version, "promote", reason)
        return version

    def rollback(self, skill: str, reason: str = "") -> int:
        """Point production back where it was before its last move; returns that version."""
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
            self.path(skill, target)
            self.verify(skill, target)
            self._move_alias(skill, PRODUCTION, target, "rollback", reason)
        return target

    # ---------------------------------------------------------------- helpers (call with the lock held)

    def _next_version(self, skill: str) -> int:
        versions = self._versions(skill)
        return (versions[-1] + 1) if versions else 1

    def _move_alias(self, skill: str, alias: str, version: int, action: str, reason: str) -> None:
        """Point `alias` at `version` and append the move to the history (both atomic replaces)."""
        assert action in ACTIONS
        sdir = self._skill_dir(skill)
        afile, hfile = sdir / ALIASES_FILE, sdir / HISTORY_FILE
        aliases = self._aliases(skill)
        old_aliases_text = afile.read_text(encoding="utf-8") if afile.exists() else None
        old_history_text = hfile.read_text(encoding="utf-8") if hfile.exists() else ""
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
        write_json(afile, aliases)
        try:
            os.chmod(afile, _FILE_MODE)
            atomic_write_text(hfile, old_history_text + json.dumps(entry, ensure_ascii=False) + "\n")
            os.chmod(hfile, _FILE_MODE)
        except BaseException:
            if old_aliases_text is None:
                afile.unlink(missing_ok=True)
            else:
                atomic_write_text(afile, old_aliases_text)
            raise

    def _withdraw(self, sdir: Path, target: Path) -> None:
        """Hide a just-published version again (one rename) and delete it."""
        trash = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=sdir))
        try:
            os.rename(target, trash / "v")
        finally:
            shutil.rmtree(trash, ignore_errors=True)

    def _remove_stale_temps(self, sdir: Path) -> None:
        """Temp folders left by a publisher that died (every publisher holds the lock we hold now)."""
        for p in sdir.glob(TMP_PREFIX + "*"):
            shutil.rmtree(p, ignore_errors=True)
