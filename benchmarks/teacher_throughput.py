"""Teacher client throughput against a local OpenAI-compatible server that answers every
request after a fixed delay L, at concurrency C (ideal: C/L requests per second), in three
regimes: fault-free, 10% random 429/500 faults, and a real rate limit (a token bucket of R1
requests/s that answers 429 with Retry-After beyond it, raised to R2 mid-run; L = 150 ms there).

    python benchmarks/teacher_throughput.py [--quick] [--peers] [--repeats N]

Clients, each in every regime, runs interleaved, medians of `--repeats` (3; 1 with --quick):
- ours: `Teacher` (httpx, adaptive limit, cache off), plus the limiter's decrease factor and
  throttle tolerance swept (0.5 / 0.75 x 0 / 0.1) under faults and the rate limit;
- openai_gather: a plain `openai.AsyncOpenAI` + `asyncio.gather` loop (semaphore of C, the
  SDK's own retries);
- --peers: distilabel's `OpenAILLM` and curator's `LLM(backend="openai")` (benchmarks/
  peer_clients.py, in a subprocess of this interpreter or, for a peer not installed in it, of
  the one in DISTILL_PEERS_PYTHON / --peers-python; a peer found in neither is skipped with a
  line saying so). The JSON's "sdk" says what each client ran on.
Per run: requests/s as a fraction of C/L, client CPU per request, requests kept and lost; under
faults, the ratio to the same client's fault-free throughput; under the rate limit, the
converged throughput as a fraction of R1, the share of requests the server throttled (over the
run, and once converged), the time to reach 0.9 of R2 after the raise and the throughput after
it. Then a re-run with a warm cache
(zero requests may be sent). The server runs in its own process so its CPU time is not the
client's. One JSON line last. The embedded teacher's servers (llama.cpp, transformers) are
compared in benchmarks/teacher_backends.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import REPO, emit, setup

L_S = 0.05  # the server's fixed delay
C = 64  # requests in flight at most
FAULT_RATE = 0.10  # random 429/500 answers (half each)
# The rate-limit regime: a token bucket of RATE_1 requests/s raised to RATE_2, answers after L_RATE: R * L =
# 15 and 30 in flight, and rates well under what the client's CPU allows on 2 busy cores (so that the limiter,
# not the CPU, is measured). The bucket holds one round trip's worth (R * L requests).
RATE_1, RATE_2 = 100.0, 200.0
L_RATE = 0.15
MAX_RETRIES = 8
OURS = (0.75, 0.1)  # the shipped defaults (teachers/limits.py), checked below
VARIANTS = {"decrease_0.5_tolerance_0.1": (0.5, 0.1), "decrease_0.75_tolerance_0.1": (0.75, 0.1),
            "decrease_0.5_tolerance_0": (0.5, 0.0), "decrease_0.75_tolerance_0": (0.75, 0.0)}
PEERS = ("distilabel", "curator")
PEERS_VENV = REPO / ".venv-peers" / "bin" / "python"  # `make peers`
BIN_S = 0.25  # throughput bins for the recovery time
TEMPLATE = "Ticket: request number {i} about an invoice"


# --- the server (one process for the whole benchmark, reset before every run) ------------------------------------------

def start_server():
    from teachers.fakeserver import serve_in_process

    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve_in_process, args=(child, L_S), daemon=True)
    proc.start()
    port = parent.recv()
    return proc, f"http://127.0.0.1:{port}/v1"


def _root(base_url: str) -> str:
    return base_url[: -len("/v1")]


def server_stats(base_url: str, times: bool = False) -> dict:
    import httpx

    return httpx.get(_root(base_url) + "/stats", params={"times": "1"} if times else None, timeout=30).json()


def admin(base_url: str, path: str, body: dict) -> dict:
    import httpx

    return httpx.post(_root(base_url) + path, json=body, timeout=30).json()


class Raise(threading.Thread):
    """Raises the server's rate limit to `rate` `after_s` seconds after the run began: once the
    server has seen C/2 requests (a client may send one probe first: curator does)."""

    def __init__(self, base_url: str, after_s: float, rate: float):
        super().__init__(daemon=True)
        self.base_url, self.after_s, self.rate = base_url, after_s, rate
        self.stop = threading.Event()
        self.began: float | None = None  # the server's clock when the run began
        self.at: float | None = None  # ... and at the raise

    def run(self) -> None:
        while not self.stop.is_set():
            st = server_stats(self.base_url)
            if st["total"] >= C // 2:
                self.began = st["now"]
                break
            self.stop.wait(0.01)
        if not self.stop.wait(self.after_s):
            self.at = admin(self.base_url, "/admin/rate", {"rate": self.rate, "burst": self.rate * L_RATE})["now"]


# --- clients: each returns seconds, cpu_s, kept, lost (and what else it knows) -----------------------------------------

def ours(base_url: str, prompts: list[str], variant: tuple[float, float] = OURS, cache_path: Path | None = None,
         max_retries: int = MAX_RETRIES) -> dict:
    from teachers.base import Failure, Request
    from teachers.cache import ResponseCache
    from teachers.client import ClientSettings, Teacher
    from teachers.http import OpenAIBackend

    cache = ResponseCache(cache_path) if cache_path else None
    t = Teacher(OpenAIBackend(base_url, "fake", max_connections=C),
                ClientSettings(max_in_flight=C, max_retries=max_retries, backoff_base_s=0.05, max_error_rate=0.5,
                               limit_decrease=variant[0], throttle_tolerance=variant[1]), cache=cache)
    w0, c0 = time.perf_counter(), time.process_time()
    out = t.run([Request(prompt=p, max_tokens=16) for p in prompts])
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    if cache:
        cache.close()
    rep = t.report()
    lost = sum(isinstance(o, Failure) for o in out)
    return {"seconds": wall, "cpu_s": cpu, "kept": len(out) - lost, "lost": lost, "retries": rep["retries"],
            "cache_hits": rep["cache_hits"], "limiter": dict(t.limit_stats)}


def plain_openai(base_url: str, prompts: list[str]) -> dict:
    import openai

    async def main():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=MAX_RETRIES)
        sem = asyncio.Semaphore(C)

        async def one(p):
            async with sem:
                r = await client.completions.create(model="fake", prompt=p, max_tokens=16, temperature=0.0)
                return r.choices[0].text

        out = await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)
        await client.close()
        return out

    w0, c0 = time.perf_counter(), time.process_time()
    out = asyncio.run(main())
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    lost = sum(isinstance(o, BaseException) for o in out)
    return {"seconds": wall, "cpu_s": cpu, "kept": len(out) - lost, "lost": lost}


def peer_python(name: str, candidates: list[str]) -> str | None:
    """The first interpreter of `candidates` in which peer `name` imports; None if none."""
    mod = {"distilabel": "distilabel", "curator": "bespokelabs.curator"}[name]
    probe = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({mod.split('.')[0]!r}) else 1)"
    for py in candidates:
        if Path(py).exists() and subprocess.run([py, "-c", probe], capture_output=True).returncode == 0:
            return py
    return None


def peer(name: str, python: str, base_url: str, prompts: list[str]) -> dict:
    """One run of peer `name` in a subprocess of `python` (benchmarks/peer_clients.py)."""
    cmd = [python, str(REPO / "benchmarks" / "peer_clients.py"), "--peer", name, "--base-url", base_url,
           "--n", str(len(prompts)), "--concurrency", str(C), "--max-retries", str(MAX_RETRIES),
           "--template", TEMPLATE]  # prompts are TEMPLATE.format(i=i) there too
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}, timeout=600)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"peer {name} printed no result (exit {r.returncode}): {' | '.join(tail)}")
    return json.loads(lines[-1])


# --- one run, its figures, and the medians ---------------------------------------------------------------------------

def rate_figures(st: dict, began: float | None, raised_at: float | None, warm_s: float) -> dict:
    """From the server's answer times: throughput before the raise as a fraction of R1 (after
    `warm_s` of convergence), seconds from the raise to the first BIN_S bin at 0.9 of R2, and
    throughput from then to the end as a fraction of R2."""
    times = sorted(st.get("ok_times") or [])
    out = {"fraction_of_R": None, "throttled_share_converged": None, "recovery_s": None,
           "fraction_of_R_after_raise": None}
    if len(times) < 2 or began is None:
        return out
    first, last = began, times[-1]
    end1 = raised_at if raised_at is not None else last
    if end1 - first > warm_s + 0.5:
        n1 = sum(first + warm_s <= x < end1 for x in times)
        t1 = sum(first + warm_s <= x < end1 for x in st.get("limited_times") or [])
        out["fraction_of_R"] = round(n1 / (end1 - first - warm_s) / RATE_1, 3)
        out["throttled_share_converged"] = round(t1 / max(1, n1 + t1), 3)
    if raised_at is None:
        return out
    need = 0.9 * RATE_2 * BIN_S
    t, rec = raised_at, None
    while t + BIN_S <= last:
        if sum(t <= x < t + BIN_S for x in times) >= need:
            rec = t + BIN_S - raised_at
            break
        t += BIN_S
    out["recovery_s"] = round(rec, 2) if rec is not None else None
    start2 = raised_at + (rec if rec is not None else 1.0)
    end2 = last - BIN_S  # the last answers trickle in as the queue runs dry
    if end2 - start2 >= 0.5:
        out["fraction_of_R_after_raise"] = round(sum(start2 <= x < end2 for x in times) / (end2 - start2) / RATE_2, 3)
    return out


def one_run(base_url: str, regime: str, client, n: int, raise_after_s: float, warm_s: float) -> dict:
    """Reset the server for `regime`, run `client()` (which sends n requests) and measure it."""
    cfg = {"fault_free": {"delay_s": L_S}, "faults_10pct": {"fault_rate": FAULT_RATE, "seed": 0, "delay_s": L_S},
           "rate_limit": {"rate_limit": RATE_1, "burst": RATE_1 * L_RATE, "delay_s": L_RATE}}[regime]
    admin(base_url, "/admin/reset", cfg)
    raiser = Raise(base_url, raise_after_s, RATE_2) if regime == "rate_limit" else None
    if raiser:
        raiser.start()
    try:
        r = client()
    finally:
        if raiser:
            raiser.stop.set()
            raiser.join()
    if "skipped" in r:
        return r
    st = server_stats(base_url, times=regime == "rate_limit")
    rps = n / r["seconds"]
    m = {"requests": n, "seconds": round(r["seconds"], 3), "req_per_s": round(rps, 1),
         "fraction_of_ideal": round(rps / (C / L_S), 3),
         "client_cpu_ms_per_request": round(r["cpu_s"] / n * 1000, 3), "kept": r["kept"], "lost": r["lost"],
         "server_saw": st["total"]}
    if regime == "faults_10pct":
        m["injected"] = st["faults"]
    if regime == "rate_limit":
        m["throttled_share"] = round(st["rate_limited"] / max(1, st["total"]), 3)
        m.update(rate_figures(st, raiser.began, raiser.at, warm_s))
    for k in ("limiter", "retries", "sdk"):
        if k in r:
            m[k] = r[k]
    return m


def median_of(runs: list[dict]) -> dict:
    """Key by key: the median of numbers (a missing recovery_s counts as never), the first run's other values."""
    out: dict = {}
    for k, v in runs[0].items():
        vals = [r.get(k) for r in runs]
        if all(isinstance(x, dict) for x in vals):
            out[k] = median_of(vals)
        elif all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool)) for x in vals):
            nums = [float("inf") if x is None else x for x in vals] if k == "recovery_s" else [
                x for x in vals if x is not None]
            med = statistics.median(nums) if nums else None
            out[k] = None if med is None or med == float("inf") else round(med, 3) if isinstance(med, float) else med
        else:
            out[k] = v
    return out


