"""The serving lane under load: the gateway's dynamic batching against a plain one-request-at-a-time
generate loop on the same model and adapter, its own overhead per request, and the escalation rate on
replay traffic against the rate the routing profile predicted. Prints one JSON line last.

    python benchmarks/gateway.py [--quick] [--clients 16] [--requests N]
    python benchmarks/gateway.py --soak [--quick] [--soak-requests N] [--soak-seconds M]

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

--soak (instead of 1-4): N requests spread over M seconds on loopback from `clients` threads, a mix
of valid requests (chat and completions, streamed and not, :predict, a version by number, text with
a NUL) and malformed ones from issue 32's list (a lone surrogate, empty and null content, non-text
parts, n=3, logprobs, stop, a bogus tool_choice, max_tokens below the answer, a body that is not
UTF-8, gzip, a chunked body over max_body_bytes, a non-ASCII wrong token, an unknown model, broken
JSON), with version 2 promoted half way. The fake OpenAI server is the teacher. It counts: valid
requests that failed (must be 0), valid answers without their traffic row (must be 0), malformed
requests that got anything but a 4xx (must be 0) or left a row (must be 0); the traffic writer's
cleaned and dropped rows. A temporary registry (the demo adapter published twice without --quick).
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


def _load(url: str, inputs: list[str], clients: int, models: list[str] | None = None,
          keep_latencies: bool = False) -> dict:
    """`clients` threads post every input once to /v1/completions (to `models` in turn, default the skill);
    wall time, latencies (ms), lanes."""
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
                    i, x = queue.pop()
                t0 = time.perf_counter()
                r = c.post(url + "/v1/completions", json={"model": models[i % len(models)] if models else SKILL,
                                                          "prompt": x})
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
    out = {"requests": len(inputs), "seconds": round(wall, 2), "req_per_s": round(len(inputs) / wall, 2),
           "p50_ms": _quantile(lat, 0.5), "p95_ms": _quantile(lat, 0.95), "lanes": lanes, "statuses": statuses}
    if keep_latencies:
        out["latencies"] = lat
    return out


def _plain_loop(lm, cfg, inputs: list[str], max_new_tokens: int) -> dict:
    """The baseline users write first: one generate() per request on the same base + adapter."""
    import torch

    from core.prompting import format_prompt

    model, tok = lm.model, lm.tokenizer
    lat = []
    t0 = time.perf_counter()
    for x in inputs:
        t1 = time.perf_counter()
        enc = tok(format_prompt(cfg, x), return_tensors="pt")
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                           top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                           stopping_criteria=lm._newline_stop())
        lat.append((time.perf_counter() - t1) * 1000)
    wall = time.perf_counter() - t0
    return {"requests": len(inputs), "seconds": round(wall, 2), "req_per_s": round(len(inputs) / wall, 2),
            "p50_ms": _quantile(lat, 0.5), "p95_ms": _quantile(lat, 0.95)}


def _engine_paths(lm, cfg, prompts: list[str], inputs: list[str], max_new: int, signal: str) -> dict:
    """In one process, same model, adapter and prompts, batches of 16: the least work any answer needs (one
    forward, logits at the last position only: the bound), the project's decode path now (teachers.greedy, with
    and without its prefix cache) and before (generate() with the grammar and confidence processors), and
    transformers' continuous batching
    (`generate_batch`, no grammar: it takes no per-request logits processor) as the peer engine."""
    import torch

    from eval_gates.predict import decode

    tok = lm.tokenizer
    chunks = [prompts[i:i + 16] for i in range(0, len(prompts), 16)]
    out = {}
    with torch.inference_mode(), lm._use(lm.default_adapter):
        lm.model(**tok(chunks[0][:2], return_tensors="pt", padding=True), logits_to_keep=1)  # warm-up
        t0 = time.perf_counter()
        for c in chunks:
            lm.model(**tok(c, return_tensors="pt", padding=True), logits_to_keep=1)
        out["prefill_bound"] = {"req_per_s": round(len(prompts) / (time.perf_counter() - t0), 2)}
    # One request alone (p50 of 12): its prefill, and the whole decode path (prefill, rounds, parsing).
    # The shared prompt prefix (the instruction and label list): how many of a prompt's tokens the prefix cache
    # spares the prefill.
    from teachers.greedy import common_prefix

    ids = [tok(p)["input_ids"] for p in prompts]
    shared = common_prefix(ids)
    out["prompt_tokens"] = {"mean": round(sum(map(len, ids)) / len(ids), 1), "shared_prefix": shared}
    cache = lm.prefixes
    single = {"prefill_ms": [], "greedy_path_ms": [], "greedy_path_no_prefix_cache_ms": [], "generate_path_ms": []}
    served_own = signal in ("mean_logprob", "min_logprob")  # as the gateway's engine decodes it
    for i in range(12, 16):  # a server's steady state: the prefix cache has seen a few requests
        decode(lm, cfg, [prompts[i % len(prompts)]], inputs=[inputs[i % len(inputs)]], max_new_tokens=max_new,
               signal=signal, own=served_own)
    for i in range(12):
        x, p1 = inputs[i % len(inputs)], prompts[i % len(prompts)]
        with torch.inference_mode(), lm._use(lm.default_adapter):
            t0 = time.perf_counter()
            lm.model(**tok([p1], return_tensors="pt"), logits_to_keep=1)
            single["prefill_ms"].append((time.perf_counter() - t0) * 1000)
        for name, kw in (("greedy_path_ms", {"own": served_own}), ("greedy_path_no_prefix_cache_ms", {"own": served_own}),
                         ("generate_path_ms", {"decoder": "generate"})):
            lm.prefixes = None if name == "greedy_path_no_prefix_cache_ms" else cache
            t0 = time.perf_counter()
            decode(lm, cfg, [p1], inputs=[x], max_new_tokens=max_new, signal=signal, **kw)
            single[name].append((time.perf_counter() - t0) * 1000)
        lm.prefixes = cache
    out["single_request_p50"] = {k: _quantile(v, 0.5) for k, v in single.items()}
    for name, kw in (("greedy_path", {"own": served_own}), ("greedy_path_no_prefix_cache", {"own": served_own}),
                     ("generate_path", {"decoder": "generate"})):
        lm.prefixes = None if name == "greedy_path_no_prefix_cache" else cache
        decode(lm, cfg, prompts[:2], inputs=inputs[:2], max_new_tokens=max_new, signal=signal)
        t0 = time.perf_counter()
        p = decode(lm, cfg, prompts, inputs=inputs, max_new_tokens=max_new, signal=signal, **kw)
        out[name] = {"req_per_s": round(len(prompts) / (time.perf_counter() - t0), 2),
                     "answers": p.raw if name == "greedy_path" else None}
    lm.prefixes = cache
    out["greedy_path_no_prefix_cache"]["share_of_bound"] = round(
        out["greedy_path_no_prefix_cache"]["req_per_s"] / out["prefill_bound"]["req_per_s"], 3)
    out["greedy_path"]["share_of_bound"] = round(out["greedy_path"]["req_per_s"] / out["prefill_bound"]["req_per_s"], 3)
    same = out["generate_path"].pop("answers") is None and decode(lm, cfg, prompts[:16], inputs=inputs[:16], max_new_tokens=max_new,
                                                                 signal=signal, decoder="generate").raw == out["greedy_path"]["answers"][:16]
    out["greedy_path"].pop("answers")
    out["greedy_matches_generate_first16"] = same
    try:
        from transformers import GenerationConfig

        merged = lm.model.merge_and_unload() if hasattr(lm.model, "merge_and_unload") else lm.model
        gc = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
        ids = [tok(p)["input_ids"] for p in prompts]
        merged.generate_batch(ids[:4], generation_config=gc, progress_bar=False)
        t0 = time.perf_counter()
        merged.generate_batch(ids, generation_config=gc, progress_bar=False)
        out["transformers_continuous_batching"] = {"req_per_s": round(len(prompts) / (time.perf_counter() - t0), 2),
                                                   "note": "merged adapter, no grammar, no confidence"}
    except Exception as e:  # the peer may not run on this CPU / version: say why
        out["transformers_continuous_batching"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
    return out


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

    def group(self, key):
        return "instant"

    def decode_mixed(self, jobs):
        return [self.decode(j[0], j[1], [j[2]], j[4])[0] for j in jobs]

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


def _soak_skill_root(work: Path, teacher_url: str) -> Path:
    """A copy of seeds/ whose ticket-triage teacher is the fake OpenAI server at `teacher_url`."""
    import shutil

    import yaml

    root = work / "seeds"
    shutil.copytree(REPO / "seeds", root)
    path = root / SKILL / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["teacher"] = {"backend": "openai", "base_url": teacher_url, "model": "fake", "endpoint": "completions",
                      "few_shot": 2, "cache": False, "max_retries": 1, "timeout_s": 10}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


def _soak_teacher(prompt: str, body: dict) -> str:
    last = prompt.rsplit("Ticket:", 1)[-1].lower()
    for word, label in (("charge", "billing"), ("refund", "billing"), ("crash", "bug"), ("error", "bug"),
                        ("password", "account"), ("login", "account"), ("feature", "feature_request")):
        if word in last:
            return label
    return "other"


TOKEN = "soak-token"


def _soak_requests(inputs: list[str], v2: int, big: int) -> list[tuple[str, str, dict]]:
    """(kind, "valid" | "malformed", httpx request kwargs) for one round of the mix."""
    import gzip

    auth = {"Authorization": f"Bearer {TOKEN}"}
    js = {**auth, "content-type": "application/json"}
    x = inputs[0]
    chat = {"model": SKILL, "messages": [{"role": "user", "content": x}]}

    def raw(text: str | bytes, headers=js):
        return {"method": "POST", "url": "/v1/chat/completions", "headers": headers,
                "content": text.encode() if isinstance(text, str) else text}

    def post(url, body, headers=auth):
        return {"method": "POST", "url": url, "headers": headers, "json": body}

    big_body = json.dumps({"model": SKILL, "prompt": "x" * big}).encode()
    return [
        ("chat", "valid", post("/v1/chat/completions", chat)),
        ("chat_stream", "valid", post("/v1/chat/completions", {**chat, "stream": True,
                                                                "stream_options": {"include_usage": True}})),
        ("completion", "valid", post("/v1/completions", {"model": SKILL, "prompt": inputs[1]})),
        ("completion_stream", "valid", post("/v1/completions", {"model": SKILL, "prompt": inputs[2], "stream": True})),
        ("predict", "valid", post(f"/v1/skills/{SKILL}:predict", {"inputs": inputs[3:5]})),
        ("version_by_number", "valid", post("/v1/completions", {"model": f"{SKILL}@{v2}", "prompt": inputs[5]})),
        ("nul_in_text", "valid", post("/v1/completions", {"model": SKILL, "prompt": "charged\x00 twice for one order"})),
        ("lone_surrogate", "malformed", raw(r'{"model": "%s", "messages": [{"role": "user", "content": '
                                            r'"charged twice \ud800 refund"}]}' % SKILL)),
        ("empty_content", "malformed", post("/v1/chat/completions", {**chat, "messages": [{"role": "user", "content": ""}]})),
        ("whitespace_content", "malformed", post("/v1/chat/completions",
                                                 {**chat, "messages": [{"role": "user", "content": " \n "}]})),
        ("null_text_part", "malformed", post("/v1/chat/completions", {**chat, "messages": [
            {"role": "user", "content": [{"type": "text", "text": None}]}]})),
        ("image_only", "malformed", post("/v1/chat/completions", {**chat, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]})),
        ("n_3", "malformed", post("/v1/chat/completions", {**chat, "n": 3})),
        ("logprobs", "malformed", post("/v1/chat/completions", {**chat, "logprobs": True})),
        ("stop", "malformed", post("/v1/chat/completions", {**chat, "stop": ["."]})),
        ("bogus_tool_choice", "malformed", post("/v1/chat/completions", {**chat, "tool_choice": "bogus"})),
        ("max_tokens_1", "malformed", post("/v1/chat/completions", {**chat, "max_tokens": 1})),
        ("not_utf8", "malformed", raw(('{"model": "%s", "prompt": "caf\xe9"}' % SKILL).encode("latin-1"))),
        ("gzip", "malformed", raw(gzip.compress(json.dumps(chat).encode()), {**js, "content-encoding": "gzip"})),
        ("chunked_oversize", "malformed", {"method": "POST", "url": "/v1/completions", "headers": js,
                                           "content": big_body, "chunked": True}),
        ("non_ascii_token", "malformed", post("/v1/chat/completions", chat, {"Authorization": "Bearer tok-é".encode()})),
        ("unknown_model", "malformed", post("/v1/chat/completions", {**chat, "model": "no-such-skill"})),
        ("broken_json", "malformed", raw('{"model": ')),
    ]


def soak(args) -> None:
    """--soak: see the module docstring. Prints one JSON line; exits 1 when a count that must be 0 is not."""
    import os
    import random

    import httpx
    import sqlalchemy as sa

    from gateway.app import InThread
    from gateway.config import GatewayConfig
    from registry import Registry
    from teachers.fakeserver import FakeOpenAIServer

    n = args.soak_requests or (150 if args.quick else 600)
    seconds = args.soak_seconds or (20.0 if args.quick else 120.0)
    fake = FakeOpenAIServer(answer=_soak_teacher).start()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["DISTILL_SEEDS_DIR"] = str(_soak_skill_root(work, fake.base_url))
        if args.quick:
            registry, folder = _quick_registry(work)
        else:
            from core.workdir import registry_root

            src = Registry(os.environ.get("DISTILL_REGISTRY") or str(registry_root()))
            try:
                demo = src.resolve(SKILL)
            except Exception as e:
                raise SystemExit(f"no production version of {SKILL} ({e}); run `make demo` first, or pass --quick") from None
            registry = str(work / "registry")
            info = src.show(SKILL)
            Registry(registry).publish(SKILL, demo, metrics=info["metrics"], lineage=info["lineage"],
                                       routing=info["routing"], skill_spec=info["skill"],
                                       model_card="---\nlibrary_name: peft\n---\n", alias="production")
            folder = Registry(registry).resolve(SKILL)
        reg = Registry(registry)
        info = reg.show(SKILL)
        v2 = reg.publish(SKILL, folder, metrics=info["metrics"], lineage={"run_id": "soak-v2"}, routing=info["routing"],
                         skill_spec=info["skill"], model_card="---\nlibrary_name: peft\n---\n", alias=None)
        os.environ["SOAK_TOKENS"] = TOKEN
        cfg = GatewayConfig(registry=registry, skills=[SKILL], port=0, poll_s=0.5, teacher_timeout_s=30,
                            traffic_url=f"sqlite:///{work / 'soak.db'}", traffic_flush_ms=50, max_body_bytes=64_000,
                            auth_tokens_env="SOAK_TOKENS", max_batch=16, max_wait_ms=5.0)
        skill = __import__("core.skills", fromlist=["load_skill"]).load_skill(SKILL, root=REPO / "seeds")
        pool = [e.input for e in skill.eval_set]
        rng = random.Random(0)
        srv = InThread(cfg)
        results: list[dict] = []
        lock = threading.Lock()
        t0 = time.monotonic()
        schedule = []
        while len(schedule) < n:
            mix = _soak_requests(rng.sample(pool, 6), v2, 100_000)
            schedule += [m for m in mix if m[1] == "valid"] * 2 + mix  # about half valid
        schedule = schedule[:n]
        rng.shuffle(schedule)
        nxt = iter(enumerate(schedule))
        promoted = {"at_s": None}

        def send(c: httpx.Client, req: dict) -> httpx.Response:
            req = dict(req)
            if req.pop("chunked", False):
                data = req.pop("content")
                req["content"] = iter([data[i: i + 8192] for i in range(0, len(data), 8192)])
            return c.request(**req)

        def worker():
            with httpx.Client(base_url=srv.url, timeout=120) as c:
                while True:
                    with lock:
                        item = next(nxt, None)
                    if item is None:
                        return
                    i, (kind, klass, req) = item
                    wait = t0 + i * seconds / n - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    if i == n // 2:
                        reg.promote(SKILL, v2, reason="soak")
                        promoted["at_s"] = round(time.monotonic() - t0, 2)
                    t = time.perf_counter()
                    try:
                        r = send(c, req)
                        body = r.text
                        status, ids = r.status_code, [x for x in r.headers.get("x-distill-request-id", "").split(",") if x]
                        version = r.headers.get("x-distill-version")
                    except httpx.HTTPError as e:
                        status, ids, body, version = f"{type(e).__name__}", [], "", None
                    ok_stream = not req.get("json", {}).get("stream") or body.rstrip().endswith("data: [DONE]")
                    with lock:
                        results.append({"kind": kind, "class": klass, "status": status, "ids": ids, "version": version,
                                        "ms": (time.perf_counter() - t) * 1000, "stream_ok": ok_stream})

        try:
            threads = [threading.Thread(target=worker) for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - t0
            srv.gateway.traffic.flush(60)
            tw = srv.gateway.traffic
            traffic = {"written": tw.written, "cleaned": tw.cleaned, "dropped": tw.dropped, "lost": tw.lost}
        finally:
            srv.stop()
            fake.stop()
        engine = sa.create_engine(cfg.traffic_url)
        with engine.connect() as conn:
            rows = {r[0]: r[1] for r in conn.execute(sa.text(f"select id, request from {cfg.table_for(SKILL)}"))}
        engine.dispose()

    valid = [r for r in results if r["class"] == "valid"]
    bad = [r for r in results if r["class"] == "malformed"]
    valid_ids = {i for r in valid for i in r["ids"]}
    by_kind: dict[str, dict[str, int]] = {}
    for r in results:
        k = by_kind.setdefault(r["kind"], {})
        k[str(r["status"])] = k.get(str(r["status"]), 0) + 1
    counts = {
        "valid_sent": len(valid),
        "valid_failed": sum(r["status"] != 200 or not r["stream_ok"] for r in valid),
        "valid_rows_missing": len(valid_ids - set(rows)),
        "malformed_sent": len(bad),
        "malformed_not_4xx": sum(not (isinstance(r["status"], int) and 400 <= r["status"] < 500) for r in bad),
        "malformed_rows": len(set(rows) - valid_ids),
        "rows": len(rows),
        "rows_not_utf8_text": sum(1 for v in rows.values() if "\x00" in v or any(0xD800 <= ord(ch) <= 0xDFFF for ch in v)),
    }
    lat = [r["ms"] for r in valid]
    ok = all(counts[k] == 0 for k in ("valid_failed", "valid_rows_missing", "malformed_not_4xx", "malformed_rows",
                                      "rows_not_utf8_text")) and traffic["lost"] == 0
    emit({"benchmark": "gateway_soak", "quick": args.quick, "ok": ok, "requests": n, "seconds_asked": seconds,
          "seconds": round(wall, 2), "clients": args.clients, "promoted_v2_at_s": promoted["at_s"],
          "versions_served": sorted({v for r in valid if r["version"] for v in r["version"].split(",")}),
          **counts, "traffic": traffic, "valid_p50_ms": _quantile(lat, 0.5), "valid_p95_ms": _quantile(lat, 0.95),
          "by_kind": by_kind})
    if not ok:
        raise SystemExit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random model (under a minute)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=None, help="requests per pass (default 64 quick, 128 full)")
    ap.add_argument("--soak", action="store_true", help="valid and malformed requests with a promote half way (see above)")
    ap.add_argument("--soak-requests", type=int, default=None, help="soak: requests (default 150 quick, 600 full)")
    ap.add_argument("--soak-seconds", type=float, default=None, help="soak: seconds to spread them over (20 quick, 120)")
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # the child of _in_child
    args = ap.parse_args()
    setup()
    if args.in_process:
        _in_process_part()
        return
    if args.soak:
        soak(args)
        return

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
        signal = routing.get("signal") or "mean_logprob"

        # In-process figures (the plain loop, the decode paths, the peer) come from a child process: torch work
        # run in one thread of a process slowed the torch work of another thread after it (a single decode
        # 90 -> 180 ms, measured), so the gateway here, like `distill gateway`, runs torch in its batcher only.
        engine, plain = _in_child(folder, inputs, n, max_new, signal)

        # A second version of the skill (the same adapter published again: a second adapter on the base) for the
        # mixed load: half the requests to each.
        reg2 = work / "registry2"
        import shutil

        shutil.copytree(Path(registry) / SKILL, reg2 / SKILL)
        Registry(str(reg2)).publish(SKILL, folder, metrics={"eval": {}}, lineage={"run_id": "bench-mixed"},
                                    routing=routing, skill_spec=spec, model_card="---\nlibrary_name: peft\n---\n",
                                    alias=None, reason="benchmarks/gateway.py: a second adapter for the mixed load")
        clients = sorted({1, 4, args.clients})
        gcfg = GatewayConfig(registry=str(reg2), skills=[SKILL], teachers=False, port=0, poll_s=3600,
                             traffic_url=f"sqlite:///{work / 'traffic.db'}", max_batch=16, max_wait_ms=5.0)
        versions = sorted(int(p.name) for p in (reg2 / SKILL / "versions").iterdir() if p.name.isdigit())
        loads = {}
        srv = InThread(gcfg)
        try:
            _load(srv.url, inputs[: args.clients], args.clients)  # warm-up
            for k in clients:
                loads[k] = _load(srv.url, inputs[: max(16, n * k // args.clients)] if k < args.clients else inputs, k)
            escalation = _load(srv.url, traffic, args.clients)
            mixed = None
            if len(versions) >= 2:
                refs = [f"{SKILL}@{versions[-1]}", f"{SKILL}@{versions[-2]}"]
                mixed = _load(srv.url, inputs, args.clients, models=refs)
                mixed["models"] = refs
        finally:
            srv.stop()
        overhead = _overhead(gcfg, work, inputs)
        bound = engine["prefill_bound"]["req_per_s"]
        for v in [*loads.values(), *([mixed] if mixed else [])]:
            v["share_of_bound"] = round(v["req_per_s"] / bound, 3)

    kept = escalation["lanes"].get("keep", 0)
    emit({"benchmark": "gateway", "quick": args.quick, "model": "tiny random Gemma 3" if args.quick else spec.get(
              "base_model"), "clients": args.clients, "requests": n, "signal": signal,
          "engine": engine, "plain_loop": plain,
          "gateway": {f"{k}_clients": v for k, v in loads.items()}, "mixed_versions": mixed,
          "keep_share_of_bound_at_max_clients": loads[args.clients]["share_of_bound"],
          "throughput_ratio_vs_plain_loop": round(loads[args.clients]["req_per_s"] / plain["req_per_s"], 2),
          "overhead_per_request_ms": overhead,
          "escalation": {"measured_on_traffic": round(1 - kept / len(traffic), 4), "traffic_requests": len(traffic),
                         "lanes": escalation["lanes"], "predicted_by_routing_json": routing.get("escalation_rate"),
                         "routing_mode": routing.get("mode"), "threshold": routing.get("threshold")}})


def _in_child(folder, inputs: list[str], n: int, max_new: int, signal: str) -> tuple[dict, dict]:
    """(engine paths, plain loop) measured by `python benchmarks/gateway.py --in-process FOLDER` in a child."""
    import subprocess
    import sys

    job = json.dumps({"folder": str(folder), "inputs": inputs, "n": n, "max_new": max_new, "signal": signal})
    env = {k: v for k, v in __import__("os").environ.items() if k != "DISTILL_BENCH_RECORD"}
    out = subprocess.run([sys.executable, __file__, "--in-process"], input=job, capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"the in-process measurements failed:\n{out.stderr[-3000:]}")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["engine"], got["plain"]


def _in_process_part() -> None:
    """The child of _in_child: reads its job (JSON) on stdin, prints {"engine", "plain"} as one JSON line."""
    import sys

    from core.prompting import render_prompt
    from registry.consumer import base_model_of, read_spec, skill_config
    from teachers.local import LocalModel
    from trainers.base_model import resolve_model

    job = json.loads(sys.stdin.read())
    folder, inputs, n, max_new, signal = job["folder"], job["inputs"], job["n"], job["max_new"], job["signal"]
    cfg = skill_config(read_spec(folder), SKILL)
    # The same base, adapter and dtype rule the gateway's engine loads.
    lm = LocalModel(resolve_model(base_model_of(folder), "base_model"), adapter_path=str(folder), safetensors_only=True)
    prompts = [render_prompt(cfg, x, lm.tokenizer) for x in inputs]
    plain = _plain_loop(lm, cfg, inputs[: max(8, n // 8)], max_new)
    # transformers' continuous-batching peer runs last in _engine_paths: it leaves threads behind.
    engine = _engine_paths(lm, cfg, prompts, inputs, max_new, signal)
    print(json.dumps({"engine": engine, "plain": plain}), flush=True)


def _overhead(gcfg, work: Path, inputs: list[str]) -> dict:
    """The gateway's own cost per request: an engine that answers at once, one client, no batching wait."""
    from gateway.app import InThread
    from gateway.service import Gateway

    ocfg = gcfg.model_copy(update={"max_wait_ms": 0.0, "traffic_url": f"sqlite:///{work / 'traffic2.db'}"})
    osrv = InThread(ocfg, Gateway(ocfg, engine=_InstantEngine()))
    try:
        _load(osrv.url, inputs[:16], 1)
        o = _load(osrv.url, (inputs * 4)[:400], 1, keep_latencies=True)
    finally:
        osrv.stop()
    floor = _http_floor(inputs)
    return {"p50": o["p50_ms"], "p99": _quantile(o.pop("latencies"), 0.99), "requests": o["requests"],
            "http_floor": floor,
            "added_over_http_floor": {"p50": round(o["p50_ms"] - floor["p50"], 3)}}


def _http_floor(inputs: list[str]) -> dict:
    """The least an HTTP answer costs here, with the same client and server stack: a FastAPI route under uvicorn
    on loopback that parses the same body into a dict and returns a completion-sized JSON, nothing else. The
    gateway's own overhead is what it adds to this (the client's time is in both)."""
    import socket

    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/completions")
    async def complete(body: dict):
        return {"id": "cmpl-0", "object": "text_completion", "created": 0, "model": body.get("model"),
                "choices": [{"index": 0, "text": " billing", "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as InThread
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        _load(url, inputs[:16], 1)
        o = _load(url, (inputs * 4)[:400], 1, keep_latencies=True)
    finally:
        server.should_exit = True
        t.join(timeout=30)
    return {"p50": o["p50_ms"], "p99": _quantile(o.pop("latencies"), 0.99)}


if __name__ == "__main__":
    main()
