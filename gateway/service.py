"""The gateway's core, without HTTP: which version serves a skill, the three lanes, capture.

`Gateway.answer(model_ref, inputs)` is what every endpoint calls. A version is a `Served`: its
folder, skill.json config, routing profile and a dynamic batcher over the engine. The production
alias is followed by a poller thread; a promote or rollback loads the new version next to the old
one, points new requests at it, and unloads the old one once its last in-flight request is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.batcher import DynamicBatcher
from gateway.budget import LiveBudget, curve_scores, live_budget
from gateway.config import GatewayConfig, SkillOverride
from gateway.engine import Answer

log = logging.getLogger("distill.gateway")

SCRUB_WARM_WAIT_S = 30.0  # longest start() waits for the scrubbing process (~6 s on 2 cores) before it is ready


class GatewayError(Exception):
    """An error with an HTTP status and a message that names the field, limit or skill."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def keep_rule(routing: dict, override: SkillOverride, engine_signals: tuple[str, ...] | None = None) -> tuple[str, float | None]:
    """(mode, threshold) for a version: mode "threshold" keeps a valid answer with confidence >=
    threshold, "never" keeps every valid answer (never escalates a valid one), "always" escalates
    everything. From routing.json and the skill's override: a both-lanes profile (version 2) gives its
    policy's point, or the point the override's policy / max_teacher_share / target_error_rate picks on its
    curve (eval_gates.routing.choose_point); an older profile its threshold, or its curve re-read for the
    override's target_error_rate. A profile whose confidence signal the engine cannot read keeps every valid
    answer (a threshold on a value that is never there would escalate everything)."""
    if override.escalation == "always":
        return "always", None
    if override.escalation == "never":
        return "never", None
    if routing.get("version") == 2 and isinstance(routing.get("curve"), list) and routing["curve"]:
        signal = routing.get("signal") or "mean_logprob"
        if engine_signals is not None and signal not in engine_signals:
            log.warning("routing signal %s cannot be read from this engine (it reads %s): valid answers are kept",
                        signal, ", ".join(engine_signals))
            return "never", None
        mode, thr = routing.get("mode"), routing.get("threshold")
        if override.policy or override.max_teacher_share is not None or override.target_error_rate is not None:
            from eval_gates.routing import choose_point

            policy = override.effective_policy(routing.get("policy"))
            pick = choose_point({"points": routing["curve"], "n": routing.get("n")}, policy or "quality",
                                max_teacher_share=override.max_teacher_share if override.max_teacher_share is not None
                                else routing.get("max_teacher_share", 0.2),
                                target_error_rate=override.target_error_rate or routing.get("target_error_rate", 0.05),
                                significance=routing.get("significance", 0.05),
                                fallback=routing.get("fallback_policy") or "quality",
                                level=routing.get("confidence_level", 0.95))
            mode, thr = pick["mode"], pick["point"]["threshold"]
        if mode == "keep_all_valid":
            return "never", None
        if mode == "threshold" and isinstance(thr, (int, float)) and math.isfinite(thr):
            return "threshold", float(thr)
        return "always", None
    if override.target_error_rate is not None and isinstance(routing.get("curve"), list):
        ok = [c for c in routing["curve"] if isinstance(c, dict) and c.get("error_rate") is not None
              and c["error_rate"] <= override.target_error_rate]
        if not ok:
            return "always", None
        return ("never", None) if ok[-1] is routing["curve"][-1] and routing.get("valid") == ok[-1].get("kept") \
            else ("threshold", float(ok[-1]["threshold"]))
    mode = routing.get("mode")
    if mode in ("escalate_all", "unavailable"):
        return "always", None
    thr = routing.get("threshold", (routing.get("escalation") or {}).get("confidence_threshold"))
    if thr is None:
        return "never", None  # no calibrated confidence (the publish stage's fallback): keep valid answers
    if not isinstance(thr, (int, float)) or not math.isfinite(thr):
        return "always", None
    return "threshold", float(thr)


@dataclass
class Served:
    """One loaded version of a skill."""

    skill: str
    version: int
    folder: Path
    spec: dict
    cfg: Any  # core.skills.SkillConfig rebuilt from skill.json
    routing: dict
    mode: str
    threshold: float | None
    max_new_tokens: int
    signal: str = "mean_logprob"  # routing.json's confidence signal: the engine decodes this one
    batcher: DynamicBatcher | None = None
    budget: LiveBudget | None = None  # the budget policy's share held on live traffic (gateway/budget.py)
    users: int = 0
    retired: bool = False
    last_used: float = 0.0  # time.monotonic() of the last request addressed to it (least-recently-used unloading)

    @property
    def key(self) -> str:
        return f"{self.skill}@{self.version}"


@dataclass
class Result:
    """The answer to one input."""

    id: str
    skill: str
    version: int | None
    lane: str  # keep | escalate | degraded
    answer: str
    confidence: float | None
    latency_ms: float
    reason: str | None = None
    extra: dict = field(default_factory=dict)
    prompt_tokens: int = 0  # the small model's tokens for this input (0 when it did not decode it)
    completion_tokens: int = 0


