"""Prometheus metrics of one gateway (its own CollectorRegistry, so several can live in one process)."""

from __future__ import annotations

from typing import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self.requests = Counter("distill_gateway_requests", "Answered inputs by skill, version and lane",
                                ["skill", "version", "lane"], registry=r)
        self.latency = Histogram("distill_gateway_request_seconds", "Latency per input by skill, version and lane",
                                 ["skill", "version", "lane"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("distill_gateway_errors", "Requests answered with an error status", ["skill", "status"],
                              registry=r)
        self.escalation_rate = Gauge("distill_gateway_escalation_rate", "Share of a skill's inputs escalated to the teacher",
                                     ["skill"], registry=r)
        self.verify = Counter("distill_gateway_verify", "Verify-lane outcomes", ["skill", "version", "result"], registry=r)
        self.verify_error = Gauge("distill_gateway_verify_error_rate", "Live error-rate estimate from the verify lane "
                                  "(bound: estimate | low | high, exact 95% interval)", ["skill", "version", "bound"], registry=r)
        self.batch = Histogram("distill_gateway_batch_size", "Inputs per decoded batch", ["skill"],
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.queue_depth = Gauge("distill_gateway_queue_depth", "Items waiting per queue", ["queue"], registry=r)
        self.queue_lost = Gauge("distill_gateway_queue_lost", "Items dropped because a queue was full", ["queue"], registry=r)
        self.store_failures = Gauge("distill_gateway_store_failures", "Failed writes to a store (the traffic database), "
                                    "each retried with the rows held", ["store"], registry=r)
        self.store_dropped = Gauge("distill_gateway_store_dropped", "Rows a store refused on their own (poison rows): "
                                   "dropped and counted, later rows are written", ["store"], registry=r)
        self.store_cleaned = Gauge("distill_gateway_store_cleaned", "Rows whose text was repaired before writing (lone "
                                   "surrogates, NUL -> U+FFFD)", ["store"], registry=r)
        self.refused = Counter("distill_gateway_refused", "Requests refused with a 4xx, by status", ["status"], registry=r)
        self.swaps = Counter("distill_gateway_swaps", "Adapter swaps after an alias moved", ["skill"], registry=r)
        self.teacher_share = Gauge("distill_gateway_teacher_share", "Share of a version's answers the teacher gave "
                                   "(lane escalate)", ["skill", "version"], registry=r)
        self.served_quality = Gauge("distill_gateway_served_agreement", "Live estimate of the served answers' "
                                    "agreement with the teacher: kept answers at the verify lane's agreement rate, "
                                    "escalated ones are the teacher's (bound: estimate | low | high, exact 95%)",
                                    ["skill", "version", "bound"], registry=r)
        self._totals: dict[str, list[int]] = {}
        self.lanes: dict[tuple[str, str], dict[str, int]] = {}  # (skill, version) -> lane -> answers

    def observe(self, skill: str, version, lane: str, seconds: float) -> None:
        v = str(version) if version is not None else "none"
        self.requests.labels(skill, v, lane).inc()
        self.latency.labels(skill, v, lane).observe(seconds)
        t = self._totals.setdefault(skill, [0, 0])
        t[0] += 1
        t[1] += lane in ("escalate", "degraded_escalate")
        self.escalation_rate.labels(skill).set(t[1] / t[0])
        c = self.lanes.setdefault((skill, v), {})
        c[lane] = c.get(lane, 0) + 1
        self.teacher_share.labels(skill, v).set(c.get("escalate", 0) / sum(c.values()))

    def lane_counts(self, skill: str, version) -> dict[str, int]:
        """Answers per lane of one version since the start (keep, escalate, degraded)."""
        return dict(self.lanes.get((skill, str(version) if version is not None else "none"), {}))

    def watch(self, name: str, depth: Callable[[], int], lost: Callable[[], int]) -> None:
        self.queue_depth.labels(name).set_function(depth)
        self.queue_lost.labels(name).set_function(lost)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
