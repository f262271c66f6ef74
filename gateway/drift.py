"""Drift: the served version's live figures against what its run predicted, and the event that starts a run.

Per skill, over a sliding window of the production version's most recent requests (skill.yaml `drift:`,
core.config.DriftConfig), three signals, each against its band:

    teacher_share   escalated requests / requests          routing.json's share at the served point +- tolerance
    verify_error    verify-lane disagreements / outcomes   routing.json's kept-error bound + margin, at most
    novelty         novel inputs / requests                drift.novelty_ceiling, at most (filters/novelty.py)

Each is a share of its window, judged with the window's exact (Clopper-Pearson) 95% interval: out of band only
when the whole interval lies outside the band, so a small window's chance swings are not drift.

A signal that stays out of its band for `sustain_requests` requests and `sustain_minutes` minutes makes the
monitor return a DriftEvent, at most one per skill per `cooldown_minutes`. The gateway (gateway/service.py)
hands each answered request to a DriftWorker (a bounded queue, one thread: the request path only enqueues),
which runs the monitor, emits the event to Prefect (`distill.drift.detected`, resource
`distill.skill.<skill>`) and records it in the traffic database (table `distill_drift_triggers`), so a
restarted gateway keeps the cool-down and `distill status` shows the last trigger. prefect.yaml's trigger on
the event runs the skill's deployment.

Escalated means routed to the teacher by the version's rule: lanes escalate, degraded (the teacher did not
answer in time) and unanswered all count, since the signal is about the routing decision, not about the
teacher's uptime; so does a request a live budget kept on the student (gateway/budget.py, over_budget).

Clocks: wall-clock seconds (time.time()), because the cool-down outlives the process. A clock that goes
backwards is held at the latest time seen (windows never grow older entries back); a recorded trigger
stamped in the future (a clock set back since) counts as now, so it silences at most one cool-down.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from core.config import DriftConfig
from eval_gates.stats import clopper_pearson

log = logging.getLogger("distill.gateway")

EVENT = "distill.drift.detected"
SIGNALS = ("teacher_share", "verify_error", "novelty")
TRIGGERS_TABLE = "distill_drift_triggers"
ESCALATED_LANES = frozenset({"escalate", "degraded", "unanswered", "over_budget"})  # over_budget: the rule escalated it, the live budget kept it


def resource_id(skill: str) -> str:
    """The Prefect resource id of a skill's drift events (prefect.yaml's triggers match it)."""
    return f"distill.skill.{skill}"


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


# --- bands -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Band:
    """In band: low <= value <= high (None: no bound on that side). `basis` says where the bound came from."""

    low: float | None
    high: float | None
    basis: str

    def to_dict(self) -> dict[str, Any]:
        return {"low": None if self.low is None else round(self.low, 4),
                "high": None if self.high is None else round(self.high, 4), "basis": self.basis}


def served_point(routing: dict, mode: str, threshold: float | None) -> dict | None:
    """The point of routing.json's both-lanes curve (version 2) the gateway serves at: mode "always" the first
    point (everything escalated), "never" the last (every valid answer kept), "threshold" the point with that
    exact threshold (published thresholds are exact floats). None when the profile has no curve or no such point
    (an older profile, or an override's threshold that is not on it)."""
    curve = routing.get("curve") if routing.get("version") == 2 else None
    if not isinstance(curve, list) or not curve or not all(isinstance(p, dict) for p in curve):
        return None
    if mode == "always":
        return curve[0]
    if mode == "never":
        return max(curve, key=lambda p: p.get("kept") or 0)
    for p in curve:
        if threshold is not None and p.get("threshold") == threshold:
            return p
    return None


def teacher_share_band(routing: dict, mode: str, threshold: float | None, tolerance: float) -> Band | None:
    """The teacher-share band of the served point: its predicted share +- `tolerance`, clipped to [0, 1].
    The share is the curve point's (served_point), else routing.json's teacher_share / escalation_rate when the
    gateway serves the published point, else (mode "always") 1.0. None: nothing predicts it."""
    pt = served_point(routing, mode, threshold)
    share, basis = (_finite(pt.get("teacher_share")), "routing.json curve point") if pt else (None, "")
    if share is None and mode == "always":
        share, basis = 1.0, "escalation always"
    if share is None:
        published = routing.get("threshold") if "threshold" in routing else (routing.get("escalation") or {}).get("confidence_threshold")
        same = (mode == "threshold" and threshold is not None and published == threshold) or \
               (mode == "never" and routing.get("mode") == "keep_all_valid")
        share = _finite(routing.get("teacher_share", routing.get("escalation_rate"))) if same else None
        basis = "routing.json teacher_share"
    if share is None:
        return None
    return Band(max(0.0, share - tolerance), min(1.0, share + tolerance), f"{basis} {share:.4f} +- {tolerance:g}")


def verify_error_band(routing: dict, mode: str, threshold: float | None, margin: float) -> Band | None:
    """The verify error's band: up to the served point's exact upper bound on the kept error rate (curve point
    kept_error_upper, else routing.json's kept_error_rate_upper) plus `margin`. None without a bound (mode
    "always" keeps nothing, so nothing is verified)."""
    if mode == "always":
        return None
    pt = served_point(routing, mode, threshold)
    bound = _finite(pt.get("kept_error_upper")) if pt else None
    basis = "routing.json curve point kept_error_upper"
    if bound is None:
        bound, basis = _finite(routing.get("kept_error_rate_upper")), "routing.json kept_error_rate_upper"
    if bound is None:
        return None
    return Band(None, min(1.0, bound + margin), f"{basis} {bound:.4f} + {margin:g}")


# --- the monitor -----------------------------------------------------------------------------------------------------


@dataclass
class DriftEvent:
    """One detection: what emit_event sends (`prefect_kwargs`) and what the trigger store records."""

    skill: str
    version: int
    signal: str
    at: float  # wall-clock seconds
    payload: dict[str, Any]

    def prefect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of prefect.events.emit_event for this detection."""
        return {"event": EVENT, "occurred": datetime.fromtimestamp(self.at, timezone.utc),
                "resource": {"prefect.resource.id": resource_id(self.skill), "prefect.resource.name": self.skill,
                             "distill.version": str(self.version), "distill.signal": self.signal},
                "payload": self.payload}


@dataclass
class _Window:
    version: int
    cfg: DriftConfig
    bands: dict[str, Band | None]
    novelty: Any  # filters.novelty.NoveltyIndex | None
    novelty_why: str | None
    requests: deque = field(default_factory=deque)  # (t, escalated, novel | None)
    verified: deque = field(default_factory=deque)  # (t, disagreed)
    out: dict[str, list] = field(default_factory=dict)  # signal -> [first time out, requests out since]
    seen: int = 0
    text: Callable[[str], str] | None = None  # the matching text novelty compares
    # Running sums over the deques (updated on append and eviction: an observation is O(1)).
    escalated: int = 0
    judged: int = 0
    novel: int = 0
    disagreed: int = 0

    def add_request(self, t: float, escalated: bool, novel: bool | None) -> None:
        if len(self.requests) == self.requests.maxlen:
            self._drop_request(self.requests[0])
        self.requests.append((t, escalated, novel))
        self.escalated += escalated
        self.judged += novel is not None
        self.novel += bool(novel)

    def _drop_request(self, r: tuple) -> None:
        self.escalated -= r[1]
        self.judged -= r[2] is not None
        self.novel -= bool(r[2])

    def add_verify(self, t: float, disagreed: bool) -> None:
        if len(self.verified) == self.verified.maxlen:
            self.disagreed -= self.verified[0][1]
        self.verified.append((t, disagreed))
        self.disagreed += disagreed

    def prune(self, oldest: float) -> None:
        while self.requests and self.requests[0][0] < oldest:
            self._drop_request(self.requests.popleft())
        while self.verified and self.verified[0][0] < oldest:
            self.disagreed -= self.verified.popleft()[1]


@functools.lru_cache(maxsize=4096)
def _exact_interval(k: int, n: int) -> tuple[float | None, float | None]:
    """eval_gates.stats.clopper_pearson, remembered: the verify window asks for the same (k, n) again and again."""
    return clopper_pearson(k, n)


class DriftMonitor:
    """Sliding windows per skill over its production version, the signals against their bands, and when to fire.

    Thread-safe (one lock). `set_version` (at load and after a swap; a new version resets the window),
    `observe` per answered request and `observe_verify` per verify outcome return a DriftEvent when one is due
    (the caller emits it), else None. `last_trigger`: skill -> wall-clock seconds of the last event, e.g. read
    back from the TriggerStore at start so a restart keeps the cool-down. `clock`: wall-clock seconds."""

    def __init__(self, clock: Callable[[], float] = time.time, last_trigger: dict[str, float] | None = None):
        self.clock = clock
        self.windows: dict[str, _Window] = {}
        self.last_trigger: dict[str, float] = dict(last_trigger or {})
        self.suppressed: dict[str, int] = {}  # skill -> detections inside the cool-down (not emitted)
        self._now = float("-inf")
        self._lock = threading.Lock()

    # --- time --------------------------------------------------------------------------------------------------

    def _time(self, now: float | None) -> float:
        """`now` (or the clock), never earlier than a time already seen: a clock set back holds still."""
        t = self.clock() if now is None else float(now)
        self._now = max(self._now, t)
        return self._now

    # --- versions ----------------------------------------------------------------------------------------------

    def set_version(self, skill: str, version: int, cfg: DriftConfig, routing: dict, mode: str,
                    threshold: float | None, novelty: Any = None, novelty_why: str | None = None,
                    text: Callable[[str], str] | None = None) -> None:
        """Watch `version` of `skill` from now on: the bands from its routing.json at the served point (mode and
        threshold as gateway.service.keep_rule gives them) and `cfg`; `novelty` a filters.novelty.NoveltyIndex
        or None (`novelty_why` says why); `text` the task type's matching text of an input (what novelty.json's
        signatures were computed on; default the input itself). The same version again keeps its window;
        another one starts empty."""
        with self._lock:
            w = self.windows.get(skill)
            if w is not None and w.version == version:
                return
            bands = {"teacher_share": teacher_share_band(routing, mode, threshold, cfg.teacher_share_tolerance),
                     "verify_error": verify_error_band(routing, mode, threshold, cfg.verify_error_margin),
                     "novelty": Band(None, cfg.novelty_ceiling, f"drift.novelty_ceiling {cfg.novelty_ceiling:g}")
                     if novelty is not None and getattr(novelty, "threshold", None) is not None else None}
            if novelty is not None and getattr(novelty, "threshold", None) is None:
                novelty_why, novelty = novelty_why or getattr(novelty, "unavailable", None), None
            self.windows[skill] = _Window(version, cfg, bands, novelty, novelty_why,
                                          deque(maxlen=cfg.window_requests), deque(maxlen=cfg.verify_window),
                                          text=text)

    def drop(self, skill: str) -> None:
        """Stop watching `skill` (it has no production version any more)."""
        with self._lock:
            self.windows.pop(skill, None)

    def version(self, skill: str) -> int | None:
        """The version whose window is open for `skill`, or None."""
        w = self.windows.get(skill)
        return w.version if w else None

    # --- observations ------------------------------------------------------------------------------------------

    def novel(self, skill: str, version: int, texts: list[str]) -> list[bool | None]:
        """Novelty of each input against the watched version's training inputs (None: no novelty index, or
        another version). Call it outside the lock's hot path: it hashes the texts (about 0.1 ms each)."""
        w = self.windows.get(skill)
        if w is None or w.version != version or w.novelty is None or not texts:
            return [None] * len(texts)
        try:
            return list(w.novelty.novel([w.text(x) for x in texts] if w.text else texts))
        except Exception as e:  # a text the hasher cannot take must not stop the monitor
            log.warning("drift %s: novelty failed (%s)", skill, e)
            return [None] * len(texts)

    def observe(self, skill: str, version: int | None, lane: str, novel: bool | None = None,
                now: float | None = None) -> DriftEvent | None:
        """One answered request of `skill` by `version` on `lane` (keep | escalate | degraded | unanswered);
        `novel` from `novel()` (None: not measured). Requests of other versions than the watched one are
        ignored. Returns the DriftEvent when one is due."""
        with self._lock:
            t = self._time(now)
            w = self.windows.get(skill)
            if w is None or version != w.version:
                return None
            w.add_request(t, lane in ESCALATED_LANES, novel)
            w.seen += 1
            return self._evaluate(skill, w, t, request=True)

    def observe_verify(self, skill: str, version: int | None, agreed: bool | None,
                       now: float | None = None) -> DriftEvent | None:
        """One verify-lane outcome (True agree, False disagree, None failed: ignored) for `version` of `skill`."""
        with self._lock:
            t = self._time(now)
            w = self.windows.get(skill)
            if w is None or version != w.version or agreed is None:
                return None
            w.add_verify(t, not agreed)
            return self._evaluate(skill, w, t, request=False)

    # --- evaluation --------------------------------------------------------------------------------------------

    @staticmethod
    def _prune(w: _Window, t: float) -> None:
        if w.cfg.window_minutes is None:
            return
        w.prune(t - w.cfg.window_minutes * 60)

    def _figures(self, w: _Window, t: float) -> dict[str, dict[str, Any]]:
        """Each signal's value, count, band and state (in | out | insufficient | no_band) at time `t`."""
        self._prune(w, t)
        c = w.cfg
        n, esc = len(w.requests), w.escalated
        k_v, n_v = w.disagreed, len(w.verified)
        low, high = _exact_interval(k_v, n_v)
        out: dict[str, dict[str, Any]] = {
            "teacher_share": {"value": esc / n if n else None, "n": n, "least": c.min_requests,
                              "interval": list(_exact_interval(esc, n)) if n else None},
            "verify_error": {"value": k_v / n_v if n_v else None, "n": n_v, "least": c.min_verified,
                             "interval": [low, high] if n_v else None},
            "novelty": {"value": w.novel / w.judged if w.judged else None, "n": w.judged, "least": c.min_requests,
                        "interval": list(_exact_interval(w.novel, w.judged)) if w.judged else None},
        }
        for sig, f in out.items():
            band = w.bands.get(sig)
            f["band"] = band.to_dict() if band else None
            if band is None:
                f["state"] = "no_band"
                if sig == "novelty":
                    f["why"] = w.novelty_why or "no novelty index for this version"
            elif f["n"] < f["least"]:
                f["state"] = "insufficient"
            else:
                # Out only when the window's whole exact (Clopper-Pearson) interval is outside the band: each signal
                # is a share of a window, and a window of 30 requests at a true 0.2 moves by +-0.15 by chance alone
                # (the flywheel benchmark's in-distribution stream left a +-0.1 band on the point estimate, a
                # false alarm, before the shift).
                lo, hi = f["interval"]
                f["state"] = "out" if (band.low is not None and hi is not None and hi < band.low) or \
                    (band.high is not None and lo is not None and lo > band.high) else "in"
            if f["value"] is not None:
                f["value"] = round(f["value"], 4)
            run = w.out.get(sig)
            f["out_since"] = _iso(run[0]) if run else None
            f["out_requests"] = run[1] if run else 0
        return out

    def _evaluate(self, skill: str, w: _Window, t: float, request: bool) -> DriftEvent | None:
        figs = self._figures(w, t)
        for sig, f in figs.items():
            if f["state"] != "out":
                w.out.pop(sig, None)  # back in band, or not judged: the run starts again
            else:
                run = w.out.setdefault(sig, [t, 0])
                run[1] += request
        c = w.cfg
        due = [sig for sig in SIGNALS if sig in w.out and w.out[sig][1] >= c.sustain_requests
               and t - w.out[sig][0] >= c.sustain_minutes * 60]
        if not due or not c.enabled:  # drift.enabled false: measured and shown, never emitted
            return None
        last = self.last_trigger.get(skill)
        if last is not None and last > t:
            last = self.last_trigger[skill] = t  # stamped in the future (a clock set back): counts as now
        if last is not None and t - last < c.cooldown_minutes * 60:
            self.suppressed[skill] = self.suppressed.get(skill, 0) + 1
            return None
        sig = due[0]
        f = figs[sig]
        self.last_trigger[skill] = t
        for s in SIGNALS:  # refresh the figures' run counters for the payload
            figs[s]["out_since"] = _iso(w.out[s][0]) if s in w.out else None
            figs[s]["out_requests"] = w.out[s][1] if s in w.out else 0
        payload = {"skill": skill, "version": w.version, "signal": sig, "value": f["value"], "band": f["band"],
                   "n": f["n"], "interval": f.get("interval"), "out_of_band_since": figs[sig]["out_since"],
                   "out_of_band_requests": figs[sig]["out_requests"],
                   "window": {"requests": c.window_requests, "minutes": c.window_minutes,
                              "verify_outcomes": c.verify_window},
                   "cooldown_minutes": c.cooldown_minutes, "signals": figs}
        return DriftEvent(skill, w.version, sig, t, payload)

    # --- status ------------------------------------------------------------------------------------------------

    def status(self, skill: str, now: float | None = None) -> dict[str, Any] | None:
        """{"version", "enabled", "signals": {signal: {value, n, band, state, interval?, out_since, out_requests}},
        "last_trigger" (ISO 8601 or None), "cooldown_until", "suppressed"} for `skill`, None when not watched."""
        with self._lock:
            t = self._time(now)
            w = self.windows.get(skill)
            if w is None:
                return None
            last = self.last_trigger.get(skill)
            return {"version": w.version, "enabled": w.cfg.enabled, "signals": self._figures(w, t),
                    "last_trigger": _iso(last),
                    "cooldown_until": _iso(last + w.cfg.cooldown_minutes * 60) if last is not None else None,
                    "suppressed": self.suppressed.get(skill, 0)}


