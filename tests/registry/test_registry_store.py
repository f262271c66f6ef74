from __future__ import annotations

import itertools
import json
import multiprocessing as mp
from pathlib import Path

import pytest

from registry import Registry, RegistryError
from registry import store as store_mod

SKILL = "intent"
VERSION_FILES = {
    "adapter_model.safetensors",
    "adapter_config.json",
    "README.md",
    "metrics.json",
    "lineage.json",
    "routing.json",
    "skill.json",
    "checksums.json",
}


def make_adapter(tmp_path: Path, name: str = "adapter", payload: bytes = b"weights-v1") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(payload)
    (d / "adapter_config.json").write_text(json.dumps({"r": 16, "peft_type": "LORA"}))
    (d / "tokenizer.json").write_text("{}")  # extra files in the adapter folder are not copied
    return d


_RUN_IDS = itertools.count(1)


def publish(reg: Registry, adapter: Path, skill: str = SKILL, **kw):
    args = dict(
        metrics={"accuracy": 0.9, "gates": {"regression": {"passed": True}}},
        # A fresh run id per publish: a run id that already has a version gets that version back.
        lineage={"seeds_hash": "s", "dataset_hash": "d", "teacher": "t", "run_id": f"r{next(_RUN_IDS)}"},
        routing={"escalation_threshold": 0.6, "expected_quality": 0.9, "latency_ms": 12},
        skill_spec={"prompt_template": "Classify: {input}", "labels": ["a", "b"], "task_type": "classification"},
        model_card="---\nbase_model: base\nlibrary_name: peft\n---\n# card\n",
    )
    args.update(kw)
    return reg.publish(skill, adapter, **args)


def temp_leftovers(reg: Registry, skill: str = SKILL) -> list[str]:
    d = reg.root / skill
    if not d.exists():
        return []
    return [p.name for p in d.rglob("*") if p.name.startswith(".tmp") or p.name.endswith(".tmp")]


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return make_adapter(tmp_path)


# ---------------------------------------------------------------- publish


def test_publish_twice_numbers_versions_and_moves_production(reg, adapter):
    assert reg.skills() == []
    assert publish(reg, adapter, reason="first") == 1
    assert reg.aliases(SKILL) == {"production": 1}
    assert publish(reg, adapter, reason="second") == 2

    assert reg.versions(SKILL) == [1, 2]
    assert reg.skills() == [SKILL]
    assert reg.aliases(SKILL) == {"production": 2}
    assert json.loads((reg.root / SKILL / "aliases.json").read_text()) == {"production": 2}
    hist = reg.alias_history(SKILL)
    assert [(h["alias"], h["from"], h["to"], h["action"], h["reason"]) for h in hist] == [
        ("production", None, 1, "publish", "first"),
        ("production", 1, 2, "publish", "second"),
    ]
    assert all(set(h) == {"time", "alias", "from", "to", "action", "reason"} for h in hist)
    assert reg.path(SKILL) == reg.root / SKILL / "versions" / "2"
    assert reg.path(SKILL, 1) == reg.root / SKILL / "versions" / "1"


def test_version_folder_has_exactly_the_contract_files(reg, adapter):
    v = publish(reg, adapter)
    d = reg.path(SKILL, v)
    assert {p.name for p in d.iterdir()} == VERSION_FILES
    assert (d / "adapter_model.safetensors").read_bytes() == b"weights-v1"
    assert json.loads((d / "adapter_config.json").read_text())["peft_type"] == "LORA"
    assert json.loads((d / "routing.json").read_text())["escalation_threshold"] == 0.6
    assert json.loads((d / "skill.json").read_text())["task_type"] == "classification"
    assert (d / "README.md").read_text().startswith("---\n")
    checksums = json.loads((d / "checksums.json").read_text())
    assert set(checksums) == VERSION_FILES - {"checksums.json"}
    reg.verify(SKILL, v)
    assert sorted(p.name for p in (reg.root / SKILL).iterdir()) == [
        ".lock",
        "alias_history.jsonl",
        "aliases.json",
        "versions",
    ]