class Gateway:
    """Owns the engine, the served versions, the teacher lanes, the verify lane and the traffic writer."""

    def __init__(self, cfg: GatewayConfig, engine=None, registry=None, metrics=None):
        from gateway.metrics import Metrics
        from gateway.traffic import TrafficWriter
        from gateway.verify import VerifyLane
        from registry.store import Registry

        self.cfg = cfg
        self.registry = registry if registry is not None else Registry(cfg.registry)
        if engine is None:
            if cfg.backend == "openai":
                from gateway.engine_openai import OpenAIEngine

                engine = OpenAIEngine(cfg.backend_url or "", cfg.backend_api_key_env)
            else:
                from gateway.engine import LocalEngine

                engine = LocalEngine()
        self.engine = engine
        self.metrics = metrics or Metrics()
        self.lock = threading.RLock()
        self.production: dict[str, Served | None] = {}
        self.loaded: dict[tuple[str, int], Served] = {}
        self._shared: dict[str, DynamicBatcher] = {}  # base model -> the batcher every version on it shares
        self.retired: list[Served] = []
        self.teachers: dict[str, Any] = {}
        # The verify lane's own teacher lanes (own worker and client, opened on first use): a slow verify
        # answer never holds an escalated request behind it.
        self.verify_teachers: dict[str, Any] = {}
        self.tasks: dict[str, Any] = {}
        self.recent: dict[str, str] = {}  # request id -> skill (bounded), for feedback
        self.ready = False
        from gateway.config import default_traffic_url

        self.scrubbers: dict[str, Any] = {}  # skill -> core.privacy.Scrubber | None (privacy.scrub off)
        self._scrub_warming: threading.Thread | None = None  # starts the scrubbing process (start())
        self.traffic = TrafficWriter(cfg.traffic_url or default_traffic_url(), cfg.table_for, cfg.traffic_queue,
                                     cfg.traffic_batch, cfg.traffic_flush_ms, scrub_for=self._scrubber)
        self.verify = VerifyLane(self._verify_ask, self._verify_agree, cfg.verify_queue, self._verify_done)
        self.drift = self._drift_worker(cfg.traffic_url or default_traffic_url()) if cfg.drift else None
        self.metrics.watch("traffic", self.traffic.depth, lambda: self.traffic.lost)
        self.metrics.watch("verify", self.verify.depth, lambda: self.verify.lost)
        if self.drift is not None:
            self.metrics.watch("drift", self.drift.depth, lambda: self.drift.lost)
        self.metrics.store_failures.labels("traffic").set_function(lambda: self.traffic.failures)
        self.metrics.store_dropped.labels("traffic").set_function(lambda: self.traffic.dropped)
        self.metrics.store_cleaned.labels("traffic").set_function(lambda: self.traffic.cleaned)
        self.load_errors: dict[str, dict] = {}  # skill -> {"version", "error"}: its production version did not load
        self.alias_cache: dict[str, dict[str, int]] = {}  # skill -> aliases as the poller last read them
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.skills: list[str] = []

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Load every served skill's production version, open the teacher lanes, start polling."""
        names = self.cfg.skills if self.cfg.skills is not None else self.registry.skills()
        self.skills = sorted(names)
        for name in self.skills:
            self.teachers[name] = self._teacher_lane(name)
            self.verify_teachers[name] = self._teacher_lane(name)
        self._scrub_warming = threading.Thread(target=self._warm_scrubbing, name="scrub-warm", daemon=True)
        self._scrub_warming.start()  # beside the model loading
        self.poll()
        for name in self.skills:
            self._scrubber(name)  # a privacy block that cannot be honoured fails the start, not each row
        # Ready once the scrubbing process is up too (a readiness probe holds traffic until then), so the first
        # requests do not share the CPU with its start; at most SCRUB_WARM_WAIT_S, then it finishes in the back.
        self._scrub_warming.join(SCRUB_WARM_WAIT_S)
        self.ready = True
        self._poller = threading.Thread(target=self._poll_loop, name="alias-poller", daemon=True)
        self._poller.start()

    def close(self) -> None:
        self._stop.set()
        if self._poller:
            self._poller.join(timeout=5)
        for s in list(self.loaded.values()):
            if s.batcher:
                s.batcher.close()
        for b in list(self._shared.values()):
            b.close()
        self.verify.close()
        if self.drift is not None:
            self.drift.close()
        for t in [*self.teachers.values(), *self.verify_teachers.values()]:
            t.close()
        self.traffic.close()
        self.engine.close()

    def _teacher_lane(self, name: str):
        from gateway.teacher_lane import TeacherLane

        skill, why = None, "teachers are off (GatewayConfig.teachers)"
        if self.cfg.teachers:
            try:
                from core.skills import load_skill

                skill = load_skill(name, self.cfg.profile)
            except Exception as e:
                why = f"cannot load its skill.yaml: {e}"
                log.warning("skill %s: no teacher (%s); escalations get degraded/503", name, why)
        return TeacherLane(skill, missing=why)

    def _scrubber(self, name: str):
        """The skill's traffic scrubber, from skill.yaml's privacy block (read as the teacher block is), else
        from the production version's skill.json, else the defaults: scrubbing on. None: privacy.scrub is off."""
        if name not in self.scrubbers:
            from core.config import PrivacyConfig
            from core.privacy import scrubber_for

            try:
                from core.skills import load_skill

                privacy = load_skill(name, self.cfg.profile).config.privacy
            except Exception as e:
                served = self.production.get(name)
                privacy = served.cfg.privacy if served is not None else PrivacyConfig()
                log.info("skill %s: privacy from %s (cannot load its skill.yaml: %s)", name,
                         f"version {served.version}'s skill.json" if served is not None else "the defaults, scrub on", e)
            self.scrubbers[name] = scrubber_for(privacy)
        return self.scrubbers[name]

    def _warm_scrubbing(self) -> None:
        """Start the traffic scrubbing process with the skills' scrubbers while the models load."""
        from core.privacy import scrubber_for
        from core.skills import load_skill

        scrubbers = []
        for name in self.skills:  # skill.yaml's privacy block; start() itself decides (and caches) each skill's
            try:
                scrubbers.append(scrubber_for(load_skill(name, self.cfg.profile).config.privacy))
            except Exception:  # no skill.yaml here, or a block start() will refuse: nothing to warm
                continue
        warm = getattr(self.traffic, "warm", None)
        if warm is not None:
            warm(scrubbers)

    def _drift_worker(self, url: str):
        """The drift monitor's worker, with the triggers recorded in the traffic database (the worker reads each
        skill's last trigger back on its own thread, so a restart keeps the cool-down without slowing the start)."""
        from gateway.drift import DriftMonitor, DriftWorker, TriggerStore

        try:
            store = TriggerStore(url)
        except Exception as e:
            log.warning("drift: triggers are not recorded (%s: %s)", type(e).__name__, e)
            store = None
        return DriftWorker(DriftMonitor(), store)

    def _watch(self, name: str, served: "Served | None") -> None:
        """Point the drift monitor at the skill's production version (its routing.json bands, its novelty.json,
        the skill's drift block from skill.yaml, else the version's skill.json)."""
        if self.drift is None or self.drift.monitor.version(name) == (served.version if served else None):
            return
        if served is None:
            self.drift.monitor.drop(name)
            return
        from core.config import DriftConfig

        try:
            from core.skills import load_skill

            cfg = load_skill(name, self.cfg.profile).config.drift
        except Exception:
            cfg = getattr(served.cfg, "drift", None) or DriftConfig()
        novelty, why = None, None
        f = served.folder / "novelty.json"
        if f.is_file():
            try:
                from filters.novelty import NoveltyIndex

                novelty = NoveltyIndex.from_dict(json.loads(f.read_text(encoding="utf-8")))
            except Exception as e:
                why = f"novelty.json of version {served.version} cannot be used ({e})"
                log.warning("drift %s: %s", name, why)
        else:
            why = f"version {served.version} has no novelty.json (published before drift monitoring)"
        task = self.tasks.get(name)
        self.drift.monitor.set_version(name, served.version, cfg, served.routing or {}, served.mode, served.threshold,
                                       novelty, why, text=task.match_text if task is not None else None)

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            try:
                self.poll()
            except Exception:
                log.exception("alias poll failed")

    def _discover(self) -> None:
        """Serving every skill of the registry (GatewayConfig.skills unset): a skill published after
        the start joins at the next poll."""
        if self.cfg.skills is not None:
            return
        try:
            names = self.registry.skills()
        except Exception as e:
            log.warning("cannot list the registry's skills (%s); serving %s", e, ", ".join(self.skills) or "none")
            return
        new = sorted(set(names) - set(self.skills))
        for name in new:
            self.teachers[name] = self._teacher_lane(name)
            self.verify_teachers[name] = self._teacher_lane(name)
        if new:
            self.skills = sorted(set(self.skills) | set(new))  # one assignment: readers see the old or the new list
            log.info("now serving new skill(s): %s", ", ".join(new))

    def poll(self) -> None:
        """Pick up newly published skills; follow each skill's production alias; unload retired
        versions nobody uses any more."""
        self._discover()
        for name in self.skills:
            try:
                aliases = self.registry.aliases(name)
            except Exception as e:
                log.warning("skill %s: cannot read aliases (%s); keeping what is served", name, e)
                continue
            self.alias_cache[name] = dict(aliases)
            version = aliases.get("production")
            current = self.production.get(name)
            if version is None:
                self.load_errors.pop(name, None)
                if name not in self.production:
                    self.production[name] = None
                self._watch(name, self.production.get(name))
                continue
            if current is not None and current.version == version:
                continue
            try:
                new = self._load(name, int(version))
            except Exception as e:
                log.error("skill %s: cannot load version %s (%s); keeping what is served", name, version, e)
                self.load_errors[name] = {"version": int(version), "error": f"{type(e).__name__}: {e}"}
                continue
            self.load_errors.pop(name, None)
            self._watch(name, new)
            with self.lock:
                self.production[name] = new
                if current is not None:
                    self.metrics.swaps.labels(name).inc()
                    log.info("skill %s: now serving version %s (was %s)", name, version, current.version)
                    self._retire(current)
        self._reap()

    def _retire(self, s: Served) -> None:
        if s.retired:
            return
        s.retired = True
        self.retired.append(s)

    def _reap(self) -> None:
        with self.lock:
            keep = []
            for s in self.retired:
                in_use = s.users > 0 or (s.batcher is not None and s.batcher.inflight > 0) or \
                    any(p is s for p in self.production.values()) or \
                    time.monotonic() - s.last_used < REAP_GRACE_S  # just looked up: its request may not have queued yet
                if in_use:
                    keep.append(s)
                    continue
                self.loaded.pop((s.skill, s.version), None)
                if s.batcher:
                    s.batcher.close(wait=False)
                    try:
                        self.metrics.queue_depth.remove(f"batch:{s.key}")
                        self.metrics.queue_lost.remove(f"batch:{s.key}")
                    except KeyError:
                        pass
                try:
                    self.engine.unload(s.key)
                except Exception:
                    log.exception("unload %s", s.key)
            self.retired = keep

    def _load(self, name: str, version: int) -> Served:
        """The loaded version (loading it once: verify, adapter on its base, a batcher)."""
        with self.lock:
            s = self._loaded(name, version)
            if s is not None:
                return s
            gate = self._load_locks.setdefault((name, version), threading.Lock())
        with gate:  # one load per version: concurrent first requests wait for it instead of loading it again
            with self.lock:
                s = self._loaded(name, version)
            if s is not None:
                return s
            return self._load_new(name, version)

    def _loaded(self, name: str, version: int) -> Served | None:
        """The loaded version (taken back from the retired list if it was there), or None. Call under self.lock."""
        s = self.loaded.get((name, version))
        if s is not None:
            s.retired = False
            if s in self.retired:
                self.retired.remove(s)
        return s

    def _load_new(self, name: str, version: int) -> Served:
        from core.tasks import get_task
        from registry.consumer import max_new_tokens_of, read_spec, skill_config

        folder = self.registry.resolve(name, version=version)
        spec = read_spec(folder)
        cfg = skill_config(spec, name=name)
        routing = {}
        if (Path(folder) / "routing.json").is_file():
            routing = json.loads((Path(folder) / "routing.json").read_text(encoding="utf-8"))
        mode, thr = keep_rule(routing, self.cfg.override(name), getattr(self.engine, "signals", None))
        s = Served(name, version, Path(folder), spec, cfg, routing, mode, thr, max_new_tokens_of(spec, cfg),
                   signal=routing.get("signal") or "mean_logprob")
        share = live_budget(routing, self.cfg.override(name)) if mode == "threshold" else None
        if share is not None and self.cfg.budget_window > 0:
            s.budget = LiveBudget(share, self.cfg.budget_window, curve_scores(routing))
        self.engine.load(s.key, s.folder, spec)
        self.tasks.setdefault(name, get_task(cfg))

        group = getattr(self.engine, "group", None)
        if group is not None and hasattr(self.engine, "decode_mixed"):
            # One batcher per base model: every skill and version on it shares each batch (mixed adapters).
            gkey = group(s.key)
            with self.lock:
                shared = self._shared.get(gkey)
                if shared is None:
                    shared = self._shared[gkey] = DynamicBatcher(
                        self._run_mixed, self.cfg.max_batch, self.cfg.max_wait_ms, name=f"base:{Path(gkey).name}",
                        on_batch=self._observe_mixed, split=_input_fault)
            s.batcher = SharedLane(shared, s)
        else:
            def run(items, s=s):  # (prompt, input) pairs: a per-request grammar (function calls) needs the input
                return _no_nan(self.engine.decode(s.key, s.cfg, [p for p, _ in items], s.max_new_tokens,
                                                  inputs=[x for _, x in items], signal=s.signal))

            s.batcher = DynamicBatcher(run, self.cfg.max_batch, self.cfg.max_wait_ms, name=s.key,
                                       on_batch=lambda n, dt, name=name: self.metrics.batch.labels(name).observe(n),
                                       split=_input_fault)
        self.metrics.watch(f"batch:{s.key}", s.batcher.depth, lambda: 0)
        with self.lock:
            self.loaded[(name, version)] = s
        return s

    def _run_mixed(self, items) -> list:
        """A shared batch: (Served, (prompt, input)) items of any versions on one base."""
        jobs = [(sv.key, sv.cfg, p, x, sv.max_new_tokens, sv.signal) for sv, (p, x) in items]
        return _no_nan(self.engine.decode_mixed(jobs))

    def _observe_mixed(self, n: int, dt: float) -> None:
        self.metrics.batch.labels("*").observe(n)

    # --- addressing -------------------------------------------------------------------------------------------------

    def known(self) -> list[str]:
        return list(self.skills)

    async def lookup(self, ref: str) -> Served | None:
        """The version `ref` names: 'skill' (production), 'skill@alias', 'skill@N'. None: the skill has
        no production version (requests escalate). Raises GatewayError 404 for an unknown skill or version,
        503 for a version that cannot be loaded. Registry reads and loads run off the event loop (a
        loaded version and the poller's aliases need none)."""
        if not isinstance(ref, str) or not ref:
            raise GatewayError(422, "model: required (a skill name, e.g. ticket-triage or ticket-triage@3)", field="model")
        name, _, sel = ref.partition("@")
        if name not in self.skills:
            raise GatewayError(404, f"unknown skill {name!r}; known: {', '.join(self.skills) or 'none'}", known=self.skills,
                               field="model", code="model_not_found")
        if not sel or sel == "production":
            s = self.production.get(name)
            if s is not None:
                s.last_used = time.monotonic()
            return s
        version = self._cached_version(name, sel)
        if version is None:
            version = await asyncio.to_thread(self.resolve_ref, name, sel)
        with self.lock:
            s = self._loaded(name, version)
        if s is None:
            try:
                s = await asyncio.to_thread(self._load, name, version)
            except GatewayError:
                raise
            except Exception as e:  # a checksum that fails, an adapter the backend does not serve
                raise GatewayError(503, f"{name}@{version}: cannot be loaded ({type(e).__name__}: {e})", field="model",
                                   code="model_unavailable") from None
        s.last_used = time.monotonic()
        self._evict()
        return s

    def _cached_version(self, name: str, sel: str) -> int | None:
        """The version a selector names without reading the registry: a loaded version number, or an
        alias the poller read (as stale as the production alias, at most poll_s). None: ask the registry."""
        if sel.isascii() and sel.isdigit() and not sel.startswith("0"):
            return int(sel) if (name, int(sel)) in self.loaded else None
        return self.alias_cache.get(name, {}).get(sel)

    def resolve_ref(self, name: str, sel: str) -> int:
        """The version number selector `sel` (an alias or a number) names in the registry (blocking I/O:
        call it off the event loop). Raises GatewayError 404 naming the versions or aliases there are,
        503 when the registry cannot be read."""
        try:
            if sel.isascii() and sel.isdigit() and not sel.startswith("0"):
                versions = self.registry.versions(name)
            else:
                aliases = self.registry.aliases(name)
        except Exception as e:  # an object store that does not answer: the request may be retried
            raise GatewayError(503, f"{name}@{sel}: cannot read the registry ({type(e).__name__}: {e})", field="model",
                               code="registry_unavailable") from None
        if sel.isascii() and sel.isdigit() and not sel.startswith("0"):
            if int(sel) not in versions:
                raise GatewayError(404, f"{name}: no version {int(sel)}; versions: {versions}", field="model",
                                   code="model_not_found")
            return int(sel)
        if sel not in aliases:
            raise GatewayError(404, f"{name}: no alias {sel!r}; aliases: {sorted(aliases)}", field="model",
                               code="model_not_found")
        return int(aliases[sel])

    def _evict(self) -> None:
        """Retire the least recently used versions loaded on demand beyond max_versions (production
        versions never count); the poller unloads them once idle."""
        with self.lock:
            pinned = {id(p) for p in self.production.values() if p is not None}
            extra = sorted((s for s in self.loaded.values() if id(s) not in pinned and not s.retired),
                           key=lambda s: s.last_used)
            for s in extra[: max(0, len(extra) - self.cfg.max_versions)]:
                log.info("unloading %s when idle: more than max_versions=%d versions loaded on demand", s.key,
                         self.cfg.max_versions)
                self._retire(s)

    # --- the lanes --------------------------------------------------------------------------------------------------

    def task(self, name: str, served: Served | None):
        from core.tasks import get_task

        if served is not None:
            return get_task(served.cfg)
        t = self.tasks.get(name)
        if t is None:
            lane = self.teachers.get(name)
            if lane is not None and lane.skill is not None:
                t = self.tasks[name] = get_task(lane.skill.config)
        return t

    def check_input(self, x: str, where: str, task=None) -> None:
        """Raise GatewayError naming `where` for an input no lane can answer: not text, too long (413),
        text UTF-8 cannot encode (a lone surrogate), empty, or one the skill's task refuses (422)."""
        if not isinstance(x, str):
            raise GatewayError(422, f"{where}: must be text", field=where, code="invalid_type")
        if len(x) > self.cfg.max_input_chars:
            raise GatewayError(413, f"{where}: {len(x)} characters; the limit is max_input_chars={self.cfg.max_input_chars}",
                               limit="max_input_chars", field=where, code="input_too_long")
        bad = unencodable(x)
        if bad is not None:
            raise GatewayError(422, f"{where}: not valid Unicode text (a lone surrogate U+{ord(x[bad]):04X} at character "
                                    f"{bad}); it cannot be encoded as UTF-8", field=where, code="invalid_text")
        if not x.strip():
            raise GatewayError(422, f"{where}: the input is empty", field=where, code="empty_input")
        if task is not None:
            try:
                problem = task.input_problem(x)
            except Exception:
                problem = None
            if problem:
                raise GatewayError(422, f"{where}: {problem[1]} ({problem[0]})", field=where, code=problem[0])

    async def answer(self, ref: str, inputs: list[str], request_id: str | None = None,
                     where: list[str] | None = None) -> list[Result]:
        """Answer each input through the lanes. `where`: each input's name in the request (for errors;
        default inputs[i]). Raises GatewayError (404 unknown, 413 too long, 422 an input no lane can
        answer, 503 no answer: the teacher is unreachable and the small model's answer is invalid)."""
        t0 = time.perf_counter()
        rid = request_id or new_request_id()
        if len(inputs) > self.cfg.max_inputs:
            raise GatewayError(413, f"inputs: {len(inputs)} inputs; the limit is max_inputs={self.cfg.max_inputs}",
                               limit="max_inputs", field="inputs")
        served = await self.lookup(ref)
        name = ref.partition("@")[0]
        task = self.task(name, served)
        for i, x in enumerate(inputs):  # before any decode: one bad input never reaches a batch
            self.check_input(x, where[i] if where else f"inputs[{i}]" if len(inputs) > 1 else "input", task)
        ids = [rid] if len(inputs) == 1 else [f"{rid}-{i}" for i in range(len(inputs))]
        if served is None:
            answers: list[Answer | None] = [None] * len(inputs)
        else:
            with self.lock:
                served.users += 1
            try:
                futs = [asyncio.wrap_future(served.batcher.submit((self._prompt(served, x), x))) for x in inputs]
                answers = list(await asyncio.gather(*futs))
            finally:
                with self.lock:
                    served.users -= 1
        task = self.task(name, served)
        from eval_gates.routing import usable

        results: list[Result | None] = [None] * len(inputs)
        escalate: list[int] = []
        held: set[int] = set()  # below the threshold, kept on the student: the live budget is spent
        budget = served.budget if served is not None else None
        for i, (x, a) in enumerate(zip(inputs, answers)):
            keep = a is not None and self._keep(served, task, x, a)
            if budget is not None and a is not None:
                # a kept answer is valid with a usable confidence already; only one that would escalate is checked
                scored = keep or (self._valid(task, x, a) and usable(a.confidence))
                if not budget.admit(a.confidence if scored else -math.inf, below_threshold=not keep) and not keep:
                    held.add(i)
                    results[i] = Result(ids[i], name, served.version, "keep", a.parsed, a.confidence, 0.0,
                                        reason=f"over_budget: below the threshold, but not among the weakest "
                                               f"{budget.share:g} of the last {len(budget.scores)} requests "
                                               f"(max_teacher_share)")
                    continue
            if keep:
                results[i] = Result(ids[i], name, served.version, "keep", a.parsed, a.confidence, 0.0)
            else:
                escalate.append(i)
        if escalate:
            lane = self.teachers.get(name)
            option = teacher_option_of(served)
            futs = [asyncio.wrap_future(lane.submit(inputs[i], option)) for i in escalate]
            try:
                got = await asyncio.wait_for(asyncio.gather(*futs), timeout=self.cfg.teacher_timeout_s)
            except asyncio.TimeoutError:
                got = [None] * len(escalate)
            for i, t in zip(escalate, got):
                a = answers[i]
                valid = a is not None and self._valid(task, inputs[i], a)
                version = served.version if served else None
                conf = a.confidence if a is not None else None
                if t is not None and t.answer is not None:
                    results[i] = Result(ids[i], name, version, "escalate", t.answer, conf, 0.0)
                elif valid:
                    why = t.error if t is not None else f"teacher did not answer within teacher_timeout_s={self.cfg.teacher_timeout_s}"
                    results[i] = Result(ids[i], name, version, "degraded", a.parsed, conf, 0.0, reason=why)
                else:
                    why = t.error if t is not None else f"teacher did not answer within teacher_timeout_s={self.cfg.teacher_timeout_s}"
                    what = "no production version" if served is None else "the small model's answer is invalid"
                    ms = (time.perf_counter() - t0) * 1000
                    self._capture(name, version, inputs[i], ids[i], a, None, "unanswered", ms, None)
                    self.metrics.errors.labels(name, "503").inc()
                    raise GatewayError(503, f"{name}: {what} and the teacher is unavailable ({why})", request_id=ids[i])
        ms = (time.perf_counter() - t0) * 1000
        for i, r in enumerate(results):
            r.latency_ms = ms
            a = answers[i]
            r.extra["slm_answer"] = a.parsed if a is not None else None
            r.prompt_tokens, r.completion_tokens = (a.prompt_tokens, a.completion_tokens) if a is not None else (0, 0)
            teacher_answer = r.answer if r.lane == "escalate" else None
            self._capture(name, r.version, inputs[i], r.id, a, r.answer, r.lane, ms, teacher_answer,
                          drift_lane="over_budget" if i in held else None)
            self.metrics.observe(name, r.version, r.lane, ms / 1000)
            if r.lane == "keep" and self._sample_verify(name):
                from gateway.verify import VerifyJob

                self.verify.submit(VerifyJob(name, r.version, inputs[i], r.answer, r.id))
        return results  # type: ignore[return-value]

    def _prompt(self, served: Served, x: str) -> str:
        from registry.consumer import build_prompt

        return build_prompt(served.spec, served.cfg, x, self.engine.tokenizer(served.key))

    @staticmethod
    def _valid(task, x: str, a: Answer) -> bool:
        if a.parsed is None:
            return False
        try:
            return task.output_problem(a.parsed, x) is None
        except Exception:
            return False

    def _keep(self, served: Served, task, x: str, a: Answer) -> bool:
        from eval_gates.routing import usable

        if served.mode == "always" or not self._valid(task, x, a):
            return False
        if served.mode == "never":
            return True
        return usable(a.confidence) and a.confidence >= served.threshold

    def _sample_verify(self, name: str) -> bool:
        o = self.cfg.override(name)
        frac = o.verify_fraction if o.verify_fraction is not None else self.cfg.verify_fraction
        return frac > 0 and random.random() < frac

    def _capture(self, name, version, x, rid, a: Answer | None, answer, lane, ms, teacher_answer,
                 drift_lane: str | None = None) -> None:
        teacher = teacher_answer is not None
        row = {"id": rid, "skill": name, "version": version, "request": x, "answer": answer,
               "slm_answer": a.parsed if a else None, "slm_raw": a.raw if a else None,
               "confidence": a.confidence if a and a.confidence is not None and math.isfinite(a.confidence) else None,
               "lane": lane, "latency_ms": round(ms, 3),
               "reference": teacher_answer if teacher else (a.parsed if a else None),
               "reference_source": "llm" if teacher else "student",
               "accepted": True if teacher and self.cfg.accept_teacher_answers else None}
        with self.lock:
            self.recent[rid] = name
            if len(self.recent) > 100_000:
                self.recent.pop(next(iter(self.recent)))
        self.traffic.write(name, row)
        if self.drift is not None and version is not None:
            # A request the budget held back counts as escalated for drift: the version's rule sent it to the
            # teacher, and the teacher share its profile predicted is about that rule, not about the cap.
            self.drift.request(name, version, drift_lane or lane, x)  # a queue put: the monitor has its own thread

    # --- verify -----------------------------------------------------------------------------------------------------

    def _verify_ask(self, name: str, x: str, version: int | None = None):
        served = self.loaded.get((name, version)) if version is not None else self.production.get(name)
        return self.verify_teachers[name].submit(x, teacher_option_of(served)).result(timeout=self.cfg.teacher_timeout_s * 4)

    def _verify_agree(self, name: str, x: str, slm: str, teacher: str) -> bool:
        from core.records import Example

        task = self.tasks.get(name) or self.task(name, None)
        return task.is_correct(task.score(Example(id="v", skill=name, input=x, output=teacher, source="traffic"), slm))

    def _verify_done(self, job, ok, t) -> None:
        v = str(job.version)
        self.metrics.verify.labels(job.skill, v, "agree" if ok else "disagree" if ok is False else "failed").inc()
        est = self.verify.estimate(job.skill, job.version)
        for bound, key in (("estimate", "error_rate"), ("low", "error_rate_low"), ("high", "error_rate_high")):
            if est[key] is not None:
                self.metrics.verify_error.labels(job.skill, v, bound).set(est[key])
        live = self.live(job.skill, job.version)["served_agreement"]
        for bound in ("estimate", "low", "high"):
            if live[bound] is not None:
                self.metrics.served_quality.labels(job.skill, v, bound).set(live[bound])
        if ok is not None:
            self.traffic.update(job.skill, job.request_id, {"verified": ok})
        if self.drift is not None:
            self.drift.verify(job.skill, job.version, ok)

    # --- feedback ---------------------------------------------------------------------------------------------------

    def feedback(self, request_id: str, verdict: str, answer: str | None = None, skill: str | None = None) -> str:
        """Settle a traffic row: accepted, rejected, or corrected (with `answer`: reference_source human).
        Returns the skill. Raises GatewayError 404 for an id that is neither a recent answer of this
        process nor a row of the skill's table, 422 for a bad body or the call id of a multi-input
        request (naming its per-input ids), 503 when the table cannot be checked. Blocking (it may
        read the traffic database): call it off the event loop."""
        from datetime import datetime, timezone

        for where, text in (("id", request_id), ("answer", answer), ("skill", skill)):
            if isinstance(text, str) and unencodable(text) is not None:
                raise GatewayError(422, f"{where}: not valid Unicode text (a lone surrogate)", field=where, code="invalid_text")
        name = self.recent.get(request_id)
        if name is None:
            parts = [k for k in (f"{request_id}-{i}" for i in range(self.cfg.max_inputs)) if k in self.recent]
            if parts:
                raise GatewayError(422, f"id: {request_id!r} names a call of {len(parts)} inputs; send feedback for one of "
                                        f"its per-input ids: {', '.join(parts)}", field="id", ids=parts, code="ambiguous_id")
            name = skill
            if name is None:
                raise GatewayError(404, f"id: unknown request id {request_id!r} (pass 'skill' for requests older than this "
                                        f"process)", field="id", code="unknown_id")
            if name not in self.skills:
                raise GatewayError(404, f"unknown skill {name!r}; known: {', '.join(self.skills)}", known=self.skills,
                                   field="skill")
            try:
                found = self.traffic.exists(name, request_id)
            except Exception as e:
                raise GatewayError(503, f"id: cannot check {request_id!r} in the traffic table ({type(e).__name__}); "
                                        f"retry later", field="id") from None
            if not found:
                raise GatewayError(404, f"id: no request {request_id!r} in {name}'s traffic table", field="id",
                                   code="unknown_id")
        elif skill is not None and skill != name:
            raise GatewayError(422, f"skill: request {request_id!r} was answered by {name}, not {skill}", field="skill")
        now = datetime.now(timezone.utc)
        if verdict == "accepted":
            values = {"accepted": True}
        elif verdict == "rejected":
            values = {"accepted": False}
        elif verdict == "corrected":
            if not answer:
                raise GatewayError(422, "answer: required when verdict is 'corrected'", field="answer")
            task = self.tasks.get(name) or self.task(name, None)
            from core.prompting import parse_output

            parsed = parse_output(task.cfg, answer) if task is not None else answer
            if parsed is None:
                raise GatewayError(422, f"answer: not a valid answer for {name}", field="answer")
            values = {"accepted": True, "reference": parsed, "reference_source": "human"}
        else:
            raise GatewayError(422, "verdict: one of accepted, rejected, corrected", field="verdict")
        values.update(feedback=verdict, feedback_at=now)
        if not self.traffic.update(name, request_id, values):
            raise GatewayError(503, "the traffic queue is full; retry the feedback later")
        return name

    # --- status -----------------------------------------------------------------------------------------------------

    def live(self, name: str, version: int | None) -> dict:
        """Live figures of one version since this process started: answers per lane, the teacher share, the
        verify lane's estimate, and the served answers' agreement with the teacher estimated from it (kept
        answers agree at the verify rate, escalated answers are the teacher's), with the exact 95% interval
        carried through the kept share. None where nothing was measured yet."""
        lanes = self.metrics.lane_counts(name, version)
        total = sum(lanes.values())
        est = self.verify.estimate(name, version)
        kept = lanes.get("keep", 0) / total if total else None
        agree = {"estimate": None, "low": None, "high": None}
        if kept is not None and est["error_rate"] is not None:
            for bound, key in (("estimate", "error_rate"), ("low", "error_rate_high"), ("high", "error_rate_low")):
                agree[bound] = round(kept * (1 - est[key]) + (1 - kept), 4)
        agree["basis"] = ("kept answers at the verify lane's agreement rate, escalated answers counted as the "
                          "teacher's; measured against the teacher, not against gold labels")
        return {"requests": total, "lanes": lanes,
                "teacher_share": round(lanes.get("escalate", 0) / total, 4) if total else None,
                "verify": est, "served_agreement": agree}

    def describe(self) -> list[dict]:
        out = []
        for name in self.skills:
            s = self.production.get(name)
            r = (s.routing if s else None) or {}
            out.append({"id": name, "object": "model", "owned_by": "distill",
                        "version": s.version if s else None, "mode": s.mode if s else "escalate",
                        "threshold": s.threshold if s else None, "signal": s.signal if s else None,
                        "verify": self.verify.estimate(name, s.version if s else None),
                        "live": self.live(name, s.version if s else None),
                        "drift": self.drift.monitor.status(name) if self.drift is not None else None,
                        # What the version's run measured at the published point (routing.json).
                        "measured": {"policy": r.get("policy"), "teacher_share": r.get("teacher_share"),
                                     "served": r.get("served"), "student_alone": (r.get("student_alone") or {}).get("served"),
                                     "teacher_alone": (r.get("teacher_alone") or {}).get("served")} if r.get("version") == 2 else None})
        return out