# --- where triggers are kept: a table in the traffic database --------------------------------------------------------


def triggers_table(metadata):
    """distill_drift_triggers: one row per emitted (or attempted) drift event."""
    import sqlalchemy as sa

    return sa.Table(
        TRIGGERS_TABLE, metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("skill", sa.String(128), nullable=False, index=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("signal", sa.String(32), nullable=False),
        sa.Column("at", sa.Float, nullable=False),  # wall-clock seconds (time.time())
        sa.Column("emitted", sa.Boolean, nullable=False),  # False: no Prefect API to send it to, or sending failed
        sa.Column("payload", sa.Text, nullable=False),
    )


class TriggerStore:
    """The drift triggers in the traffic database (SQLAlchemy `url`, the gateway's traffic URL): `record` one,
    `last()` the latest per skill. The table is created on first use. Raises what SQLAlchemy raises when the
    database does not answer (callers on the serving path catch it)."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        from gateway.traffic import ensure_sqlite_dir

        ensure_sqlite_dir(url)
        kw: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            kw["connect_args"] = {"connect_timeout": 3}  # a database away must not hold the gateway's start
        elif url.startswith("sqlite"):
            kw["connect_args"] = {"timeout": 5}
        self.engine = sa.create_engine(url, **kw)
        self.table = triggers_table(sa.MetaData())
        self._created = False

    def _ensure(self, conn) -> None:
        if not self._created:
            self.table.create(conn, checkfirst=True)
            self._created = True

    def record(self, event: DriftEvent, emitted: bool) -> None:
        """Insert one trigger row."""
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            self._ensure(conn)
            conn.execute(sa.insert(self.table).values(skill=event.skill, version=event.version, signal=event.signal,
                                                      at=event.at, emitted=emitted,
                                                      payload=json.dumps(event.payload, allow_nan=False, default=str)))

    def last(self) -> dict[str, dict[str, Any]]:
        """skill -> its latest trigger {"at" (seconds), "version", "signal", "emitted", "payload"}; {} when none."""
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            if not sa.inspect(conn).has_table(TRIGGERS_TABLE):
                return {}
            t = self.table
            latest = sa.select(t.c.skill, sa.func.max(t.c.id).label("id")).group_by(t.c.skill).subquery()
            rows = conn.execute(sa.select(t).join(latest, t.c.id == latest.c.id)).mappings().all()
        return {r["skill"]: {"at": r["at"], "version": r["version"], "signal": r["signal"], "emitted": r["emitted"],
                             "payload": json.loads(r["payload"])} for r in rows}

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


# --- sending the event ---------------------------------------------------------------------------------------------


def prefect_api_configured() -> bool:
    """Whether PREFECT_API_URL names a Prefect API (a server or Cloud) to send events to. Without one,
    emit_event would start an ephemeral API inside the gateway, where no deployment or trigger lives."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def emit_to_prefect(event: DriftEvent) -> bool:
    """Send `event` with prefect.events.emit_event when a Prefect API is configured; True when it was handed to
    Prefect's events worker (which sends it in the background), False when there is no API (logged)."""
    if not prefect_api_configured():
        log.warning("drift %s: %s out of band (%s); no Prefect API (PREFECT_API_URL) to send %s to: recorded only",
                    event.skill, event.signal, event.payload.get("value"), EVENT)
        return False
    from prefect.events import emit_event

    return emit_event(**event.prefect_kwargs()) is not None


class DriftWorker:
    """The gateway's side: the request path only enqueues (`request`, `verify`; a full queue drops and counts,
    never waits); one thread computes novelty in batches, runs the monitor, and for each DriftEvent calls
    `emit` (default emit_to_prefect) and records it in `store`. Before its first observation the thread reads
    the last trigger per skill back from `store` (so a restart keeps the cool-down; a database that does not
    answer is logged and the cool-downs start empty). `set_version`/`drop`/`status` go to the monitor."""

    def __init__(self, monitor: DriftMonitor, store: TriggerStore | None = None,
                 emit: Callable[[DriftEvent], bool] = emit_to_prefect, max_queue: int = 10_000):
        self.monitor, self.store, self.emit = monitor, store, emit
        self.q: queue.Queue = queue.Queue(maxsize=max_queue)
        self.lost = 0
        self.events: list[DriftEvent] = []  # emitted by this process (newest last, at most 100)
        self._stop = threading.Event()
        self._idle = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="drift", daemon=True)
        self.thread.start()

    def _put(self, item: tuple) -> bool:
        try:
            self.q.put_nowait(item)
            return True
        except queue.Full:
            self.lost += 1
            return False

    def request(self, skill: str, version: int | None, lane: str, text: str | None) -> bool:
        """Queue one answered request (a few microseconds; False: the queue was full, counted in `lost`)."""
        self._idle.clear()
        return self._put(("request", skill, version, lane, text, time.time()))

    def verify(self, skill: str, version: int | None, agreed: bool | None) -> bool:
        """Queue one verify outcome."""
        self._idle.clear()
        return self._put(("verify", skill, version, agreed, time.time()))

    def depth(self) -> int:
        """Observations waiting in the queue (the gateway's /metrics queue depth `drift`)."""
        return self.q.qsize()

    def _restore(self) -> None:
        if self.store is None:
            return
        try:
            last = {k: v["at"] for k, v in self.store.last().items()}
        except Exception as e:
            log.warning("drift: cannot read the last triggers from the traffic database (%s: %s); cool-downs start "
                        "empty", type(e).__name__, e)
            return
        with self.monitor._lock:
            for skill, at in last.items():
                self.monitor.last_trigger[skill] = max(at, self.monitor.last_trigger.get(skill, at))

    def _loop(self) -> None:
        self._restore()
        while not self._stop.is_set() or not self.q.empty():
            try:
                items = [self.q.get(timeout=0.1)]
            except queue.Empty:
                self._idle.set()
                continue
            while len(items) < 256:
                try:
                    items.append(self.q.get_nowait())
                except queue.Empty:
                    break
            try:
                self._handle(items)
            except Exception:
                log.exception("drift: a batch of %d observations failed", len(items))

    def _handle(self, items: list[tuple]) -> None:
        # Novelty for the whole batch at once (one MinHash call per skill and version).
        groups: dict[tuple[str, int | None], list[int]] = {}
        for i, it in enumerate(items):
            if it[0] == "request" and it[4] is not None:
                groups.setdefault((it[1], it[2]), []).append(i)
        novel: dict[int, bool | None] = {}
        for (skill, version), idx in groups.items():
            for i, v in zip(idx, self.monitor.novel(skill, version, [items[i][4] for i in idx])):
                novel[i] = v
        for i, it in enumerate(items):
            if it[0] == "request":
                ev = self.monitor.observe(it[1], it[2], it[3], novel.get(i), now=it[5])
            else:
                ev = self.monitor.observe_verify(it[1], it[2], it[3], now=it[4])
            if ev is not None:
                self._fire(ev)

    def _fire(self, ev: DriftEvent) -> None:
        try:
            emitted = bool(self.emit(ev))
        except Exception as e:
            log.error("drift %s: cannot emit %s (%s: %s)", ev.skill, EVENT, type(e).__name__, e)
            emitted = False
        log.warning("drift %s@%s: %s %s out of band %s over %d; event %s", ev.skill, ev.version, ev.signal,
                    ev.payload.get("value"), ev.payload.get("band"), ev.payload.get("n"),
                    "emitted" if emitted else "not emitted")
        self.events = (self.events + [ev])[-100:]
        if self.store is not None:
            try:
                self.store.record(ev, emitted)
            except Exception as e:  # the cool-down still holds in this process
                log.error("drift %s: cannot record the trigger (%s: %s)", ev.skill, type(e).__name__, e)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued observation is handled (tests, shutdown). True when drained."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.q.empty() and self._idle.wait(0.05) and self.q.empty():
                return True
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Handle what is queued, stop the thread (waiting at most `timeout` seconds), close the store."""
        self._stop.set()
        self.thread.join(timeout=timeout)
        if self.store is not None:
            self.store.close()


# --- status from the stores (distill status) -------------------------------------------------------------------------


def window_from_store(monitor: DriftMonitor, skill: str, version: int, url: str, table: str) -> int:
    """Feed `monitor` (already watching `version` of `skill`) the version's most recent rows of the traffic table
    `table` in order of their insertion time: its window_requests latest requests (lane, request text) and its
    verify_window latest verify outcomes (the `verified` column). Returns the rows read; 0 without the table.
    The request text is the stored one, scrubbed of personal data (placeholders), unlike the live window's."""
    import sqlalchemy as sa

    from gateway.traffic import traffic_table

    w = monitor.windows.get(skill)
    if w is None or w.version != version:
        return 0
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(table):
                return 0
            t = traffic_table(sa.MetaData(), table)
            reqs = conn.execute(sa.select(t.c.created_at, t.c.lane, t.c.request).where(t.c.version == version)
                                .order_by(t.c.created_at.desc()).limit(w.cfg.window_requests)).all()
            ver = conn.execute(sa.select(t.c.created_at, t.c.verified).where(t.c.version == version)
                               .where(t.c.verified.is_not(None)).order_by(t.c.created_at.desc())
                               .limit(w.cfg.verify_window)).all()
    finally:
        engine.dispose()

    def ts(x) -> float:
        return (x if x.tzinfo else x.replace(tzinfo=timezone.utc)).timestamp()

    novel = monitor.novel(skill, version, [r.request for r in reversed(reqs)])
    feed = [(ts(r.created_at), 0, "request", r.lane, n) for r, n in zip(reversed(reqs), novel)]
    feed += [(ts(r.created_at), 1, "verify", bool(r.verified), None) for r in reversed(ver)]
    last = dict(monitor.last_trigger)
    for at, _, kind, value, n in sorted(feed, key=lambda x: (x[0], x[1])):
        if kind == "request":
            monitor.observe(skill, version, value, n, now=at)
        else:
            monitor.observe_verify(skill, version, value, now=at)
    monitor.last_trigger = last  # replaying is not triggering
    return len(feed)


