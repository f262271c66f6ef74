"""The serving path's plumbing: responses are not held back by Nagle's algorithm (TCP_NODELAY on every
accepted connection), and traffic rows are scrubbed in a shared child process, off this process's GIL, with
the writer thread as the fail-closed fallback."""

from __future__ import annotations

import socket
import sqlite3

import httpx

from tests.gateway.conftest import SKILL, StubEngine, publish, routing_with_threshold


def test_accepted_connections_have_tcp_nodelay(skill_root, tmp_path, trained_adapter, run_gateway):
    from gateway import GatewayConfig
    from gateway.service import Gateway
    from registry import Registry

    publish(Registry(), trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    cfg = GatewayConfig(skills=[SKILL], teachers=False, traffic_url=f"sqlite:///{tmp_path}/traffic.db")
    g = run_gateway(cfg, Gateway(cfg, engine=StubEngine()))
    with httpx.Client() as c:  # keep-alive: the connection stays open while its socket is inspected
        assert c.get(g.url + "/healthz").status_code == 200
        conns = list(g.server.server_state.connections)  # uvicorn's open connections
        assert conns
        for proto in conns:
            sock = proto.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def _rows(db) -> list[str]:
    from core.workdir import traffic_table_name

    with sqlite3.connect(db) as c:
        return [r[0] for r in c.execute(f"select request from {traffic_table_name(SKILL)}")]


def test_rows_are_scrubbed_in_the_child_process_and_in_the_thread_when_it_fails(tmp_path, monkeypatch):
    from core.config import PrivacyConfig
    from core.privacy import scrubber_for
    from core.workdir import traffic_table_name
    from gateway import traffic as T

    scrub = scrubber_for(PrivacyConfig())
    for case in ("process", "no_process"):
        if case == "no_process":
            def broken():
                raise OSError("no processes here")

            monkeypatch.setattr(T, "_scrub_worker", broken)
        db = tmp_path / f"{case}.db"
        w = T.TrafficWriter(f"sqlite:///{db}", traffic_table_name, flush_ms=20, scrub_for=lambda name: scrub)
        try:
            for i in range(5):
                w.write(SKILL, {"id": f"r{i}", "skill": SKILL, "version": 1, "lane": "keep", "answer": "billing", "reference_source": "student",
                                "request": f"mail me at ana{i}@example.com or +44 20 7946 0958"})
            assert w.flush(timeout=90)
        finally:
            w.close()
        rows = _rows(db)
        assert len(rows) == 5 and w.scrubbed == 5 and w.scrub_failures == 0
        assert all("@example.com" not in r and "<EMAIL_ADDRESS>" in r for r in rows), rows
        assert w._pool is (case == "process")  # the process answered; without one, the thread scrubbed


def test_the_scrubbing_process_starts_with_the_gateway_not_with_the_first_request(skill_root, tmp_path, trained_adapter,
                                                                                   run_gateway, monkeypatch):
    """Its ~6 s start-up would otherwise share the CPU with the first requests' decoding: it starts beside the
    model loading and the gateway is ready once it is up."""
    import time

    from gateway import GatewayConfig
    from gateway import traffic as T
    from gateway.service import Gateway
    from registry import Registry

    started = []
    real = T._scrub_worker
    monkeypatch.setattr(T, "_scrub_worker", lambda: started.append(time.monotonic()) or real())
    publish(Registry(), trained_adapter, routing_with_threshold(None, "keep_all_valid"), "r1")
    cfg = GatewayConfig(skills=[SKILL], teachers=False, traffic_url=f"sqlite:///{tmp_path}/traffic.db")
    g = run_gateway(cfg, Gateway(cfg, engine=StubEngine()))
    assert started  # before any request, and before /readyz said ready (run_gateway waits for it)
    assert g.gateway._scrub_warming is not None and not g.gateway._scrub_warming.is_alive()  # up before ready
