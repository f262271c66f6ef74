"""The persistent dedup index, on local files and on the real Redis server (db 13)."""

import json
import uuid

import numpy as np
import pytest

from core.records import Example
from core.skills import FilterConfig
from core.workdir import index_dir
from filters import DedupIndex, IndexMismatch, commit_index
from filters.index import PENDING_FILE, RedisStore
from filters.normalize import NORMALIZER_VERSION

REDIS_URL = "redis://127.0.0.1:6379/13"  # a database number of its own; keys removed after each test


def redis_ok() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except Exception:
        return False


@pytest.fixture(params=["local", "redis"])
def backend(request, tmp_path, monkeypatch):
    """(skill name, FilterConfig kwargs): a fresh skill per test, local index under tmp_path or Redis db 13."""
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "work"))
    skill = f"t-{uuid.uuid4().hex[:8]}"
    if request.param == "local":
        yield skill, {}
        return
    if not redis_ok():
        pytest.skip(f"no Redis answers at {REDIS_URL}")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    yield skill, {"redis_url": REDIS_URL}
    for key in client.scan_iter(match=f"distill:index:{skill}:*"):
        client.delete(key)


def mk(id, text):
    return Example(id=id, skill="t", input=text, output="x", source="teacher")


A = "the parcel arrived two weeks late and the box was crushed on one side when it came"
B = "i was charged twice for the same order and support has not answered my three emails yet"
C = "the app crashes whenever i open the camera tab on my phone after the latest update"
D = "please add a dark mode to the dashboard because the white screen hurts my eyes at night"


def near(text):  # one word changed at the end: shingle Jaccard well above 0.7
    return text.rsplit(" ", 1)[0] + " again"


def test_run_commit_and_next_run_sees_the_pool(backend, tmp_path):
    skill, kw = backend
    cfg = FilterConfig(**kw)
    seeds = [mk("s1", A)]
    run1 = tmp_path / "run1"
    idx = DedupIndex.open(skill, cfg, pool=[], reference=seeds)
    got = idx.query_and_add([mk("c1", near(A)), mk("c2", B), mk("c3", near(B)), mk("c4", C)])
    assert [m and (m.matched_id, m.matched_in) for m in got] == [("s1", "seeds"), None, ("c2", "run"), None]
    idx.write_pending(run1, keep_ids=["c2", "c4"])
    assert commit_index(skill, cfg, run1) == {"added": 2, "count": 2, "pending": True}
    assert commit_index(skill, cfg, run1)["added"] == 0  # idempotent

    pool = [mk("c2", B), mk("c4", C)]
    idx2 = DedupIndex.open(skill, cfg, pool=pool, reference=seeds)
    assert not idx2.rebuilt
    got = idx2.query_and_add([mk("d1", near(C)), mk("d2", D), mk("d3", A)])
    assert [m and (m.matched_id, m.matched_in) for m in got] == [("c4", "pool"), None, ("s1", "seeds")]
    assert got[0].jaccard >= 0.7


def test_filtering_alone_never_changes_the_index(backend, tmp_path):
    skill, kw = backend
    cfg = FilterConfig(**kw)
    idx = DedupIndex.open(skill, cfg, pool=[mk("p1", A)])
    idx.query_and_add([mk("c1", B)])
    idx.write_pending(tmp_path / "failed-run")  # the run then fails: nobody commits
    again = DedupIndex.open(skill, cfg, pool=[mk("p1", A)])
    assert not again.rebuilt
    assert again.query_and_add([mk("c2", B)]) == [None]  # c1 was never persisted


def test_index_disagreeing_with_pool_is_rebuilt_from_it(backend, tmp_path, caplog):
    skill, kw = backend
    cfg = FilterConfig(**kw)
    DedupIndex.open(skill, cfg, pool=[mk("p1", A)])
    # The pool grew without a commit (e.g. a crash between the two appends).
    with caplog.at_level("WARNING", logger="distill.filters.index"):
        idx = DedupIndex.open(skill, cfg, pool=[mk("p1", A), mk("p2", B)])
    assert idx.rebuilt and "rebuilding it from the accepted pool" in caplog.text
    assert [m.matched_id for m in idx.query_and_add([mk("x", near(B))])] == ["p2"]


