"""The serving lane under load: the gateway's dynamic batching against a plain one-request-at-a-time
generate loop on the same model and adapter, its own overhead per request, and the escalation rate on
replay traffic against the rate the routing profile predicted. Prints one JSON line last.

    python benchmarks/gateway.py [--quick] [--clients 16] [--requests N]

Full size: the bundled Gemma 3 270M with the ticket-triage demo adapter (the production version in
the registry `make demo` wrote; DISTILL_REGISTRY or .distill/registry). --quick: a tiny random
Gemma 3 and a LoRA adapter trained a few steps on the seeds, published to a temporary registry, with a routing profile built the way
the eval gates build it (decode confidences on eval items, routing_threshold).

1. plain loop (the baseline): the same base + adapter the engine loads (teachers.local.LocalModel,
   same dtype) and `generate()` per request, greedy, one at a time, in this process.
2. gateway: `distill gateway`'s app under uvicorn on loopback, `clients` threads posting
   /v1/completions at once; throughput, p50/p95 latency, lanes. No teacher (escalations come back
   `degraded` or 503), so the keep lane's cost is what is measured.
3. overhead: the same app with an engine that answers instantly (a stub: the decode is what it
   removes), one client, no batching wait: routing, validation, traffic capture and HTTP per request.
4. escalation: the share of the skill's traffic.jsonl requests not kept, against routing.json's
   escalation_rate.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from _common import REPO, emit, setup

SKILL = "ticket-triage"


def _quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))], 2)


def _load(url: str, inputs: list[str], clients: int) -> dict:
    """`clients` threads post every input once to /v1/completions; wall time, latencies, lanes."""
    import httpx

    lat: list[float] = []
    lanes: dict[str, int] = {}
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    queue = list(enumerate(inputs))

    def worker():
        with httpx.Client(timeout=600) as c:
            while True:
                with lock:
                    if not queue:
                        return
                    _, x = queue.pop()
                t0 = time.perf_counter()
                r = c.post(url + "/v1/completions", json={"model": SKILL, "prompt": x})
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    lat.append(dt)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    lane = r.headers.get("x-distill-lane", f"http_{r.status_code}")
                    lanes[lane] = lanes.get(lane, 0) + 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"requests": len(inputs), "seconds": round(wall, 2), "req_per_s": round(len(inputs) / wall, 2),
            "p50_ms": _quantile(lat, 0.5), "p95_ms": _quantile(lat, 0.95), "lanes": lanes, "statuses": statuses}


def _plain_loop(folder: Path, cfg, inputs: list[str], max_new_tokens: int) -> dict:
    """The baseline: one generate() per request on the same base + adapter."""
    import torch

    from core.prompting import format_prompt
    from registry.consumer import base_model_of
    from teachers.local import LocalModel
    from trainers.base_model import resolve_model

    # The same base, adapter and dtype rule the gateway's engine loads; only the batching differs.
    lm = LocalModel(resolve_model(base_model_of(folder), "base_model"), adapter_path=str(folder),
                    safetensors_only=True)
    model, tok = lm.model, lm.tokenizer
    lat = []
    t0 = time.perf_counter()
    for x in inputs:
        t1 = time.perf_counter()
        enc = tok(format_prompt(cfg, x), return_tensors="pt")
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                           top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           stop_strings=["\n"], tokenizer=tok)
        lat.append((time.perf_counter() - t1) * 1000)
    wall = time.perf_counter() - t0
    return {"requests": len(inputs), "seconds": round(wall, 2), "req_per_s": round(len(inputs) / wall, 2),
            "p50_ms": _quantile(lat, 0.5), "p95_ms": _quantile(lat, 0.95)}


class _InstantEngine:
    """Answers every prompt at once with a fixed valid label (what the overhead pass removes is the model)."""

    def load(self, key, folder, spec):
        self.label = (spec.get("labels") or ["x"])[0]

    def unload(self, key):
        pass

    def tokenizer(self, key):
        return None  # skill-template prompts need none

    def decode(self, key, cfg, prompts, max_new_tokens, inputs=None, **kw):
        from gateway.engine import Answer

        return [Answer(raw=f" {self.label}", parsed=self.label, confidence=0.0, finish_reason="stop") for _ in prompts]

    def close(self):
        pass


def _quick_registry(work: Path) -> tuple[str, Path]:
    """A tiny Gemma 3, a LoRA adapter on it, and a routing profile from decode confidences, published."""
    from core.skills import load_skill
    from core.tasks import get_task
    from eval_gates.predict import predict
    from eval_gates.routing import routing_threshold
    from registry import Registry
    from registry.stage import skill_spec
    from teachers.local import LocalModel
    from tests.tiny_models import build_tiny_model, train_label_adapter

    skill = load_skill(SKILL, root=REPO / "seeds")
    corpus = [f"Ticket: {e.input}\nTeam: {e.output}\n" for e in skill.seeds + skill.eval_set]
    base = str(build_tiny_model(work / "tiny", corpus))
    adapter = train_label_adapter(base, work / "adapter")  # a few steps: its answers are labels (the keep lane)
    cfg = skill.config.model_copy(deep=True)
    cfg.student.base_model = base
    items = skill.eval_set[:40]
    preds = predict(LocalModel(base, adapter_path=str(adapter)), cfg, [e.input for e in items])
    task = get_task(cfg)
    scores = [task.score(e, p) for e, p in zip(items, preds.preds)]
    profile = routing_threshold(preds.confidences, [task.is_correct(s) for s in scores],
                                [s.get("valid", 1.0) > 0 for s in scores], cfg.routing.target_error_rate).to_dict()
    reg = Registry(str(work / "registry"))
    reg.publish(SKILL, adapter, metrics={"eval": {}}, lineage={"run_id": "bench"}, routing=profile,
                skill_spec=skill_spec(cfg), model_card="---\nlibrary_name: peft\n---\n", alias="production")
    return str(work / "registry"), reg.resolve(SKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random model (under a minute)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=None, help="requests per pass (default 64 quick, 128 full)")
    args = ap.parse_args()
    setup()

    from core.skills import load_skill
    from gateway.app import InThread
    from gateway.config import GatewayConfig
    from gateway.service import Gateway
    from registry import Registry
    from registry.consumer import read_spec, skill_config

    n = args.requests or (64 if args.quick else 128)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.quick:
            registry, folder = _quick_registry(work)
        else:
            import os

            from core.workdir import registry_root

            registry = os.environ.get("DISTILL_REGISTRY") or str(registry_root())
            try:
                folder = Registry(registry).resolve(SKILL)
            except Exception as e:
                raise SystemExit(f"no production version of {SKILL} in {registry} ({e}); run `make demo` first, "
                                 f"or pass --quick") from None
        spec = read_spec(folder)
        cfg = skill_config(spec, SKILL)
        routing = json.loads((Path(folder) / "routing.json").read_text())
        skill = load_skill(SKILL, root=REPO / "seeds")
        traffic = [json.loads(line)["request"] for line in (skill.folder / "traffic.jsonl").read_text().splitlines()
                   if line.strip()]
        inputs = [(traffic + [e.input for e in skill.eval_set])[i % (len(traffic) + len(skill.eval_set))]
                  for i in range(n)]
        max_new = int(spec.get("max_new_tokens") or 8)

        plain = _plain_loop(Path(folder), cfg, inputs, max_new)
        gcfg = GatewayConfig(registry=registry, skills=[SKILL], teachers=False, port=0, poll_s=3600,
                             traffic_url=f"sqlite:///{work / 'traffic.db'}", max_batch=16, max_wait_ms=5.0)
        srv = InThread(gcfg)
        try:
            _load(srv.url, inputs[: args.clients], args.clients)  # warm-up: the first batch pays for compilation
            batched = _load(srv.url, inputs, args.clients)
            escalation = _load(srv.url, traffic, args.clients)
        finally:
            srv.stop()
        ocfg = gcfg.model_copy(update={"max_wait_ms": 0.0, "traffic_url": f"sqlite:///{work / 'traffic2.db'}"})
        osrv = InThread(ocfg, Gateway(ocfg, engine=_InstantEngine()))
        try:
            _load(osrv.url, inputs[:8], 1)
            overhead = _load(osrv.url, inputs, 1)
        finally:
            osrv.stop()

    kept = escalation["lanes"].get("keep", 0)
    emit({"benchmark": "gateway", "quick": args.quick, "model": "tiny random Gemma 3" if args.quick else spec.get(
              "base_model"), "clients": args.clients, "requests": n,
          "plain_loop": plain, "gateway": batched,
          "throughput_ratio": round(batched["req_per_s"] / plain["req_per_s"], 2),
          "overhead_per_request_ms": {"p50": overhead["p50_ms"], "p95": overhead["p95_ms"]},
          "escalation": {"measured_on_traffic": round(1 - kept / len(traffic), 4), "traffic_requests": len(traffic),
                         "lanes": escalation["lanes"], "predicted_by_routing_json": routing.get("escalation_rate"),
                         "routing_mode": routing.get("mode"), "threshold": routing.get("threshold")}})


if __name__ == "__main__":
    main()