def sdk_versions() -> dict:
    from importlib.metadata import version

    return {"ours": f"httpx {version('httpx')}", "openai_gather": f"openai {version('openai')}"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer requests, one repeat (same keys)")
    ap.add_argument("--peers", action="store_true", help="also run distilabel and curator (the `peers` extra)")
    ap.add_argument("--peers-python", default=os.environ.get("DISTILL_PEERS_PYTHON", str(PEERS_VENV)),
                    help="a second interpreter (a venv) for peers not installed in this one (default: "
                         "$DISTILL_PEERS_PYTHON, else .venv-peers from `make peers`); each peer runs in the first "
                         "of the two that has it")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved runs per client and regime (median)")
    args = ap.parse_args()
    setup()
    reps = args.repeats or (1 if args.quick else 3)
    n = C * (10 if args.quick else 40)
    n_faults = n // 2
    raise_after = 1.5 if args.quick else 3.0
    warm = 0.5 if args.quick else 1.0
    n_rate = int(RATE_1 * raise_after + RATE_2 * (1.0 if args.quick else 2.5))
    prompts = [TEMPLATE.format(i=i) for i in range(max(n, n_rate))]
    from teachers.limits import DECREASE, TOLERANCE

    assert (DECREASE, TOLERANCE) == OURS, "OURS must name the shipped defaults"
    skipped: dict = {}
    result: dict = {"benchmark": "teacher_throughput", "quick": args.quick, "L_ms": L_S * 1000, "C": C,
                    "ideal_req_per_s": C / L_S, "repeats": reps, "fault_rate": FAULT_RATE,
                    "rate_limit_req_per_s": [RATE_1, RATE_2], "rate_limit_L_ms": L_RATE * 1000,
                    "raise_after_s": raise_after,
                    "limiter": {"decrease": DECREASE, "tolerance": TOLERANCE}, "sdk": sdk_versions()}
    sizes = {"fault_free": n, "faults_10pct": n_faults, "rate_limit": n_rate}
    clients: dict = {"ours": lambda url, ps: ours(url, ps), "openai_gather": plain_openai}
    sweep = {name: (lambda v: lambda url, ps: ours(url, ps, variant=v))(v) for name, v in VARIANTS.items()
             if v != OURS}
    if args.peers:
        candidates = [sys.executable] + ([args.peers_python] if args.peers_python else [])
        for name in PEERS:
            py = peer_python(name, candidates)
            if py is None:
                skipped[name] = f"not installed in {' or '.join(candidates)}"
                print(f"peer {name} skipped: {skipped[name]} (pip install -e '.[peers]', or a separate venv "
                      "named by DISTILL_PEERS_PYTHON / --peers-python: see docs/teachers.md)", file=sys.stderr, flush=True)
                continue
            clients[name] = (lambda name, py: lambda url, ps: peer(name, py, url, ps))(name, py)
    proc, url = start_server()
    runs: dict = {}
    try:
        ours(url, prompts[: C * 2])  # warm-up: connections, imports
        plain_openai(url, prompts[: C * 2])
        for regime, size in sizes.items():
            todo = dict(clients)
            if regime != "fault_free":
                todo.update(sweep)
            for _ in range(reps):  # interleaved: every client once, then again
                for name, fn in todo.items():
                    if name in skipped:
                        continue
                    m = one_run(url, regime, lambda: fn(url, prompts[:size]), size, raise_after, warm)
                    if "skipped" in m:
                        skipped[name] = m["skipped"]
                        print(f"peer {name} skipped: {m['skipped']}", file=sys.stderr, flush=True)
                        continue
                    runs.setdefault(regime, {}).setdefault(name, []).append(m)
        for regime in sizes:
            result[regime] = {name: median_of(rs) for name, rs in runs.get(regime, {}).items() if name not in sweep}
        # the limiter's factor and tolerance, measured: ours under faults and the rate limit with each variant
        result["limiter_sweep"] = {}
        for regime in ("faults_10pct", "rate_limit"):
            rows = {}
            for vname, v in VARIANTS.items():
                m = result[regime]["ours"] if v == OURS else median_of(runs[regime][vname])
                keys = (["req_per_s", "lost"] if regime == "faults_10pct" else
                        ["fraction_of_R", "throttled_share", "throttled_share_converged", "recovery_s",
                         "fraction_of_R_after_raise", "lost"])
                rows[vname] = {k: m.get(k) for k in keys} | {
                    "cuts": m["limiter"]["cuts"], "median_in_flight": m["limiter"]["median_in_flight"]}
                if regime == "faults_10pct":
                    rows[vname]["vs_fault_free"] = round(m["req_per_s"] / result["fault_free"]["ours"]["req_per_s"], 3)
            result["limiter_sweep"][regime] = rows
        if not args.peers:
            result["sdk"]["peers"] = "not run (add --peers)"
        for name in PEERS:
            if args.peers and name in skipped:
                result["sdk"][name] = f"skipped: {skipped[name]}"
            elif args.peers and name in result["fault_free"]:
                result["sdk"][name] = result["fault_free"][name].pop("sdk", "")
                for regime in ("faults_10pct", "rate_limit"):
                    result[regime].get(name, {}).pop("sdk", None)
        ff = result["fault_free"]
        result["faults_vs_fault_free"] = {k: round(result["faults_10pct"][k]["req_per_s"] / ff[k]["req_per_s"], 3)
                                          for k in result["faults_10pct"] if k in ff}
        result["ours_vs"] = {regime: {k: round(result[regime]["ours"]["req_per_s"] / v["req_per_s"], 2)
                                      for k, v in result[regime].items() if k != "ours"} for regime in sizes}
        rl = result["rate_limit"]["ours"]
        result["targets"] = {
            "rate_limit_fraction_of_R>=0.9": (rl["fraction_of_R"] or 0) >= 0.9,
            "rate_limit_throttled_share<=0.1": rl["throttled_share"] <= 0.1,
            "faults_vs_fault_free>=0.5": result["faults_vs_fault_free"]["ours"] >= 0.5}
        with tempfile.TemporaryDirectory() as d:  # a re-run with a warm cache sends nothing
            cache = Path(d) / "teacher.sqlite"
            admin(url, "/admin/reset", {"fault_rate": FAULT_RATE, "seed": 1, "delay_s": L_S})
            ours(url, prompts[:n_faults], cache_path=cache)
            before = server_stats(url)["total"]
            rep = ours(url, prompts[:n_faults], cache_path=cache)
            result["warm_cache"] = {"requests": n_faults, "cache_hits": rep["cache_hits"],
                                    "requests_sent": server_stats(url)["total"] - before,
                                    "seconds": round(rep["seconds"], 3)}
    finally:
        proc.terminate()
    # the keys earlier versions printed
    result["ours"] = {k: v for k, v in result["fault_free"]["ours"].items() if k not in ("limiter", "retries")}
    result["baseline_openai_gather"] = result["fault_free"]["openai_gather"]
    result["throughput_vs_baseline"] = result["ours_vs"]["fault_free"]["openai_gather"]
    emit(result)


if __name__ == "__main__":
    main()