def test_publish_to_candidate_or_no_alias(reg, adapter):
    publish(reg, adapter)
    assert publish(reg, adapter, alias="candidate") == 2
    assert reg.aliases(SKILL) == {"production": 1, "candidate": 2}
    assert publish(reg, adapter, alias=None) == 3
    assert reg.aliases(SKILL) == {"production": 1, "candidate": 2}
    assert len(reg.alias_history(SKILL)) == 2
    assert reg.path(SKILL, alias="candidate").name == "2"
    assert reg.show(SKILL, 2)["aliases"] == ["candidate"]


def test_model_card_callable_gets_assigned_version(reg, adapter):
    publish(reg, adapter)
    v = publish(reg, adapter, model_card=lambda n: f"# version {n}\n")
    assert v == 2
    assert (reg.path(SKILL, 2) / "README.md").read_text() == "# version 2\n"


def test_skills_lists_only_published(reg, adapter, tmp_path):
    publish(reg, adapter, skill="b-skill")
    publish(reg, adapter, skill="a_skill")
    with pytest.raises(RegistryError):
        publish(reg, tmp_path / "nope", skill="c")
    assert reg.skills() == ["a_skill", "b-skill"]


def test_default_root_comes_from_environment(monkeypatch, tmp_path, adapter):
    monkeypatch.setenv("DISTILL_REGISTRY", str(tmp_path / "envreg"))
    reg = Registry()
    assert reg.root == (tmp_path / "envreg").resolve()
    publish(reg, adapter)
    assert (tmp_path / "envreg" / SKILL / "versions" / "1" / "checksums.json").is_file()


# ---------------------------------------------------------------- failures change nothing


def test_version_clash_raises_and_leaves_state_unchanged(reg, adapter, monkeypatch):
    publish(reg, adapter)
    publish(reg, adapter)
    before = reg.snapshot(SKILL)
    monkeypatch.setattr(Registry, "_next_version", lambda self, skill: 1)  # simulate a clash
    with pytest.raises(RegistryError, match="already exists"):
        publish(reg, make_adapter(reg.root.parent, "other", b"different weights"))
    assert reg.snapshot(SKILL) == before
    assert (reg.path(SKILL, 1) / "adapter_model.safetensors").read_bytes() == b"weights-v1"
    assert temp_leftovers(reg) == []


def test_rename_onto_existing_empty_folder_is_refused(reg, adapter, monkeypatch):
    publish(reg, adapter)
    (reg.root / SKILL / "versions" / "2").mkdir()  # an empty dir: os.rename alone would replace it
    monkeypatch.setattr(Registry, "_next_version", lambda self, skill: 2)
    before = reg.snapshot(SKILL)
    with pytest.raises(RegistryError, match="already exists"):
        publish(reg, adapter)
    assert reg.snapshot(SKILL) == before
    assert list((reg.root / SKILL / "versions" / "2").iterdir()) == []
    assert reg.aliases(SKILL) == {"production": 1}


@pytest.mark.parametrize("missing", ["adapter_model.safetensors", "adapter_config.json"])
def test_missing_adapter_file_fails_cleanly(reg, adapter, missing):
    publish(reg, adapter)
    before = reg.snapshot(SKILL)
    (adapter / missing).unlink()
    with pytest.raises(RegistryError, match=missing):
        publish(reg, adapter)
    assert reg.snapshot(SKILL) == before
    assert temp_leftovers(reg) == []
    assert reg.versions(SKILL) == [1]


def test_first_publish_failing_leaves_nothing(reg, adapter):
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(RegistryError, match="adapter_config.json"):
        publish(reg, adapter)
    assert reg.snapshot(SKILL) == {}
    assert reg.skills() == []


def test_failure_midway_through_writing_leaves_nothing(reg, adapter):
    publish(reg, adapter)
    before = reg.snapshot(SKILL)

    def card(version):
        raise RuntimeError("card rendering blew up")

    with pytest.raises(RuntimeError, match="blew up"):
        publish(reg, adapter, model_card=card)
    assert reg.snapshot(SKILL) == before
    assert temp_leftovers(reg) == []
    assert reg.versions(SKILL) == [1]