def teacher_option_of(served: Served | None) -> dict | None:
    """The teacher option the version's run measured its teacher lane with (routing.json's teacher_option:
    answerer, shots, seed, prior), or None for a version published before it was recorded."""
    opt = (served.routing or {}).get("teacher_option") if served is not None else None
    return opt if isinstance(opt, dict) else None


def new_request_id() -> str:
    return "req-" + uuid.uuid4().hex[:24]


# A retired version used this recently is not unloaded yet: its request may be between lookup and queueing.
REAP_GRACE_S = 2.0


def unencodable(text: str) -> int | None:
    """The index of the first character UTF-8 cannot encode (a lone surrogate, which a JSON body can
    carry as an escape), or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as e:
        return e.start


def _no_nan(answers: list) -> list:
    """Every backend: a NaN/inf confidence is no confidence (routed so, JSON null)."""
    for a in answers:
        if a is not None and a.confidence is not None and not math.isfinite(a.confidence):
            a.confidence = None
    return answers


class SharedLane:
    """A served version's handle on its base model's shared batcher (the DynamicBatcher interface the service
    uses: submit, depth, inflight, close). Closing a lane refuses its new items and waits for its own to settle;
    the shared batcher lives on for the other versions (the service closes it at shutdown)."""

    def __init__(self, shared: DynamicBatcher, served: "Served"):
        self.shared, self.served = shared, served
        self.inflight = 0
        self._lock = threading.Lock()
        self._closed = False
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, item) -> Future:
        """Queue one (prompt, input) of this version; raises RuntimeError once closed."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.served.key}: closed")
            self.inflight += 1
            self._idle.clear()
        fut = self.shared.submit((self.served, item))
        fut.add_done_callback(self._settled)
        return fut

    def _settled(self, _fut) -> None:
        with self._lock:
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    def depth(self) -> int:
        return self.shared.depth()

    def close(self, wait: bool = True) -> None:
        with self._lock:
            self._closed = True
        if wait:
            self._idle.wait(timeout=60)


def _input_fault(e: BaseException) -> bool:
    """Whether a failed batch may be the fault of one of its items (then each is decoded alone):
    not when the backend is unreachable or keeps failing."""
    from gateway.engine_openai import RemoteUnavailable

    return not isinstance(e, (RemoteUnavailable, MemoryError))
