"""One run of a peer's OpenAI client against an OpenAI-compatible server, for
benchmarks/teacher_throughput.py --peers. Prints one JSON line: seconds, cpu_s, kept, lost,
sdk (what it ran on), or {"skipped": why} when the peer is not installed in this interpreter.

    python benchmarks/peer_clients.py --peer distilabel|curator --base-url URL --n N
        [--concurrency C] [--max-retries R] [--template "... {i} ..."]

Standalone on purpose (no project imports): it may run in a separate venv that holds a peer
whose pins conflict with the project's (curator pins datasets<4; the project pins 5.2.0).

How each peer is driven, as its users would:
- distilabel: `OpenAILLM(base_url=..., max_retries=R)` (an `openai.AsyncOpenAI` with the SDK's
  retries); `generate_outputs` on batches of C inputs, which is what a `TextGeneration` step
  with `input_batch_size=C` does per batch (all of a batch at once, the next batch after the
  slowest answer). A batch that raises is lost whole, as a distilabel step loses it.
- curator: `LLM(backend="openai", backend_params={max_concurrent_requests: C, max_retries: R,
  ...})`, which posts to /chat/completions through aiohttp with its own retry queue; RPM/TPM
  budgets set far above the server's capacity so that only C limits it; cache off.
Wall and CPU time cover the generation only (not imports or set-up).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version


def _v(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "absent"


def run_distilabel(args, prompts: list[str]) -> dict:
    try:
        from distilabel.models.llms import OpenAILLM
    except ImportError as e:
        return {"skipped": f"distilabel (with openai) is not installed in {sys.executable} ({e})"}
    llm = OpenAILLM(model="fake", base_url=args.base_url, api_key="unused", max_retries=args.max_retries, timeout=120)
    llm.load()
    inputs = [[{"role": "user", "content": p}] for p in prompts]
    kept = lost = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for b in range(0, len(inputs), args.concurrency):
        batch = inputs[b : b + args.concurrency]
        try:
            outs = llm.generate_outputs(inputs=batch, num_generations=1, max_new_tokens=16, temperature=0.0)
        except Exception:
            lost += len(batch)
            continue
        ok = sum(1 for o in outs if o["generations"] and o["generations"][0] is not None)
        kept, lost = kept + ok, lost + len(batch) - ok
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"seconds": wall, "cpu_s": cpu, "kept": kept, "lost": lost,
            "sdk": f"distilabel {_v('distilabel')} on openai {_v('openai')}"}


def run_curator(args, prompts: list[str]) -> dict:
    tmp = tempfile.mkdtemp(prefix="curator-")
    os.environ.update({"CURATOR_DISABLE_CACHE": "1", "CURATOR_CACHE_DIR": tmp, "TELEMETRY_ENABLED": "false",
                       "LITELLM_LOCAL_MODEL_COST_MAP": "True", "OPENAI_API_KEY": "unused"})
    import importlib.util

    litellm = importlib.util.find_spec("litellm")
    if litellm and litellm.submodule_search_locations:  # curator's tiktoken file, from litellm's bundled copy
        tok = os.path.join(list(litellm.submodule_search_locations)[0], "litellm_core_utils", "tokenizers")
        if os.path.isdir(tok):  # (tiktoken would download it otherwise; there is no network here)
            os.environ.setdefault("TIKTOKEN_CACHE_DIR", tok)
    try:
        from bespokelabs import curator
    except ImportError as e:
        return {"skipped": f"bespokelabs-curator is not installed in {sys.executable} ({e})"}
    import logging

    logging.getLogger("bespokelabs.curator").setLevel(logging.ERROR)  # a warning per retried request otherwise
    huge = 10**9
    llm = curator.LLM(model_name="fake", backend="openai", generation_params={"max_tokens": 16, "temperature": 0.0},
                      backend_params={"base_url": args.base_url, "api_key": "unused", "max_retries": args.max_retries,
                                      "max_concurrent_requests": args.concurrency, "max_requests_per_minute": huge,
                                      "max_tokens_per_minute": huge, "require_all_responses": False})
    w0, c0 = time.perf_counter(), time.process_time()
    resp = llm(prompts)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    ds = getattr(resp, "dataset", resp)
    kept = sum(1 for r in ds["response"] if r is not None)
    return {"seconds": wall, "cpu_s": cpu, "kept": kept, "lost": len(prompts) - kept,
            "sdk": f"curator {_v('bespokelabs-curator')} on aiohttp {_v('aiohttp')} (openai {_v('openai')} installed)"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--peer", choices=["distilabel", "curator"], required=True)
    ap.add_argument("--base-url", required=True, help="the server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--n", type=int, required=True, help="requests to send")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight at most (C)")
    ap.add_argument("--max-retries", type=int, default=8, help="retries per request (the peer's own mechanism)")
    ap.add_argument("--template", default="Ticket: request number {i} about an invoice",
                    help="prompt i is template.format(i=i)")
    args = ap.parse_args()
    prompts = [args.template.format(i=i) for i in range(args.n)]
    out = (run_distilabel if args.peer == "distilabel" else run_curator)(args, prompts)
    print(json.dumps({"peer": args.peer, "python": sys.executable, **out}), flush=True)


if __name__ == "__main__":
    main()