def test_failed_alias_move_withdraws_the_version(reg, adapter, monkeypatch):
    publish(reg, adapter)
    before = reg.snapshot(SKILL)
    real_write = store_mod.atomic_write_text

    def failing_write(path, text):
        if Path(path).name == "alias_history.jsonl":
            raise OSError("disk full")
        return real_write(path, text)

    monkeypatch.setattr(store_mod, "atomic_write_text", failing_write)
    with pytest.raises(OSError, match="disk full"):
        publish(reg, adapter)
    assert reg.snapshot(SKILL) == before
    assert reg.versions(SKILL) == [1]
    assert reg.aliases(SKILL) == {"production": 1}
    assert temp_leftovers(reg) == []


def test_unserialisable_metadata_fails_before_writing(reg, adapter):
    with pytest.raises(RegistryError, match="metrics"):
        publish(reg, adapter, metrics={"bad": object()})
    with pytest.raises(RegistryError, match="routing"):
        publish(reg, adapter, routing={"x": float("nan")})
    assert reg.snapshot(SKILL) == {}


def test_stale_temp_folder_from_crashed_publisher_is_cleaned(reg, adapter):
    publish(reg, adapter)
    stale = reg.root / SKILL / ".tmp-publish-dead"
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"x")
    assert publish(reg, adapter) == 2
    assert not stale.exists()


@pytest.mark.parametrize("bad", ["../escape", "", ".hidden", "a/b"])
def test_bad_skill_names_are_rejected(reg, adapter, bad):
    with pytest.raises(RegistryError, match="invalid skill name"):
        publish(reg, adapter, skill=bad)
    assert not (reg.root.parent / "escape").exists()


# ---------------------------------------------------------------- concurrency


