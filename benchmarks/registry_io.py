"""Registry publish and pull time, on the local disk and on an S3-compatible server (moto on loopback).

Baseline, measured in the same run on the same files: a plain copy with no safety (local:
shutil.copytree; S3: fs.put / fs.get of the same folder). The registry's overhead is the
checksums, the lock, staging + the one-step commit, the alias move and verify-on-pull.
Prints one JSON line last.

    python benchmarks/registry_io.py [--quick] [--adapter-mb 16] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

from _common import emit, setup


def _adapter(folder: Path, mb: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(mb << 20))
    (folder / "adapter_config.json").write_text('{"r": 16, "peft_type": "LORA"}')
    return folder


def _median_s(fn, reps: int) -> float:
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 4)


def _bench(reg, adapter: Path, work: Path, reps: int, copy_in, copy_out) -> dict:
    meta = dict(metrics={"accuracy": 0.9}, lineage={"run_id": "bench"}, routing={}, skill_spec={"task": "x"},
                model_card=lambda v: f"# v{v}\n")
    publish = _median_s(lambda i: reg.publish("bench", adapter, **meta), reps)
    pull = _median_s(lambda i: reg.pull("bench", i + 1, to=work / f"pull-{i}"), reps)
    base_in = _median_s(lambda i: copy_in(i), reps)
    base_out = _median_s(lambda i: copy_out(i), reps)
    return {"publish_s": publish, "pull_s": pull, "baseline_copy_in_s": base_in, "baseline_copy_out_s": base_out,
            "publish_overhead_x": round(publish / max(base_in, 1e-9), 2),
            "pull_overhead_x": round(pull / max(base_out, 1e-9), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 MB adapter, 2 repetitions (a few seconds)")
    ap.add_argument("--adapter-mb", type=int, default=16, help="adapter size (Gemma 3 270M, r=16, all linear: ~15 MB)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    setup()
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    from registry import Registry

    mb, reps = (2, 2) if args.quick else (args.adapter_mb, args.reps)
    out: dict = {"benchmark": "registry_io", "quick": args.quick, "adapter_mb": mb, "reps": reps}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        os.environ["DISTILL_HOME"] = str(work / "home")
        adapter = _adapter(work / "adapter", mb)

        reg = Registry(work / "reg")
        out["local"] = _bench(reg, adapter, work / "local", reps,
                              lambda i: shutil.copytree(adapter, work / f"base-in-{i}"),
                              lambda i: shutil.copytree(adapter, work / f"base-out-{i}"))

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                              AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
            boto3.client("s3").create_bucket(Bucket="bench")
            sreg = Registry("s3://bench/reg")
            fs = sreg.fs
            out["s3_moto"] = _bench(sreg, adapter, work / "s3", reps,
                                    lambda i: fs.put(str(adapter), f"bench/plain/{i}", recursive=True),
                                    lambda i: fs.get(f"bench/plain/{i}", str(work / f"s3-base-out-{i}"),
                                                     recursive=True))
            # resolve(): first call downloads + verifies into the cache, later calls re-verify the cache
            t0 = time.perf_counter()
            sreg.resolve("bench")
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            sreg.resolve("bench")
            out["s3_moto"].update(resolve_first_s=round(first, 4), resolve_cached_s=round(time.perf_counter() - t0, 4))
        finally:
            server.stop()
    emit(out)


if __name__ == "__main__":
    main()