def test_manifest_mismatch_is_refused_naming_each_field_and_the_fix(backend, tmp_path):
    skill, kw = backend
    DedupIndex.open(skill, FilterConfig(**kw), pool=[mk("p1", A)])
    with pytest.raises(IndexMismatch) as err:
        DedupIndex.open(skill, FilterConfig(num_perm=64, shingle=4, **kw), pool=[mk("p1", A)])
    msg = str(err.value)
    assert "num_perm: index has 128, config/code has 64" in msg and "filters.num_perm: 128" in msg
    assert "shingle: index has 3, config/code has 4" in msg and "seed" not in msg.split("\n")[1]
    assert "rebuilt from the accepted pool" in msg


def test_commit_refuses_signatures_made_with_other_parameters(backend, tmp_path):
    skill, kw = backend
    idx = DedupIndex.open(skill, FilterConfig(**kw), pool=[])
    idx.query_and_add([mk("c1", A)])
    idx.write_pending(tmp_path / "run")
    with pytest.raises(IndexMismatch, match="minhash_seed|seed: "):
        commit_index(skill, FilterConfig(minhash_seed=5, **kw), tmp_path / "run")


def test_local_layout_manifest_and_chunks(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "work"))
    cfg = FilterConfig()
    idx = DedupIndex.open("sk", cfg, pool=[mk("p1", A)])
    idx.query_and_add([mk("c1", B), mk("c2", C)])
    idx.write_pending(tmp_path / "run")
    commit_index("sk", cfg, tmp_path / "run")
    folder = index_dir("sk")
    m = json.loads((folder / "manifest.json").read_text())
    assert {k: m[k] for k in ("num_perm", "seed", "scheme", "shingle", "normalizer_version", "count")} == {
        "num_perm": 128, "seed": 1, "scheme": "affine32", "shingle": 3, "normalizer_version": NORMALIZER_VERSION, "count": 3}
    assert m["hash_function"].startswith("xxh32")
    assert [c["count"] for c in m["chunks"]] == [1, 2]
    sigs = np.concatenate([np.load(folder / c["sig"]) for c in m["chunks"]])
    assert np.array_equal(sigs[1:], idx.signatures([mk("c1", B), mk("c2", C)]))
    # A chunk that no manifest lists (an interrupted commit) is ignored and cleaned up.
    np.save(folder / "sig-000099.npy", sigs)
    idx.write_pending(tmp_path / "run2", keep_ids=[])
    commit_index("sk", cfg, tmp_path / "run2")
    assert DedupIndex.open("sk", cfg, pool=[mk("p1", A), mk("c1", B), mk("c2", C)]).rebuilt is False
    assert not (tmp_path / "run3" / PENDING_FILE).exists()
    assert commit_index("sk", cfg, tmp_path / "run3") == {"added": 0, "count": None, "pending": False}


def test_two_redis_workers_share_one_index(tmp_path, monkeypatch):
    if not redis_ok():
        pytest.skip(f"no Redis answers at {REDIS_URL}")
    import redis

    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "work"))
    skill = f"t-{uuid.uuid4().hex[:8]}"
    cfg = FilterConfig(redis_url=REDIS_URL)
    try:
        w1 = DedupIndex.open(skill, cfg, pool=[])
        w1.query_and_add([mk("a", A)])
        w1.write_pending(tmp_path / "r1")
        commit_index(skill, cfg, tmp_path / "r1")
        # A second worker with its own process state (another DISTILL_HOME) sees it through Redis.
        monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "other"))
        w2 = DedupIndex.open(skill, cfg, pool=[mk("a", A)])
        assert not w2.rebuilt
        assert [m and m.matched_in for m in w2.query_and_add([mk("b", near(A))])] == ["pool"]
        store = RedisStore(skill, cfg, REDIS_URL)
        assert store.read_manifest()["count"] == 1 and store.base.startswith(f"distill:index:{skill}:")
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"distill:index:{skill}:*"):
            client.delete(key)