def test_two_processes_publishing_concurrently_get_distinct_versions(reg, adapter, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import registry_worker

    ctx = mp.get_context("spawn")
    start = ctx.Event()
    queue = ctx.Queue()
    procs = [
        ctx.Process(
            target=registry_worker.publish_many,
            args=(str(reg.root), SKILL, str(adapter), w, 5, start, queue),
        )
        for w in range(2)
    ]
    for p in procs:
        p.start()
    start.set()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    got = results[0] + results[1]
    assert sorted(got) == list(range(1, 11))
    assert results[0] == sorted(results[0]) and results[1] == sorted(results[1])
    assert reg.versions(SKILL) == list(range(1, 11))
    aliases = json.loads((reg.root / SKILL / "aliases.json").read_text())
    assert aliases == {"production": 10}
    hist = reg.alias_history(SKILL)
    assert len(hist) == 10
    assert [h["to"] for h in hist] == list(range(1, 11))
    assert [h["from"] for h in hist] == [None] + list(range(1, 10))
    for v in range(1, 11):
        reg.verify(SKILL, v)
        assert (reg.path(SKILL, v) / "README.md").read_text().endswith(f"# v{v}\n")
    assert temp_leftovers(reg) == []


# ---------------------------------------------------------------- verify


def test_verify_detects_tampered_file(reg, adapter):
    v = publish(reg, adapter)
    reg.verify(SKILL, v)
    (reg.path(SKILL, v) / "adapter_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="adapter_model.safetensors"):
        reg.verify(SKILL, v)


def test_verify_detects_missing_and_extra_files(reg, adapter):
    v = publish(reg, adapter)
    d = reg.path(SKILL, v)
    (d / "notes.txt").write_text("sneaked in")
    with pytest.raises(RegistryError, match="notes.txt"):
        reg.verify(SKILL, v)
    (d / "notes.txt").unlink()
    (d / "routing.json").unlink()
    with pytest.raises(RegistryError, match="routing.json"):
        reg.verify(SKILL, v)


# ---------------------------------------------------------------- promote / rollback


def test_promote_and_rollback_move_production_and_record_history(reg, adapter):
    publish(reg, adapter)
    publish(reg, adapter)
    publish(reg, adapter, alias="candidate")
    assert reg.aliases(SKILL) == {"production": 2, "candidate": 3}

    reg.promote(SKILL, 3, reason="candidate passed canary")
    assert reg.aliases(SKILL) == {"production": 3, "candidate": 3}
    assert reg.rollback(SKILL, reason="latency regression") == 2
    assert reg.aliases(SKILL)["production"] == 2

    hist = reg.alias_history(SKILL)
    assert [(h["action"], h["alias"], h["from"], h["to"]) for h in hist[-2:]] == [
        ("promote", "production", 2, 3),
        ("rollback", "production", 3, 2),
    ]
    assert hist[-2]["reason"] == "candidate passed canary"
    assert hist[-1]["reason"] == "latency regression"

    reg.promote(SKILL, 1)
    assert reg.aliases(SKILL)["production"] == 1
    assert reg.rollback(SKILL) == 2


def test_promote_to_current_version_is_a_no_op(reg, adapter):
    publish(reg, adapter)
    n = len(reg.alias_history(SKILL))
    reg.promote(SKILL, 1)
    assert len(reg.alias_history(SKILL)) == n


def test_promote_errors(reg, adapter):
    with pytest.raises(RegistryError, match="unknown skill"):
        reg.promote(SKILL, 1)
    publish(reg, adapter)
    before = reg.snapshot(SKILL)
    with pytest.raises(RegistryError, match="no version 7"):
        reg.promote(SKILL, 7)
    publish(reg, adapter, alias=None)
    before = reg.snapshot(SKILL)
    (reg.path(SKILL, 2) / "adapter_config.json").write_text("{}")
    with pytest.raises(RegistryError, match="adapter_config.json"):
        reg.promote(SKILL, 2)  # a tampered version never becomes production
    assert reg.aliases(SKILL) == {"production": 1}
    assert {k: v for k, v in reg.snapshot(SKILL).items() if "versions/2" not in k} == {
        k: v for k, v in before.items() if "versions/2" not in k
    }


def test_rollback_without_previous_version_errors(reg, adapter):
    with pytest.raises(RegistryError, match="unknown skill"):
        reg.rollback(SKILL)
    publish(reg, adapter)
    before = reg.snapshot(SKILL)
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback(SKILL)
    assert reg.snapshot(SKILL) == before
    publish(reg, adapter, alias="candidate")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback(SKILL)  # candidate moves do not count as production moves


# ---------------------------------------------------------------- path / show


def test_path_and_show_errors(reg, adapter):
    with pytest.raises(RegistryError, match="unknown skill 'nope'"):
        reg.path("nope")
    with pytest.raises(RegistryError, match="unknown skill 'nope'"):
        reg.show("nope")
    publish(reg, adapter, alias="candidate")
    with pytest.raises(RegistryError, match="no alias 'production'"):
        reg.path(SKILL)
    with pytest.raises(RegistryError, match="no version 5"):
        reg.show(SKILL, 5)
    with pytest.raises(RegistryError, match="unknown skill 'nope'.*intent"):
        reg.show("nope")
    assert reg.versions("nope") == []
    assert reg.aliases("nope") == {}
    assert reg.alias_history("nope") == []
    assert reg.snapshot("nope") == {}


def test_show_describes_a_version(reg, adapter):
    publish(reg, adapter)
    publish(reg, adapter, alias="candidate", metrics={"accuracy": 0.95})
    info = reg.show(SKILL)
    assert info["version"] == 1
    assert info["aliases"] == ["production"]
    assert info["metrics"]["accuracy"] == 0.9
    assert info["lineage"]["run_id"].startswith("r") and info["lineage"]["seeds_hash"] == "s"
    assert info["routing"]["latency_ms"] == 12
    assert info["skill"]["labels"] == ["a", "b"]
    info2 = reg.show(SKILL, alias="candidate")
    assert info2["version"] == 2 and info2["metrics"] == {"accuracy": 0.95}
    assert reg.show(SKILL, 2) == info2


def test_snapshot_excludes_lock_and_sees_every_change(reg, adapter):
    publish(reg, adapter)
    snap = reg.snapshot(SKILL)
    assert ".lock" not in snap
    assert "aliases.json" in snap and "versions/1/checksums.json" in snap
    (reg.root / SKILL / "aliases.json").write_text('{"production": 1}')
    assert reg.snapshot(SKILL) != snap


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\r"])
def test_a_reason_with_a_unicode_line_separator_keeps_history_and_rollback(reg, adapter, sep):
    """alias_history.jsonl is split on "\\n" only (issue 15): a reason holding U+2028 and the
    other characters str.splitlines() breaks on stays one entry."""
    from flows.cli import main

    publish(reg, adapter, reason="first")
    publish(reg, adapter, reason="second")
    assert main(["registry", "promote", SKILL, "1", "--reason", f"bad{sep}version 2", "--root", str(reg.root)]) == 0
    hist = reg.alias_history(SKILL)
    assert len(hist) == 3 and hist[-1]["reason"] == f"bad{sep}version 2"
    assert main(["registry", "rollback", SKILL, "--reason", f"undo{sep}it", "--root", str(reg.root)]) == 0
    assert [h["to"] for h in reg.alias_history(SKILL)] == [1, 2, 1, 2] and reg.aliases(SKILL)["production"] == 2


@pytest.mark.parametrize("offsets", [{"A": -7200.0}, {"B": 7200.0}], ids=["A-2h-behind", "B-2h-ahead"])
def test_a_delayed_publisher_loses_nothing_to_another_publishers_clean_up(reg, tmp_path, monkeypatch, offsets):
    """Issue 35 (5) on the local store: A (its wall clock 2 h behind, or B's ahead) waits for the lock
    while B publishes and removes stale temp folders. Here a publisher stages only while holding the
    lock, and B's clean-up judges no clock, so A's upload cannot be another's leftover: both publish."""
    import threading
    import time
    from contextlib import contextmanager

    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + offsets.get(threading.current_thread().name, 0.0))
    b_inside, a_waiting = threading.Event(), threading.Event()
    real_clean, real_lock = Registry._remove_stale_temps, Registry._lock

    def clean(self, sdir):
        if threading.current_thread().name == "B":
            b_inside.set()
            assert a_waiting.wait(60)
            time.sleep(0.2)  # A is in flock() now
        return real_clean(self, sdir)

    @contextmanager
    def lock(self, skill):
        if threading.current_thread().name == "A":
            a_waiting.set()
        with real_lock(self, skill):
            yield

    monkeypatch.setattr(Registry, "_remove_stale_temps", clean)
    monkeypatch.setattr(Registry, "_lock", lock)
    results: dict = {}

    def run(name):
        try:
            results[name] = publish(Registry(reg.root), make_adapter(tmp_path, name, f"weights-{name}".encode()))
        except BaseException as e:  # noqa: BLE001 - reported below
            results[name] = e

    b = threading.Thread(target=run, args=("B",), name="B")
    b.start()
    assert b_inside.wait(60)
    a = threading.Thread(target=run, args=("A",), name="A")
    a.start()
    a.join(60)
    b.join(60)
    assert results == {"B": 1, "A": 2}
    reg.verify(SKILL, 2)
    assert (reg.path(SKILL, 2) / "adapter_model.safetensors").read_bytes() == b"weights-A"
    assert temp_leftovers(reg) == []


def test_extra_json_files_are_part_of_the_version(reg, tmp_path):
    """publish(extra=...): novelty.json (the drift monitor's training-input signatures) is written, checksummed and
    pulled like the other metadata; a name that is not a new <name>.json is refused before anything is written."""
    v = publish(reg, make_adapter(tmp_path), extra={"novelty.json": {"format": 1, "signatures": ""}})
    folder = reg.resolve(SKILL, version=v)
    assert json.loads((folder / "novelty.json").read_text()) == {"format": 1, "signatures": ""}
    assert "novelty.json" in json.loads((folder / "checksums.json").read_text())
    assert (reg.pull(SKILL, version=v, to=tmp_path / "pulled") / "novelty.json").is_file()
    for bad in ("routing.json", "checksums.json", "../x.json", "novelty.txt", ".hidden.json"):
        with pytest.raises(RegistryError, match="extra: bad file name"):
            publish(reg, make_adapter(tmp_path, f"a-{bad.strip('./')}"), extra={bad: {}})
    assert reg.versions(SKILL) == [v]
