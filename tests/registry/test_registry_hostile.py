"""Issue 16, publishing and the registry, on every store (local folder, moto S3 server, memory://):
one version per run, only transient errors retried, listings that skip what is not theirs."""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path

import pytest

from registry import Registry, RegistryError, RegistryUnavailable, parse_ref
from registry.remote import ObjectRegistry
from registry.store import is_transient

SKILL = "intent"


def make_adapter(tmp_path: Path, name: str = "adapter") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(b"weights")
    (d / "adapter_config.json").write_text(json.dumps({"r": 16, "peft_type": "LORA"}))
    return d


def args(run_id: str | None, **kw) -> dict:
    out = dict(metrics={"accuracy": 0.9}, lineage={"run_id": run_id} if run_id else {}, routing={},
               skill_spec={"task_type": "classification"}, model_card=lambda v: f"# v{v}\n")
    out.update(kw)
    return out


@pytest.fixture(params=["local", "s3", "memory"])
def reg(request, tmp_path, monkeypatch) -> Registry:
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    if request.param == "local":
        return Registry(tmp_path / "registry")
    if request.param == "s3":
        return Registry(request.getfixturevalue("s3_url"))
    return Registry(f"memory://reg-{uuid.uuid4().hex[:8]}/adapters")


def _put(reg: Registry, rel: str, data: bytes = b"") -> None:
    """An object (or a local file / empty folder for names ending in '/') that some other tool wrote."""
    if isinstance(reg, ObjectRegistry):
        reg.fs.pipe_file(f"{reg.base}/{rel.rstrip('/')}" + ("/x" if rel.endswith("/") else ""), data)
    else:
        p = reg.root / rel
        if rel.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)


# --- 1. one version per run ----------------------------------------------------------------------


def test_republishing_a_run_id_returns_its_version(reg, tmp_path):
    adapter = make_adapter(tmp_path)
    assert reg.publish(SKILL, adapter, **args("20250101-030000")) == 1
    before = reg.snapshot(SKILL)
    # The run resumed after a kill between publish and the pool append publishes again.
    assert reg.publish(SKILL, adapter, **args("20250101-030000", reason="resumed")) == 1
    assert reg.snapshot(SKILL) == before and reg.versions(SKILL) == [1]
    assert reg.published_run(SKILL, "20250101-030000") == 1 and reg.published_run(SKILL, "other") is None
    # Another run, and publishes without a run id, still get new versions.
    assert reg.publish(SKILL, adapter, **args("20250102-030000")) == 2
    assert reg.publish(SKILL, adapter, **args(None)) == 3
    assert reg.publish(SKILL, adapter, **args(None)) == 4
    assert [h["to"] for h in reg.alias_history(SKILL)] == [1, 2, 3, 4]


@pytest.mark.parametrize("store", ["s3", "memory"])
def test_errors_after_the_commit_point_are_logged_not_raised(store, request, tmp_path, monkeypatch, caplog):
    """Staging clean-up and lock release fail with a connection error after the version is committed:
    the publish reports its version; the `publish` task's retry then finds it and adds nothing."""
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    url = request.getfixturevalue("s3_url") if store == "s3" else f"memory://reg-{uuid.uuid4().hex[:8]}/a"
    reg = Registry(url)
    adapter = make_adapter(tmp_path)
    real_rm = reg.fs.rm

    def rm(path, *a, **kw):
        if ".staging" in str(path):
            raise ConnectionError("connection reset by peer")
        return real_rm(path, *a, **kw)

    monkeypatch.setattr(reg.fs, "rm", rm)
    monkeypatch.setattr(ObjectRegistry, "_release", lambda self, rel, owner: (_ for _ in ()).throw(
        ConnectionError("connection reset by peer")))
    with caplog.at_level(logging.WARNING, logger="distill.registry.remote"):
        assert reg.publish(SKILL, adapter, **args("run-1")) == 1
    assert "could not remove the staging upload" in caplog.text and "could not release the lock" in caplog.text
    monkeypatch.undo()
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    from registry import remote

    monkeypatch.setattr(remote, "LOCK_LEASE_S", 2.0)  # the unreleased lease of the first attempt is broken
    assert Registry(url).publish(SKILL, adapter, **args("run-1")) == 1  # the retry
    assert Registry(url).versions(SKILL) == [1] and Registry(url).aliases(SKILL) == {"production": 1}


