"""Versions on one base share batches (mixed adapters): requests to two versions sent at once are decoded
in one batch, and each answer is the one its version gives alone (the same greedy path and confidence)."""

from __future__ import annotations

import concurrent.futures as cf

import httpx

from tests.gateway.conftest import SKILL, publish, random_adapter, routing_with_threshold


def test_two_versions_on_one_base_share_a_batch_and_answer_as_alone(skill_root, tiny_model_path, trained_adapter,
                                                                    tmp_path, run_gateway):
    from gateway import GatewayConfig
    from registry import Registry

    reg = Registry()
    v1 = publish(reg, trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    v2 = publish(reg, random_adapter(tiny_model_path, tmp_path / "rand", seed=5), routing_with_threshold(None, "keep_all_valid"), "r2")
    inputs = [f"my invoice {i} was charged twice and the app crashed" for i in range(6)]
    g = run_gateway(GatewayConfig(skills=[SKILL], max_wait_ms=300, traffic_url=f"sqlite:///{tmp_path}/traffic.db"))

    def ask(v, xs):
        r = httpx.post(f"{g.url}/v1/skills/{SKILL}@{v}:predict", json={"inputs": xs}, timeout=120)
        assert r.status_code == 200, r.text
        return [(p["slm_answer"], p["confidence"]) for p in r.json()["predictions"]]

    alone = {v: ask(v, inputs) for v in (v1, v2)}  # one version per batch
    assert alone[v1] != alone[v2]  # two different adapters
    batches_before = _batches(g.url)
    with cf.ThreadPoolExecutor(2) as pool:  # both versions at once: one shared batch (300 ms to gather)
        together = dict(zip((v1, v2), pool.map(lambda v: ask(v, inputs), (v1, v2))))
    for v in (v1, v2):
        assert [a for a, _ in together[v]] == [a for a, _ in alone[v]]
        for (_, c1), (_, c2) in zip(together[v], alone[v]):
            assert (c1 is None) == (c2 is None) and (c1 is None or abs(c1 - c2) < 1e-4)
    assert _batches(g.url) - batches_before == 1  # 12 rows of two versions in one batch


def _batches(url: str) -> int:
    """How many batches the gateway has decoded (its batch-size histogram's count, every skill)."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return int(sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("distill_gateway_batch_size_count")))