def skill_status(skill: str, registry, url: str, profile: str = "default", now: float | None = None,
                 triggers: dict[str, dict] | None = None) -> dict[str, Any]:
    """What `distill status` shows for one skill: {"skill", "version" (production, None without one), "signals"
    (as DriftMonitor.status, from the traffic table's latest rows of that version, bands from its routing.json
    and novelty.json at the published routing point: the gateway's per-skill overrides are not known here),
    "last_trigger" ({"at" ISO 8601, "signal", "version", "emitted", "value"} or None), "cooldown_until",
    "error" (why there are no signals, or None)}. `triggers`: TriggerStore.last() (read once for all skills)."""
    from core.config import DriftConfig
    from gateway.config import SkillOverride
    from gateway.service import keep_rule
    from core.workdir import traffic_table_name

    out: dict[str, Any] = {"skill": skill, "version": None, "signals": None, "last_trigger": None,
                           "cooldown_until": None, "error": None}
    last = (triggers or {}).get(skill)
    try:
        from core.skills import load_skill

        cfg = load_skill(skill, profile).config.drift
    except Exception:
        cfg = None
    version = registry.aliases(skill).get("production")
    if version is None:
        out["error"] = "no production version"
    else:
        from registry.consumer import read_spec, skill_config

        out["version"] = version = int(version)
        folder = registry.resolve(skill, version=version)
        spec = read_spec(folder)
        scfg = skill_config(spec, name=skill)
        cfg = cfg or scfg.drift or DriftConfig()
        routing = json.loads((folder / "routing.json").read_text(encoding="utf-8")) \
            if (folder / "routing.json").is_file() else {}
        mode, thr = keep_rule(routing, SkillOverride())
        novelty, why = None, f"version {version} has no novelty.json (published before drift monitoring)"
        if (folder / "novelty.json").is_file():
            from filters.novelty import NoveltyIndex

            try:
                novelty, why = NoveltyIndex.from_dict(json.loads((folder / "novelty.json").read_text("utf-8"))), None
            except Exception as e:
                why = f"novelty.json cannot be used ({e})"
        from core.tasks import get_task

        monitor = DriftMonitor(last_trigger={skill: last["at"]} if last else None)
        monitor.set_version(skill, version, cfg, routing, mode, thr, novelty, why, text=get_task(scfg).match_text)
        window_from_store(monitor, skill, version, url, traffic_table_name(skill))
        st = monitor.status(skill, now=now)
        out["signals"], out["cooldown_until"] = st["signals"], st["cooldown_until"]
        out["enabled"] = cfg.enabled
    if last:
        out["last_trigger"] = {"at": _iso(last["at"]), "signal": last["signal"], "version": last["version"],
                               "emitted": last["emitted"], "value": (last.get("payload") or {}).get("value")}
        if out["cooldown_until"] is None and cfg is not None:
            out["cooldown_until"] = _iso(last["at"] + cfg.cooldown_minutes * 60)
    return out


__all__ = ["Band", "DriftEvent", "DriftMonitor", "DriftWorker", "EVENT", "SIGNALS", "TRIGGERS_TABLE", "TriggerStore",
           "emit_to_prefect", "resource_id", "skill_status", "window_from_store", "served_point", "teacher_share_band", "verify_error_band"]
