"""The registry on object storage: a real S3-compatible server (moto) on loopback, and memory://."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import uuid
from pathlib import Path

import pytest
from registry import Registry, RegistryError, RegistryUnavailable
from registry import remote as remote_mod
from registry.remote import ObjectRegistry

SKILL = "intent"
VERSION_FILES = {"adapter_model.safetensors", "adapter_config.json", "README.md", "metrics.json", "lineage.json",
                 "routing.json", "skill.json", "checksums.json"}


def make_adapter(tmp_path: Path, name: str = "adapter", payload: bytes = b"weights-v1") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(payload)
    (d / "adapter_config.json").write_text(json.dumps({"r": 16, "peft_type": "LORA"}))
    return d


def publish_args(**kw) -> dict:
    args = dict(
        metrics={"accuracy": 0.9},
        # A fresh run id per publish: a run id that already has a version gets that version back.
        lineage={"seeds_hash": "s", "dataset_hash": "d", "teachers": ["t"], "run_id": uuid.uuid4().hex,
                 "code_revision": "abc"},
        routing={"escalation_threshold": 0.6},
        skill_spec={"prompt_template": "Classify: {input}", "labels": ["a", "b"], "task": "classification"},
        model_card=lambda v: f"---\nlibrary_name: peft\n---\n# v{v}\n",
    )
    args.update(kw)
    return args


@pytest.fixture(params=["s3", "memory"])
def url(request, tmp_path, monkeypatch) -> str:
    if request.param == "s3":
        return request.getfixturevalue("s3_url")
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    return f"memory://reg-{uuid.uuid4().hex[:8]}/adapters"


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    return make_adapter(tmp_path)


def test_url_gives_object_registry_with_the_same_layout(url, adapter):
    reg = Registry(url)
    assert isinstance(reg, ObjectRegistry) and reg.location == url
    assert reg.skills() == []
    assert reg.publish(SKILL, adapter, **publish_args(reason="first")) == 1
    assert reg.publish(SKILL, adapter, **publish_args(alias="candidate")) == 2
    assert reg.skills() == [SKILL] and reg.versions(SKILL) == [1, 2]
    assert reg.aliases(SKILL) == {"production": 1, "candidate": 2}
    snap = reg.snapshot(SKILL)
    assert {k.split("/", 2)[2] for k in snap if k.startswith("versions/2/")} == VERSION_FILES | {".claim"}
    assert set(k for k in snap if not k.startswith("versions/")) == {"aliases.json", "alias_history.jsonl"}
    assert json.loads(reg._read_text(f"{SKILL}/aliases.json")) == {"production": 1, "candidate": 2}
    assert reg.path(SKILL) == f"{url}/{SKILL}/versions/1"
    info = reg.show(SKILL, alias="candidate")
    assert info["version"] == 2 and info["lineage"]["code_revision"] == "abc"
    reg.verify(SKILL, 2)
    # promote / rollback record every move
    reg.promote(SKILL, 2, reason="canary ok")
    assert reg.rollback(SKILL, reason="latency") == 1
    assert [(h["action"], h["alias"], h["from"], h["to"]) for h in reg.alias_history(SKILL)] == [
        ("publish", "production", None, 1), ("publish", "candidate", None, 2),
        ("promote", "production", 1, 2), ("rollback", "production", 2, 1)]
    # no staging upload or lock is left behind; each version keeps its claim
    assert [k for k in reg.snapshot(SKILL) if k.startswith(".") or "/." in k] == [
        "versions/1/.claim", "versions/2/.claim"]


def test_environment_url_is_used_by_default(s3_url, monkeypatch, adapter):
    monkeypatch.setenv("DISTILL_REGISTRY", s3_url)
    reg = Registry()
    assert isinstance(reg, ObjectRegistry)
    reg.publish(SKILL, adapter, **publish_args())
    assert Registry(s3_url).versions(SKILL) == [1]


def test_unreachable_or_missing_bucket_is_a_clear_error(s3_endpoint):
    with pytest.raises(RegistryError, match="bucket 'no-such-bucket' does not exist"):
        Registry("s3://no-such-bucket/x")


def test_resolve_downloads_verifies_and_caches(url, adapter, tmp_path):
    reg = Registry(url)
    reg.publish(SKILL, adapter, **publish_args())
    folder = reg.resolve(SKILL)
    assert folder.is_relative_to(tmp_path / "home" / "registry-cache")
    assert {p.name for p in folder.iterdir()} == VERSION_FILES
    assert (folder / "adapter_model.safetensors").read_bytes() == b"weights-v1"
    assert reg.resolve(SKILL) == folder  # cached
    # a damaged cache copy is dropped and fetched again
    (folder / "adapter_model.safetensors").write_bytes(b"bit rot")
    assert reg.resolve(SKILL) == folder
    assert (folder / "adapter_model.safetensors").read_bytes() == b"weights-v1"


def test_pull_refuses_a_corrupted_file_and_keeps_nothing(url, adapter, tmp_path):
    reg = Registry(url)
    reg.publish(SKILL, adapter, **publish_args())
    reg.fs.pipe_file(f"{reg.base}/{SKILL}/versions/1/adapter_model.safetensors", b"tampered in the bucket")
    with pytest.raises(RegistryError, match=r"adapter_model\.safetensors: corrupted .*refusing intent@1"):
        reg.resolve(SKILL)
    cache = reg.cache_dir() / SKILL
    assert not cache.exists() or list(cache.iterdir()) == []
    with pytest.raises(RegistryError, match="corrupted"):
        reg.pull(SKILL, 1, to=tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.pull-*"))
    with pytest.raises(RegistryError, match="adapter_model.safetensors"):
        reg.verify(SKILL, 1)
    with pytest.raises(RegistryError, match="adapter_model.safetensors"):
        reg.promote(SKILL, 1)


def test_pull_refuses_an_unlisted_file(url, adapter, tmp_path):
    reg = Registry(url)
    reg.publish(SKILL, adapter, **publish_args())
    reg.fs.pipe_file(f"{reg.base}/{SKILL}/versions/1/pytorch_model.bin", b"pickle")
    with pytest.raises(RegistryError, match="pytorch_model.bin"):
        reg.pull(SKILL, to=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_publish_changes_nothing_and_keeps_no_staging(url, adapter):
    reg = Registry(url)
    reg.publish(SKILL, adapter, **publish_args())
    before = reg.snapshot(SKILL)

    def card(v):
        raise RuntimeError("card rendering blew up")

    with pytest.raises(RuntimeError, match="blew up"):
        reg.publish(SKILL, adapter, **publish_args(model_card=card))
    after = reg.snapshot(SKILL)
    # The claimed number stays claimed (never reused) but holds nothing else and is invisible.
    assert {k: v for k, v in after.items() if k != "versions/2/.claim"} == before
    assert "versions/2/.claim" in after
    assert reg.versions(SKILL) == [1] and reg.aliases(SKILL) == {"production": 1}
    assert not [k for k in after if k.startswith(".staging")]
    assert reg.publish(SKILL, adapter, **publish_args()) == 3


def test_failed_alias_move_withdraws_the_version(url, adapter, monkeypatch):
    reg = Registry(url)
    reg.publish(SKILL, adapter, **publish_args())
    before = reg.snapshot(SKILL)
    real = ObjectRegistry._write_text

    def failing(self, rel, text):
        if rel.endswith("alias_history.jsonl"):
            raise OSError("bucket full")
        return real(self, rel, text)

    monkeypatch.setattr(ObjectRegistry, "_write_text", failing)
    with pytest.raises(OSError, match="bucket full"):
        reg.publish(SKILL, adapter, **publish_args())
    after = {k: v for k, v in reg.snapshot(SKILL).items() if k != "versions/2/.claim"}
    assert after == before and reg.versions(SKILL) == [1] and reg.aliases(SKILL) == {"production": 1}


def test_a_version_without_its_marker_is_invisible_then_cleaned(url, adapter, monkeypatch):
    """A publisher that died after claiming and copying but before writing checksums.json. Age is the
    store's own: the objects' modification times against the store's time of the renewed lease (S3
    keeps whole seconds, hence the margins)."""
    monkeypatch.setattr(remote_mod, "ABANDONED_AFTER_S", 2.0)
    reg = Registry(url)
    reg.publish(SKILL, adapter, **publish_args())
    future = time.time() + 86400  # what a claim says about its time is never read
    reg.fs.pipe_file(f"{reg.base}/{SKILL}/versions/2/.claim", json.dumps({"time": future}).encode())
    reg.fs.pipe_file(f"{reg.base}/{SKILL}/versions/2/adapter_model.safetensors", b"half")
    reg.fs.pipe_file(f"{reg.base}/{SKILL}/.staging/{int(future)}-dead/adapter_model.safetensors", b"half")
    time.sleep(3.5)
    young = f"{reg.base}/{SKILL}/.staging/0-alive/adapter_model.safetensors"  # a name that "looks" 56 years old
    reg.fs.pipe_file(young, b"uploading")
    assert reg.versions(SKILL) == [1]
    with pytest.raises(RegistryError, match="no version 2"):
        reg.path(SKILL, 2)
    assert reg.publish(SKILL, adapter, **publish_args()) == 3  # 2 is never reused
    snap = reg.snapshot(SKILL)
    assert "versions/2/adapter_model.safetensors" not in snap and "versions/2/.claim" in snap
    assert not [k for k in snap if "dead" in k]
    assert reg.fs.exists(young)  # a live publisher's upload is left alone


def test_an_existing_version_is_never_overwritten(url, adapter, tmp_path, monkeypatch):
    reg = Registry(url)
    reg.publish(SKILL, adapter, **publish_args())
    before = reg.snapshot(SKILL)
    monkeypatch.setattr(ObjectRegistry, "_next_version", lambda self, skill: 1)  # simulate a clash
    with pytest.raises(RegistryError, match="already exists"):
        reg.publish(SKILL, make_adapter(tmp_path, "other", b"different"), **publish_args())
    assert reg.snapshot(SKILL) == before
    reg.verify(SKILL, 1)
    assert reg.resolve(SKILL).joinpath("adapter_model.safetensors").read_bytes() == b"weights-v1"


def test_lease_of_a_dead_holder_is_broken_after_a_lease_of_watching(url, adapter, monkeypatch):
    reg = Registry(url)
    lock = f"{reg.base}/{SKILL}/.lock"
    reg.fs.pipe_file(lock, json.dumps({"owner": "dead", "expires": time.time() - 1}).encode())
    # A commit on the test server must fit in half the lease, also on a loaded 2-core CI machine.
    monkeypatch.setattr(remote_mod, "LOCK_LEASE_S", 5.0)
    t0 = time.monotonic()
    assert reg.publish(SKILL, adapter, **publish_args()) == 1
    assert time.monotonic() - t0 >= 5.0  # watched for a whole lease first, on this host's own clock
    # The lease object stays, released; the next publisher takes it at once.
    assert json.loads(reg.fs.cat_file(lock))["released"] is True
    t0 = time.monotonic()
    assert reg.publish(SKILL, adapter, **publish_args()) == 2
    assert time.monotonic() - t0 < 5.0
    # A held lease is waited for, then reported (transient: the publish task may retry it).
    reg.fs.pipe_file(lock, json.dumps({"owner": "alive", "expires": time.time() + 60}).encode())
    monkeypatch.setattr(remote_mod, "LOCK_LEASE_S", 60.0)
    monkeypatch.setattr(remote_mod, "LOCK_WAIT_S", 0.3)
    with pytest.raises(RegistryUnavailable, match="could not get the skill's lock"):
        reg.promote(SKILL, 1)


def _contend(url: str, n: int, hold_s: float, stats: dict, skew_s: float = 0.0) -> None:
    """n threads, each with its own Registry, take the lock once; stats: most holders at once, entries."""
    import threading

    guard = threading.Lock()

    def worker():
        reg = Registry(url)
        with reg._lock(SKILL):
            with guard:
                stats["inside"] += 1
                stats["max"] = max(stats["max"], stats["inside"])
                stats["entries"] += 1
            time.sleep(hold_s)
            with guard:
                stats["inside"] -= 1

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_at_most_one_holder_when_many_find_an_expired_lease(url, monkeypatch):
    """Without compare-and-swap (the old memory:// path) two breakers both deleted and re-created it."""
    reg = Registry(url)
    reg.fs.pipe_file(f"{reg.base}/{SKILL}/.lock", json.dumps({"owner": "dead", "expires": 0}).encode())
    monkeypatch.setattr(remote_mod, "LOCK_LEASE_S", 0.2)
    stats = {"inside": 0, "max": 0, "entries": 0}
    _contend(url, 6, 0.05, stats)
    assert stats == {"inside": 0, "max": 1, "entries": 6}


def test_clock_skew_between_hosts_never_breaks_a_live_lease(url, monkeypatch):
    """A waiter whose wall clock runs a day ahead must not take a lease its holder still uses."""
    import threading

    monkeypatch.setattr(remote_mod, "LOCK_LEASE_S", 1.0)
    holder = Registry(url)
    inside, overlap = threading.Event(), []

    def hold():
        with holder._lock(SKILL):
            inside.set()
            time.sleep(0.6)
            overlap.append("holder-left")

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(10)
    # This host's wall clock is a day ahead (only the registry's view of it: S3 request signing keeps its own).
    skewed = type("SkewedTime", (), {"time": staticmethod(lambda: time.time() + 86400),
                                     "monotonic": staticmethod(time.monotonic), "sleep": staticmethod(time.sleep)})
    monkeypatch.setattr(remote_mod, "time", skewed)
    with Registry(url)._lock(SKILL):
        overlap.append("waiter-entered")
    t.join(10)
    assert overlap == ["holder-left", "waiter-entered"]


def test_a_holder_too_slow_for_its_lease_commits_nothing(url, adapter, tmp_path, monkeypatch):
    """A paused publisher (past half its lease) stops before the marker: production stays verified."""
    reg = Registry(url)
    assert reg.publish(SKILL, adapter, **publish_args()) == 1
    before = reg.snapshot(SKILL)
    monkeypatch.setattr(remote_mod, "LOCK_LEASE_S", 0.4)
    monkeypatch.setattr(ObjectRegistry, "_clean_abandoned", lambda self, skill, **kw: time.sleep(0.3))
    with pytest.raises(RegistryUnavailable, match="more than half its lease"):
        reg.publish(SKILL, make_adapter(tmp_path, "a2", b"weights-v2"), **publish_args())
    after = reg.snapshot(SKILL)
    assert {k: v for k, v in after.items() if not k.startswith("versions/2/")} == before
    assert reg.versions(SKILL) == [1] and reg.aliases(SKILL) == {"production": 1}
    reg.verify(SKILL, reg.aliases(SKILL)["production"])


def test_a_store_without_preconditions_refuses_writers_unless_single_writer(tmp_path, adapter, monkeypatch):
    """gs://, az:// and other stores take this path: refused, not raced; reads still work."""
    url = f"memory://reg-{uuid.uuid4().hex[:8]}/adapters"
    Registry(url).publish(SKILL, adapter, **publish_args())
    reg = Registry(url)
    reg.preconditions = None  # what a store this code has no tested conditional write for gets
    with pytest.raises(RegistryError, match="no conditional write"):
        reg.publish(SKILL, adapter, **publish_args())
    with pytest.raises(RegistryError, match="single_writer=True"):
        reg.promote(SKILL, 1)
    assert reg.versions(SKILL) == [1] and reg.aliases(SKILL) == {"production": 1}
    one = Registry(url, single_writer=True)
    one.preconditions = None
    assert one.publish(SKILL, adapter, **publish_args()) == 2
    monkeypatch.setenv(remote_mod.SINGLE_WRITER_ENV, "1")
    assert Registry(url).single_writer is True


def test_two_processes_publishing_to_s3_concurrently(s3_url, adapter, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    import registry_worker

    ctx = mp.get_context("spawn")
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=registry_worker.publish_many, args=(s3_url, SKILL, str(adapter), w, 3, start, queue))
             for w in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = dict(queue.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    reg = Registry(s3_url)
    assert sorted(results[0] + results[1]) == list(range(1, 7))
    assert reg.versions(SKILL) == list(range(1, 7))
    assert reg.aliases(SKILL) == {"production": 6}
    hist = reg.alias_history(SKILL)
    assert [h["to"] for h in hist] == list(range(1, 7)) and [h["from"] for h in hist] == [None, 1, 2, 3, 4, 5]
    for v in range(1, 7):
        reg.verify(SKILL, v)
        assert json.loads(reg._read_text(f"{SKILL}/versions/{v}/README.md").split("# v")[1]) == v
    assert not [k for k in reg.snapshot(SKILL) if k.startswith(".") or "/." in k and not k.endswith("/.claim")]


# ---- issue 35 (5): a clean-up never judges another writer's staging by that writer's clock --------------------------


def _per_thread_clock(offsets: dict[str, float]):
    """registry.remote's `time` with a wall clock per thread name (hosts whose clocks disagree)."""
    import threading

    real = time.time
    return type("HostClocks", (), {
        "time": staticmethod(lambda: real() + offsets.get(threading.current_thread().name, 0.0)),
        "monotonic": staticmethod(time.monotonic), "sleep": staticmethod(time.sleep)})


def _publish_while_another_waits(url, tmp_path, monkeypatch, hold_s: float = 0.0) -> dict:
    """B takes the lock; A uploads its staging and waits for it; B (after `hold_s`) cleans up and
    publishes; then A publishes. Returns {"A": version or exception, "B": ...}."""
    import threading
    from contextlib import contextmanager

    b_inside, a_waiting = threading.Event(), threading.Event()
    real_clean, real_lock = ObjectRegistry._clean_abandoned, ObjectRegistry._lock

    def clean(self, skill, **kw):
        if threading.current_thread().name == "B":
            b_inside.set()
            assert a_waiting.wait(60)
            time.sleep(hold_s)
        return real_clean(self, skill, **kw)

    @contextmanager
    def lock(self, skill, **kw):
        if threading.current_thread().name == "A":
            a_waiting.set()  # its upload is staged; now it waits for the lock B holds
        with real_lock(self, skill, **kw):
            yield

    monkeypatch.setattr(ObjectRegistry, "_clean_abandoned", clean)
    monkeypatch.setattr(ObjectRegistry, "_lock", lock)
    results: dict = {}

    def run(name):
        try:
            results[name] = Registry(url).publish(SKILL, make_adapter(tmp_path, name, f"weights-{name}".encode()),
                                                  **publish_args())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            results[name] = e

    b = threading.Thread(target=run, args=("B",), name="B")
    b.start()
    assert b_inside.wait(60)
    a = threading.Thread(target=run, args=("A",), name="A")
    a.start()
    a.join(120)
    b.join(120)
    return results


@pytest.mark.parametrize("offsets", [{"A": -7200.0}, {"B": 7200.0}], ids=["A-2h-behind", "B-2h-ahead"])
def test_a_delayed_publisher_keeps_its_staging_while_another_publishes(url, tmp_path, monkeypatch, offsets):
    """The issue's example: A (its clock 2 h behind; or B's 2 h ahead) staged its upload and waits for
    the lock; B publishes and cleans up. B's clean-up took A's live staging (the token carried A's
    clock) and A failed with FileNotFoundError."""
    monkeypatch.setattr(remote_mod, "time", _per_thread_clock(offsets))
    results = _publish_while_another_waits(url, tmp_path, monkeypatch)
    assert results == {"B": 1, "A": 2}
    reg = Registry(url)
    reg.verify(SKILL, 2)
    assert reg.resolve(SKILL, version=2).joinpath("adapter_model.safetensors").read_bytes() == b"weights-A"
    assert reg.aliases(SKILL) == {"production": 2}
    assert not [k for k in reg.snapshot(SKILL) if k.startswith(".staging")]


def test_a_waiting_publisher_refreshes_its_staging_past_the_abandon_age(url, tmp_path, monkeypatch):
    """A waits for the lock longer than ABANDONED_AFTER_S: its `.alive` keeps its staging young on the
    store's clock, so B's clean-up leaves it (a live publisher's upload is never removed)."""
    monkeypatch.setattr(remote_mod, "ABANDONED_AFTER_S", 3.0)
    results = _publish_while_another_waits(url, tmp_path, monkeypatch, hold_s=4.5)
    assert results == {"B": 1, "A": 2}
    Registry(url).verify(SKILL, 2)


def test_a_publisher_never_removes_its_own_staging(url, adapter, monkeypatch):
    """Everything is "abandoned" at once (ABANDONED_AFTER_S = 0): the staging the cleaner's own lease
    names still stays (the old code, comparing its token's whole seconds, removed it and failed)."""
    monkeypatch.setattr(remote_mod, "ABANDONED_AFTER_S", 0.0)
    reg = Registry(url)
    assert reg.publish(SKILL, adapter, **publish_args()) == 1
    assert reg.publish(SKILL, adapter, **publish_args()) == 2
    reg.verify(SKILL, 2)


def test_a_staging_lost_to_a_long_pause_is_a_clear_transient_error(url, adapter, monkeypatch):
    """If a publisher was paused past ABANDONED_AFTER_S and its upload went, it says so (no FileNotFoundError)."""
    reg = Registry(url)
    real_clean = ObjectRegistry._clean_abandoned

    def clean(self, skill, keep=None):
        real_clean(self, skill, keep=keep)
        self.fs.rm(self._p(keep), recursive=True)  # as if removed while this publisher slept

    monkeypatch.setattr(ObjectRegistry, "_clean_abandoned", clean)
    with pytest.raises(RegistryUnavailable, match="publish again"):
        reg.publish(SKILL, adapter, **publish_args())
    assert reg.versions(SKILL) == []


def test_modification_times_are_read_from_every_store_shape():
    from datetime import datetime, timedelta, timezone

    from registry.remote import modified_at

    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert modified_at({"LastModified": when}) == when.timestamp()  # S3
    assert modified_at({"LastModified": when.astimezone(timezone(timedelta(hours=-8)))}) == when.timestamp()
    assert modified_at({"updated": "2026-01-02T03:04:05Z"}) == when.timestamp()  # GCS
    assert modified_at({"mtime": 12.5}) == 12.5 and modified_at({"created": when}) == when.timestamp()  # local, memory
    assert modified_at({"name": "x", "size": 1}) is None and modified_at({"mtime": True}) is None
