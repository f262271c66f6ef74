"""Prefect's share of a pipeline run: the whole `distill-skill` flow against the same stages run
as plain functions, in one process, on tiny random models (ticket-triage, local teacher).

    python benchmarks/flow_overhead.py [--quick] [--repeats N]

flow:  `distill_skill(RunParams)` on the ephemeral Prefect API: flow and task runs, state
       changes, logs sent to the API, artifacts, the skill lock, the teacher-expansion slot.
plain: the baseline, measured in the same run. The flow body (`flows.pipeline._distill`) with
       every Prefect task replaced by its `.fn` (same order, same inputs), the run logger by a
       plain logger, and the Prefect-only calls (concurrency slot, artifacts) by no-ops.
Each run gets a fresh work dir (empty teacher cache, pool, dedup index, registry), so both do
the same work; flow and plain alternate, medians are reported. One-off costs are paid before
timing: the ephemeral API's start-up (database migrations on a fresh PREFECT_HOME; reported
apart) and one untimed plain run (lazy imports and first use of every stage).

prefect_share: per flow/plain pair, the time the flow spends outside its stages' own work
(engine, state changes, logs and artifacts sent to the API, the concurrency slot) minus the
time the plain body spends outside them, over the flow's wall time; median over pairs. Stage
durations swing with the load of a shared machine, so wall_difference_s (flow minus plain
wall time, also printed) is the noisier view of the same cost. api_server_cpu_s: CPU the
ephemeral API server used during a flow run (what it takes from the stages on a 2-core box).
Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _common import REPO, emit, setup

SKILL = "ticket-triage"
# --quick: the test suite's tiny profile (a handful of examples, 3 training steps). The tiny model
# is random, so the teacher audit has no floor here (the skill's floor would stop the run).
QUICK = {"expansion": {"target_examples": 6},
         "teacher": {"few_shot": 4, "style_shots": 3, "batch_size": 8, "max_new_tokens": 12,
                     "calibration_shot_sets": 1},
         "audit": {"floor": None, "folds": 3},
         "student": {"quantization": "nf4", "lora": {"r": 4, "alpha": 8},
                     "train": {"max_steps": 3, "batch_size": 8, "eval_steps": 3}},
         "gates": {"eval_limit": 10, "replay": {"sample": 6, "min_agreement": 0.0, "max_invalid_rate": 1.0},
                   "floor": {"accuracy": 0.0}, "margin": 1.0}}
# full: more of every stage, still tiny models.
FULL = {"expansion": {"target_examples": 32}, "teacher": {"batch_size": 16, "max_new_tokens": 16},
        "student": {"train": {"max_steps": 12, "eval_steps": 4}},
        "gates": {"eval_limit": 40, "replay": {"sample": 12}}}


def profile(quick: bool) -> dict:
    from core.skills import deep_merge

    return QUICK if quick else deep_merge(QUICK, FULL)


def build_tiny_model(folder: Path) -> str:
    """The tests' tiny model (tests/tiny_models.py), its tokenizer trained on the skill's data."""
    from tests.tiny_models import build_tiny_model as build

    corpus = []
    for name in ("seeds.jsonl", "eval.jsonl"):
        for line in (REPO / "seeds" / SKILL / name).read_text().splitlines():
            obj = json.loads(line)
            corpus.append(f"Ticket: {obj['input']}\nTeam: {obj['output']}\n")
    return str(build(folder, corpus))


def skill_folder(root: Path, model: str, profile: dict) -> Path:
    import yaml

    shutil.copytree(REPO / "seeds" / SKILL, root / SKILL)
    path = root / SKILL / "skill.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["teacher"].update(model=model, backend="local", local_server="transformers")
    cfg["student"]["base_model"] = model
    cfg.setdefault("profiles", {})["bench"] = profile
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


@contextlib.contextmanager
def instrumented(mode: str):
    """Times every stage body (a task's .fn) and every Prefect-only call inside one.

    plain: tasks -> their timed .fn, run logger -> a plain logger, the teacher-expansion slot
    and the artifacts -> no-ops. flow: the same code under Prefect, the .fn of each task and the
    Prefect-only calls timed where the engine calls them."""
    from prefect import Task

    import eval_gates.evaluate
    import flows.limits
    import flows.pipeline as pipeline
    import flows.summary

    t: dict[str, float] = {"prefect_in_stages": 0.0}
    saved = {}

    def add(key: str, dt: float) -> None:
        t[key] = t.get(key, 0.0) + dt

    def timed(fn, key):
        @functools.wraps(fn)  # the engine binds parameters through the signature
        def call(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                add(key, time.perf_counter() - t0)
        return call

    @contextlib.contextmanager
    def timed_slot(real=flows.limits.teacher_expansion_slot):
        t0 = time.perf_counter()
        with real() as v:
            add("prefect_in_stages", time.perf_counter() - t0)
            yield v
            t1 = time.perf_counter()
        add("prefect_in_stages", time.perf_counter() - t1)

    tasks = {name: obj for name, obj in vars(pipeline).items() if isinstance(obj, Task)}
    if mode == "plain":
        patches = [(pipeline, name, timed(obj.fn, obj.name)) for name, obj in tasks.items()]
        patches += [(pipeline, "get_run_logger", lambda: logging.getLogger("distill.flows")),
                    (flows.summary, "_artifact", lambda summary: None),
                    (flows.limits, "teacher_expansion_slot", contextlib.nullcontext),
                    (eval_gates.evaluate, "attach_artifacts", lambda result, skill_name: None)]
    else:
        patches = [(obj, "fn", timed(obj.fn, obj.name)) for obj in tasks.values()]
        patches += [(flows.limits, "teacher_expansion_slot", timed_slot),
                    (eval_gates.evaluate, "attach_artifacts",
                     timed(eval_gates.evaluate.attach_artifacts, "prefect_in_stages"))]
    for obj, name, new in patches:
        saved[(obj, name)] = getattr(obj, name)
        setattr(obj, name, new)
    try:
        yield t
    finally:
        for (obj, name), old in saved.items():
            setattr(obj, name, old)


def _server_cpu_s() -> float:
    """CPU seconds used so far by the ephemeral API server (a child process of this one)."""
    from prefect.server.api.server import SubprocessASGIServer

    total = 0.0
    for srv in SubprocessASGIServer._instances.values():
        if srv.server_process is not None:
            fields = Path(f"/proc/{srv.server_process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def one_run(mode: str, seed: int, tmp: Path, i: int) -> dict:
    from flows.locks import skill_lock
    from flows.pipeline import RunParams, _distill, distill_skill

    os.environ["DISTILL_HOME"] = str(tmp / f"work-{mode}-{i}")  # fresh cache, pool, index, registry
    params = RunParams(skill=SKILL, profile="bench", seed=seed, run_id=f"{mode}-{i}")
    cpu0 = _server_cpu_s()
    with instrumented(mode) as t:
        t0 = time.perf_counter()
        if mode == "flow":
            summary = distill_skill(params)
        else:
            with skill_lock(SKILL):  # the flow holds it too
                summary = _distill(params)
        wall = time.perf_counter() - t0
    prefect_in = t.pop("prefect_in_stages")
    stage_s = sum(t.values()) - prefect_in  # the stages' own work, Prefect-only calls taken out
    return {"wall_s": wall, "stages_s": t, "stage_work_s": stage_s, "prefect_in_stages_s": prefect_in, "outside_stages_s": wall - stage_s,
            "server_cpu_s": _server_cpu_s() - cpu0, "accepted": summary["counts"]["accepted"],
            "steps": summary["training"]["steps"], "promoted": summary["decision"]["promote"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the tests' tiny profile, one run of each (under a minute)")
    ap.add_argument("--repeats", type=int, default=None, help="runs of each mode (default: 1 quick, 3 full)")
    args = ap.parse_args()
    size = "quick" if args.quick else "full"
    repeats = args.repeats or (1 if args.quick else 3)
    tmp = Path(tempfile.mkdtemp(prefix="flow-overhead-"))
    os.environ["DISTILL_HOME"] = str(tmp / "work")
    os.environ.setdefault("PREFECT_HOME", str(tmp / "prefect"))
    os.environ["DISTILL_SEEDS_DIR"] = str(tmp / "seeds")
    os.environ.pop("DISTILL_REGISTRY", None)
    setup()
    logging.getLogger("distill").setLevel(logging.WARNING)
    try:
        model = build_tiny_model(tmp / "tiny-model")
        skill_folder(tmp / "seeds", model, profile(args.quick))
        # One-off costs outside the timing: imports of the stage libraries and the ephemeral API's start.
        import peft  # noqa: F401
        import trl  # noqa: F401
        from prefect import flow

        import eval_gates.evaluate  # noqa: F401
        import filters  # noqa: F401
        import teachers.local  # noqa: F401
        import trainers.qlora  # noqa: F401

        @flow(name="warm-up")
        def warm_up() -> None:
            return None

        t0 = time.perf_counter()
        warm_up()
        api_start = time.perf_counter() - t0
        # First use of each stage (lazy imports, kernels, plotting) costs seconds once per process:
        # one untimed plain run pays it for both modes. --quick skips it and runs the flow first,
        # which can only overstate Prefect's share.
        if not args.quick:
            one_run("plain", seed=1234, tmp=tmp, i=-1)

        runs = {"flow": [], "plain": []}
        for i in range(repeats):
            order = ("flow", "plain") if i % 2 == 0 else ("plain", "flow")
            for mode in order:
                runs[mode].append(one_run(mode, seed=1234, tmp=tmp, i=i))
        med = statistics.median
        flows_, plains = runs["flow"], runs["plain"]
        # Paired: what the flow spends outside its stages' own work (engine, API calls, logs,
        # artifacts, slot) minus what the plain body spends outside them (its own glue code).
        # Stage durations themselves swing with the machine's load, so they are not subtracted.
        overheads = [f["outside_stages_s"] - p["outside_stages_s"] for f, p in zip(flows_, plains)]
        shares = [o / f["wall_s"] for o, f in zip(overheads, flows_)]
        same = {(r["accepted"], r["steps"], r["promoted"]) for r in flows_ + plains}
        n_tasks = len(flows_[0]["stages_s"])
        overhead = med(overheads)
        emit({
            "benchmark": "flow_overhead", "size": size, "repeats": repeats, "skill": SKILL,
            "flow_s": round(med(r["wall_s"] for r in flows_), 2),
            "plain_s": round(med(r["wall_s"] for r in plains), 2),
            "wall_difference_s": round(med(r["wall_s"] for r in flows_) - med(r["wall_s"] for r in plains), 2),
            "prefect_overhead_s": round(overhead, 3), "prefect_share": round(med(shares), 4), "target_share": 0.10,
            "task_runs": n_tasks, "overhead_per_task_run_s": round(overhead / n_tasks, 3),
            "prefect_in_stages_s": round(med(f["prefect_in_stages_s"] for f in flows_), 3),  # slot, eval artifacts
            "api_server_cpu_s": round(med(f["server_cpu_s"] for f in flows_), 2),
            "stage_s": {k: round(med(p["stages_s"].get(k, 0.0) for p in plains), 2) for k in plains[0]["stages_s"]},
            "flow_runs_s": [round(r["wall_s"], 2) for r in flows_],
            "plain_runs_s": [round(r["wall_s"], 2) for r in plains],
            "same_outcome": len(same) == 1,
            "api_start_s_excluded": round(api_start, 2),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        })
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
