"""Scale-out: the pipeline's own expansion and filter tasks, unchanged, on prefect-dask's
DaskTaskRunner (a local cluster of 2 worker processes) against a real Prefect server, for two
shards of the tiny skill; the same results as the tasks run in-process; filtering shards share
one dedup index through Redis (127.0.0.1:6379, db REDIS_DB, emptied before and after)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

REDIS_DB = 11  # this test's own db; flushed before and after
SKILL = "ticket-triage"
LABELS = ["billing", "bug", "feature_request", "account", "other"]


def _answer(prompt: str, body: dict) -> str:
    """The teacher: a ticket for self-instruct prompts, a label for labeling prompts (they end with 'Team:'),
    both a function of the prompt (the tiny random model's answers are all truncated, so it keeps nothing)."""
    h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    if prompt.endswith("Team:"):
        return " " + LABELS[h % len(LABELS)]
    return (f" customer {h % 9973} reports that the {LABELS[h % 5]} page shows error {h % 97} after the "
            f"{['monday', 'nightly', 'march', 'latest'][h % 4]} update and asks for help")


@pytest.fixture()
def teacher_url():
    from teachers.fakeserver import FakeOpenAIServer

    srv = FakeOpenAIServer(answer=_answer).start()
    yield srv.base_url
    srv.stop()


@pytest.fixture()
def redis_url():
    redis = pytest.importorskip("redis")
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as e:
        pytest.skip(f"no Redis answers at 127.0.0.1:6379 ({e}); the shared dedup index needs it")
    client.flushdb()
    try:
        yield url, client
    finally:
        client.flushdb()
        client.close()


def _records(path: Path) -> list[dict]:
    """The examples of a file, without their creation time (the only field that depends on when)."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        r.pop("created_at", None)
    return rows


def test_expansion_and_filtering_on_a_two_process_dask_cluster(skill_root, use_api, redis_url, teacher_url,
                                                               tmp_path, monkeypatch):
    from prefect import flow

    from flows.pipeline import expand, filter_candidates
    from flows.scale import Shard, commit_shard, expand_and_filter_many, on_dask, prepare

    url, redis = redis_url
    path = skill_root / SKILL / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg.setdefault("filters", {})["redis_url"] = url
    cfg["teacher"].update(backend="openai", base_url=teacher_url, model="fake", endpoint="completions")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    jobs = [Shard(skill=SKILL, profile="tiny", run_id="shard-a", seed=11),
            Shard(skill=SKILL, profile="tiny", run_id="shard-b", seed=22)]

    # 1. Both shards on Dask: 2 worker processes, which reach the server through PREFECT_API_URL.
    dask_home = tmp_path / "work"  # DISTILL_HOME of skill_root, inherited by the workers
    out = on_dask(n_workers=2)(jobs)
    assert [Path(o["run_dir"]).name for o in out] == ["shard-a", "shard-b"]
    for o in out:
        assert o["filter"]["stats"]["index"]["backend"] == "redis"
        assert o["expansion"]["generated"] > 0 and o["filter"]["accepted"] > 0
    on_cluster = {j.run_id: {f: _records(dask_home / "runs" / SKILL / j.run_id / f)
                             for f in ("generated.jsonl", "accepted.jsonl")} for j in jobs}
    assert on_cluster["shard-a"]["generated.jsonl"] != on_cluster["shard-b"]["generated.jsonl"]  # other seeds
    # The tasks did run as Prefect task runs of that flow, on the server.
    import httpx

    runs = httpx.post(f"{use_api}/task_runs/filter", json={"task_runs": {"name": {"like_": "teacher-expansion"}}},
                      timeout=10).json()
    assert len([r for r in runs if r["state"]["type"] == "COMPLETED"]) >= 2

    # 2. The same tasks in-process (.fn, inside a default flow) with the same seeds, in a fresh work dir
    #    (no teacher answers cached) and an empty Redis db: the same files.
    ref_home = tmp_path / "ref-work"
    monkeypatch.setenv("DISTILL_HOME", str(ref_home))
    redis.flushdb()

    @flow(name="in-process-reference")
    def reference(shards: list) -> None:
        for j in shards:
            skill, teacher, run_dir, replay = prepare(j)
            expand.fn(skill, teacher, run_dir, j.seed, replay_items=replay)
            filter_candidates.fn(skill, run_dir, replay)

    reference(jobs)
    for j in jobs:
        for f in ("generated.jsonl", "accepted.jsonl"):
            assert _records(ref_home / "runs" / SKILL / j.run_id / f) == on_cluster[j.run_id][f], (j.run_id, f)

    # 3. One index for every shard: shard-a is committed (pool + Redis); a later shard whose candidates are
    #    near-copies of shard-a's accepted examples, filtered on the cluster, drops them as near_duplicate
    #    of the pool, read from Redis (the index was not rebuilt).
    monkeypatch.setenv("DISTILL_HOME", str(dask_home))
    redis.flushdb()
    committed = commit_shard(jobs[0])
    accepted_a = on_cluster["shard-a"]["accepted.jsonl"]
    assert committed["index"]["added"] == len(accepted_a) > 0
    assert redis.keys("distill:index:*")
    shard_c = Shard(skill=SKILL, profile="tiny", run_id="shard-c", seed=33)
    run_c = dask_home / "runs" / SKILL / "shard-c"
    run_c.mkdir(parents=True)
    from core.records import Example, read_examples, write_examples

    originals = read_examples(dask_home / "runs" / SKILL / "shard-a" / "accepted.jsonl")
    copies = [Example(id=f"copy-{e.id}", skill=e.skill, input=e.input + " thanks", output=e.output,
                      source="teacher", teacher=e.teacher, parent_ids=list(e.parent_ids)) for e in originals]
    write_examples(run_c / "generated.jsonl", copies)
    res = on_dask(n_workers=2).with_options(name="refilter")([shard_c], expand_stage=False)[0]
    stats = res["filter"]["stats"]["index"]
    assert stats["backend"] == "redis" and stats["rebuilt_from_pool"] is False and stats["pool"] == len(originals)
    dropped = {r.example.id: r for r in res["filter"]["rejected"]}
    near = [e for e in originals if f"copy-{e.id}" in dropped
            and dropped[f"copy-{e.id}"].reason == "near_duplicate"]
    assert near, f"no near-copy of shard-a's examples was dropped: {[(r.reason, r.detail) for r in dropped.values()]}"
    for e in near:
        detail = dropped[f"copy-{e.id}"].detail
        assert detail["matched_in"] == "pool" and detail["matched_id"] == e.id