# --- 2. only transient errors are retried ----------------------------------------------------------


def _state(exc: BaseException):
    from prefect.states import Failed

    return Failed(data=exc)


def test_registry_failure_retries_only_transient_errors(tmp_path):
    from flows.limits import network_failure, registry_failure

    reg = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match="routing is not JSON-serialisable") as bad:
        reg.publish(SKILL, make_adapter(tmp_path), **args("r", routing={"threshold": math.nan}))
    assert not isinstance(bad.value, RegistryUnavailable) and reg.versions(SKILL) == []
    refused = [bad.value, RegistryError("skill 'x' has no version 3"), PermissionError("AccessDenied"),
               FileNotFoundError("no such key"), ValueError("bad config"), KeyError("k")]
    for e in refused:
        assert registry_failure(None, None, _state(e)) is False, e
        assert is_transient(e) is False, e
    retried = [RegistryUnavailable("lock held"), ConnectionError("reset"), TimeoutError("slow"),
               OSError(5, "Input/output error (HTTP 503)"), type("EndpointConnectionError", (Exception,), {})("x")]
    for e in retried:
        assert registry_failure(None, None, _state(e)) is True, e
    # The teacher's classifier: a bad config is not retried either.
    assert network_failure(None, None, _state(ValueError("bad teacher config"))) is False
    assert network_failure(None, None, _state(ConnectionError("reset"))) is True


def test_storage_errors_are_wrapped_by_kind(s3_url, monkeypatch):
    reg = Registry(s3_url)

    def boom(path, *a, **kw):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(reg.fs, "cat_file", boom)
    with pytest.raises(RegistryUnavailable, match="cannot read"):
        reg.aliases(SKILL)

    def denied(path, *a, **kw):
        raise PermissionError("AccessDenied")

    monkeypatch.setattr(reg.fs, "cat_file", denied)
    with pytest.raises(RegistryError, match="cannot read") as e:
        reg.aliases(SKILL)
    assert not isinstance(e.value, RegistryUnavailable)


# --- 4. listings ignore what is not theirs --------------------------------------------------------


def test_stray_objects_and_odd_folder_names_are_skipped(reg, tmp_path):
    assert reg.publish(SKILL, make_adapter(tmp_path), **args("r1")) == 1
    for rel in ("adapters_$folder$", "intent_$folder$", "intent/versions_$folder$", "intent/versions/²/",
                "intent/versions/٣/", "intent/versions/03/", "intent/versions/2_$folder$", "intent/versions/ 4/",
                "weird name/versions/1/", ".hidden/versions/1/", "README.md", "intent/.staging/stray"):
        _put(reg, rel)
    assert reg.skills() == [SKILL]
    assert reg.versions(SKILL) == [1]
    assert reg.publish(SKILL, make_adapter(tmp_path, "a2"), **args("r2")) == 2
    assert reg.versions(SKILL) == [1, 2] and reg.aliases(SKILL) == {"production": 2}
    reg.verify(SKILL, 2)


def test_cli_registry_list_survives_stray_objects(reg, tmp_path, capsys):
    from flows.cli import main

    reg.publish(SKILL, make_adapter(tmp_path), **args("r1"))
    _put(reg, "adapters_$folder$")
    _put(reg, "intent/versions/²/")
    assert main(["registry", "list", "--root", reg.location]) == 0
    assert "intent" in capsys.readouterr().out
    assert main(["registry", "promote", SKILL, "²", "--root", reg.location]) == 2
    assert "invalid VERSION" in capsys.readouterr().err


@pytest.mark.parametrize("ref", ["intent@²", "intent@٣", "intent@03", "intent@0", "intent@-1", "intent@ 1",
                                 "intent@1.0", "intent@"])
def test_parse_ref_refuses_non_ascii_version_numbers(ref):
    with pytest.raises(RegistryError, match="invalid version"):
        parse_ref(ref)


def test_parse_ref_reads_plain_refs_and_version_arguments_follow_the_same_rule(tmp_path):
    assert parse_ref("intent@12") == ("intent", 12) and parse_ref("intent") == ("intent", None)
    reg = Registry(tmp_path / "registry")
    reg.publish(SKILL, make_adapter(tmp_path), **args("r1"))
    assert reg.version_of(SKILL, "1") == 1
    with pytest.raises(RegistryError, match="invalid version"):
        reg.version_of(SKILL, "²")
