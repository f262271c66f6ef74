"""Teacher client throughput against a local OpenAI-compatible server that answers every
request after a fixed delay L, at concurrency C (ideal: C/L requests per second).

    python benchmarks/teacher_throughput.py [--quick] [--embedded]

Measures, in the same run: our `Teacher` (httpx.AsyncClient, AIMD limit, cache off) and a
plain `openai.AsyncOpenAI` + `asyncio.gather` loop (semaphore of C) as the baseline:
throughput as a fraction of C/L and client CPU time per request. Then 10% injected 429/500
faults (zero requests may be lost) and a re-run with a warm cache (zero requests may be sent).
--embedded adds the embedded teacher: the same self-instruct and label prompts through the
llama.cpp server and through transformers' generate (greedy answers compared).
The server runs in its own process so its CPU time is not the client's. One JSON line last.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from _common import emit, setup

L_S = 0.05  # the fixed delay
C = 64  # the concurrency


def start_server(fault_rate: float = 0.0):
    from teachers.fakeserver import serve_in_process

    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve_in_process, args=(child, L_S, fault_rate, 0), daemon=True)
    proc.start()
    port = parent.recv()
    return proc, f"http://127.0.0.1:{port}/v1"


def server_total(base_url: str) -> int:
    import httpx

    return httpx.get(base_url.replace("/v1", "/stats")).json()["total"]


def measure(fn, n: int) -> dict:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    rps = n / wall
    return {"requests": n, "seconds": round(wall, 3), "req_per_s": round(rps, 1),
            "fraction_of_ideal": round(rps / (C / L_S), 3), "client_cpu_ms_per_request": round(cpu / n * 1000, 3),
            "_out": out}


def ours(base_url: str, prompts: list[str], cache_path: Path | None = None, max_retries: int = 4):
    from teachers.base import Request
    from teachers.cache import ResponseCache
    from teachers.client import ClientSettings, Teacher
    from teachers.http import OpenAIBackend

    cache = ResponseCache(cache_path) if cache_path else None
    t = Teacher(OpenAIBackend(base_url, "fake", max_connections=C),
                ClientSettings(max_in_flight=C, max_retries=max_retries, backoff_base_s=0.05, max_error_rate=0.5),
                cache=cache)
    t.run([Request(prompt=p, max_tokens=16) for p in prompts])
    if cache:
        cache.close()
    return t.report()


def plain_openai(base_url: str, prompts: list[str]):
    import openai

    async def main():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
        sem = asyncio.Semaphore(C)

        async def one(p):
            async with sem:
                r = await client.completions.create(model="fake", prompt=p, max_tokens=16, temperature=0.0)
                return r.choices[0].text

        out = await asyncio.gather(*(one(p) for p in prompts))
        await client.close()
        return out

    return asyncio.run(main())


def embedded(n: int) -> dict:
    """The same 8 self-instruct + 8 label prompts through llama.cpp's server and transformers."""
    from core.skills import load_skill
    from teachers.base import Request
    from teachers.client import ClientSettings, Teacher
    from teachers.http import OpenAIBackend
    from teachers.llama_server import bundled_gguf, llama_cpp_available, llama_server
    from teachers.local import LocalBackend, LocalModel
    from teachers.strategies import _answer_prompts, style_prompt
    from trainers.base_model import resolve_model

    skill = load_skill("ticket-triage")
    import random

    rng = random.Random(0)
    style = [style_prompt(skill, rng.sample(skill.seeds, 4)) for _ in range(n)]
    label_prompts, _ = _answer_prompts(skill, skill.eval_set[:n], 0)
    si = [Request(prompt=p, max_tokens=30, temperature=0.0) for p in style]
    lab = [Request(prompt=p, max_tokens=8, temperature=0.0) for p in label_prompts]
    out: dict = {"prompts": n}
    answers = {}
    if llama_cpp_available():
        with llama_server(bundled_gguf()) as url:
            t = Teacher(OpenAIBackend(url, "gemma", max_connections=2), ClientSettings(max_in_flight=2), cache=None)
            for name, reqs in (("self_instruct", si), ("label", lab)):
                t0 = time.perf_counter()
                res = t.run(reqs)
                out[f"llama_cpp_{name}_s"] = round(time.perf_counter() - t0, 2)
                answers[("llama", name)] = [r.text.strip() for r in res]
    else:
        out["llama_cpp"] = "not installed"
    model = LocalModel(resolve_model("bundled:gemma-3-270m"), name="gemma")
    t = Teacher(LocalBackend(model), ClientSettings(batch_size=n), cache=None)
    for name, reqs in (("self_instruct", si), ("label", lab)):
        t0 = time.perf_counter()
        res = t.run(reqs)
        out[f"transformers_{name}_s"] = round(time.perf_counter() - t0, 2)
        answers[("hf", name)] = [r.text.strip() for r in res]
    for name in ("self_instruct", "label"):
        if ("llama", name) in answers:
            out[f"speedup_{name}"] = round(out[f"transformers_{name}_s"] / out[f"llama_cpp_{name}_s"], 2)
            same = sum(a == b for a, b in zip(answers[("llama", name)], answers[("hf", name)]))
            out[f"identical_greedy_{name}"] = f"{same}/{n}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer requests (same keys)")
    ap.add_argument("--embedded", action="store_true", help="also time llama.cpp vs transformers (slow on CPU)")
    args = ap.parse_args()
    setup()
    n = C * (10 if args.quick else 40)
    prompts = [f"Ticket: request number {i} about an invoice" for i in range(n)]
    result: dict = {"benchmark": "teacher_throughput", "quick": args.quick, "L_ms": L_S * 1000, "C": C,
                    "ideal_req_per_s": C / L_S}
    proc, url = start_server()
    try:
        ours(url, prompts[: C * 2])  # warm-up: connections, imports
        plain_openai(url, prompts[: C * 2])
        m = measure(lambda: ours(url, prompts), n)
        m.pop("_out")
        result["ours"] = m
        b = measure(lambda: plain_openai(url, prompts), n)
        b.pop("_out")
        result["baseline_openai_gather"] = b
        result["throughput_vs_baseline"] = round(m["req_per_s"] / b["req_per_s"], 3)
    finally:
        proc.terminate()
    proc, url = start_server(fault_rate=0.10)
    try:
        with tempfile.TemporaryDirectory() as d:
            cache = Path(d) / "teacher.sqlite"
            nf = n // 2
            before = server_total(url)
            rep = ours(url, prompts[:nf], cache_path=cache, max_retries=8)
            sent = server_total(url) - before
            result["faults_10pct"] = {"requests": nf, "kept": rep["kept"], "lost": nf - rep["kept"],
                                      "failures": rep["failures"], "retries": rep["retries"], "server_saw": sent,
                                      "seconds": rep["seconds"]}
            before = server_total(url)
            rep = ours(url, prompts[:nf], cache_path=cache)
            result["warm_cache"] = {"requests": nf, "cache_hits": rep["cache_hits"],
                                    "requests_sent": server_total(url) - before, "seconds": rep["seconds"]}
    finally:
        proc.terminate()
    if args.embedded:
        result["embedded"] = embedded(8)
    emit(result)


if __name__ == "__main__":
    main()
