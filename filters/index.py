"""The persistent, incremental near-dedup index of one skill.

What it holds: the MinHash signature of every example the skill has ever accepted
(the pool), so each run's candidates are compared with all of them, plus, for the
length of one run, the seeds and the candidates accepted so far in the run.

Where it lives:
- local (default): DISTILL_HOME/index/<skill>/ with `manifest.json` (the signature
  parameters, the count and the list of chunk files), `sig-NNNNNN.npy` (uint32
  signatures) and `ids-NNNNNN.json` (their example ids). The manifest is the commit
  point: a chunk not listed in it does not exist. The MinHashLSH is rebuilt in memory
  from the signatures when the index is opened (derived state; signatures are the truth).
- Redis (`filters.redis_url`): datasketch's Redis storage backend holds the LSH buckets
  (basename per skill + signature parameters + bands), a Redis hash holds the signatures
  and another key the manifest, so several workers share one index.

Transactions: filtering never writes to the index. `DedupIndex.write_pending(run_dir, ...)`
saves the accepted items' signatures in the run folder, and `commit_index(skill, cfg,
run_dir)` appends them at the end of a successful run, next to the pool append. A
commit is idempotent (ids already present are skipped). An index whose ids differ from
the pool (missing, a crash between the two appends, a pool edited by hand) is rebuilt
from the pool when opened, and the log says so. An index built with other signature
parameters is refused with the fields that differ and the fix.
"""

from __future__ import annotations

import fcntl
import gc
import json
import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from datasketch import MinHashLSH

from core.records import Example, atomic_write_text, now_iso
from core.skills import FilterConfig
from core.workdir import index_dir
from filters.minhash import HASH_NAME, SCHEME, MinHasher, estimated_jaccard
from filters.normalize import NORMALIZER_VERSION

log = logging.getLogger("distill.filters.index")

# datasketch cannot band thresholds near 1.0 (b < 2); the Jaccard check applies the real threshold.
MAX_LSH_THRESHOLD = 0.9
PENDING_FILE = "dedup_pending.npz"
REDIS_PREFIX = "distill:index"


class IndexMismatch(RuntimeError):
    """The stored index was built with other signature parameters than the config asks for."""


@dataclass(frozen=True)
class IndexSpec:
    """Everything that makes two signatures comparable; recorded in the manifest."""

    num_perm: int
    seed: int
    scheme: str
    hash_function: str
    shingle: int
    normalizer_version: str

    @classmethod
    def from_config(cls, cfg: FilterConfig) -> "IndexSpec":
        return cls(num_perm=cfg.num_perm, seed=cfg.minhash_seed, scheme=SCHEME, hash_function=HASH_NAME,
                   shingle=cfg.shingle, normalizer_version=NORMALIZER_VERSION)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    CODE_FIELDS = ("normalizer_version", "hash_function")  # computed by the code, not chosen in skill.yaml

    def code_changed(self, stored: dict[str, Any]) -> list[str]:
        """The code-computed fields (normalizer, hash) that differ: the index is rebuilt from the pool."""
        return [f"{k} {stored.get(k)!r} -> {v!r}" for k, v in self.to_dict().items()
                if k in self.CODE_FIELDS and stored.get(k) != v]

    def check(self, stored: dict[str, Any], where: str, reset_hint: str) -> None:
        """Raise IndexMismatch naming every config field that differs and how to fix it."""
        config_key = {"num_perm": "filters.num_perm", "seed": "filters.minhash_seed", "shingle": "filters.shingle"}
        problems = []
        for name, want in self.to_dict().items():
            if name in self.CODE_FIELDS:
                continue
            have = stored.get(name)
            if have != want:
                fix = (f"set {config_key[name]}: {have!r} in skill.yaml to keep the index" if name in config_key
                       else "this code version computes it differently")
                problems.append(f"  - {name}: index has {have!r}, config/code has {want!r} ({fix})")
        if problems:
            raise IndexMismatch(f"dedup index {where} does not match this run's configuration:\n" + "\n".join(problems)
                                + f"\nEither restore those values, or {reset_hint} so it is rebuilt from the "
                                  f"accepted pool on the next run.")


@dataclass
class Match:
    """Why a candidate is a near-duplicate: the example it matched."""

    matched_id: str
    matched_in: str  # seeds | pool | run
    jaccard: float

    def to_detail(self) -> dict[str, Any]:
        return {"matched_id": self.matched_id, "matched_in": self.matched_in, "jaccard": round(self.jaccard, 3)}


def make_lsh(cfg: FilterConfig, storage_config: dict | None = None) -> MinHashLSH:
    return MinHashLSH(threshold=min(cfg.near_dup_threshold, MAX_LSH_THRESHOLD), num_perm=cfg.num_perm,
                      weights=tuple(cfg.lsh_weights), storage_config=storage_config,
                      prepickle=False if storage_config else None)


def band_keys(lsh: MinHashLSH, sigs: np.ndarray) -> list[list[bytes]]:
    """Bucket keys of each signature for each band, as MinHashLSH computes them (big-endian bytes)."""
    be = sigs.astype(sigs.dtype.newbyteorder(">"))
    return [[be[i, s:e].tobytes() for s, e in lsh.hashranges] for i in range(len(sigs))]


def _check_band_keys(lsh: MinHashLSH, sig: np.ndarray) -> None:
    # We compute bucket keys for whole batches ourselves; fail loudly if datasketch ever changes its format.
    s, e = lsh.hashranges[0]
    if band_keys(lsh, sig[None, :])[0][0] != lsh._H(sig[s:e]):
        raise RuntimeError("datasketch's MinHashLSH bucket key format changed; update filters.index.band_keys")


class _MemoryLayer:
    """Signatures kept in memory with a dict-backed MinHashLSH (keys are row numbers).

    Hot path: datasketch's DictSetStorage is a defaultdict(set) behind one method call per
    band; we read and write that dict directly (a call per band per document costs more
    than the hashing) and skip the LSH's key->buckets table, which only `remove` needs.
    `band_keys` is checked against MinHashLSH's own bucket keys, in code and in the tests.
    """

    def __init__(self, name: str, cfg: FilterConfig) -> None:
        self.name = name
        self.lsh = make_lsh(cfg)
        self._tables = [t._dict for t in self.lsh.hashtables]
        self.ids: list[str] = []
        self._rows: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None

    def add(self, ids: Sequence[str], sigs: np.ndarray, keys: list[list[bytes]] | None = None) -> None:
        keys = band_keys(self.lsh, sigs) if keys is None else keys
        for id_, sig, hs in zip(ids, sigs, keys):
            row = len(self.ids)
            self.ids.append(id_)
            self._rows.append(sig)
            for h, table in zip(hs, self._tables):
                table[h].add(row)
        self._matrix = None

    def signatures(self) -> np.ndarray:
        if self._matrix is None:
            self._matrix = np.stack(self._rows) if self._rows else np.zeros((0, self.lsh.h), np.uint32)
        return self._matrix

    def candidates(self, keys: list[list[bytes]]) -> list[list[tuple[str, np.ndarray]]]:
        out = []
        empty: frozenset[int] = frozenset()
        for hs in keys:
            rows: set[int] = set()
            for h, table in zip(hs, self._tables):
                rows.update(table.get(h, empty))
            out.append([(self.ids[r], self._rows[r]) for r in sorted(rows)] if rows else [])
        return out

    def __len__(self) -> int:
        return len(self.ids)


# --- stores: where the pool's signatures persist ---------------------------------------------------------------------


class LocalStore:
    """Signature chunks and a manifest under DISTILL_HOME/index/<skill>/."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.manifest_path = folder / "manifest.json"

    def where(self) -> str:
        return str(self.folder)

    def reset_hint(self) -> str:
        return f"delete {self.folder}"

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise IndexMismatch(f"{self.manifest_path}: not valid JSON ({e}); delete {self.folder} "
                                f"so it is rebuilt from the accepted pool") from None

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # one writer at a time (several local runs of one skill)
            yield

    def load(self) -> tuple[list[str], np.ndarray]:
        m = self.read_manifest() or {"chunks": [], "num_perm": 0}
        ids: list[str] = []
        sigs = []
        for chunk in m["chunks"]:
            ids += json.loads((self.folder / chunk["ids"]).read_text())
            sigs.append(np.load(self.folder / chunk["sig"]))
        mat = np.concatenate(sigs) if sigs else np.zeros((0, m.get("num_perm", 0)), np.uint32)
        if len(ids) != len(mat) or len(ids) != m.get("count", 0):
            raise IndexMismatch(f"{self.manifest_path}: count {m.get('count')} but {len(ids)} ids and {len(mat)} "
                                f"signatures in its chunks; delete {self.folder} so it is rebuilt from the pool")
        return ids, mat

    def ids(self) -> list[str]:
        return self.load()[0]

    def _write_chunk(self, m: dict[str, Any], ids: Sequence[str], sigs: np.ndarray) -> None:
        n = 1 + max((int(c["sig"][4:10]) for c in m["chunks"]), default=0)
        sig_name, ids_name = f"sig-{n:06d}.npy", f"ids-{n:06d}.json"
        np.save(self.folder / sig_name, np.ascontiguousarray(sigs, dtype=np.uint32))
        atomic_write_text(self.folder / ids_name, json.dumps(list(ids)))
        m["chunks"].append({"sig": sig_name, "ids": ids_name, "count": len(ids)})
        m["count"] += len(ids)

    def _commit_manifest(self, m: dict[str, Any]) -> None:
        m["updated_at"] = now_iso()
        atomic_write_text(self.manifest_path, json.dumps(m, indent=2) + "\n")  # the commit point
        listed = {c[k] for c in m["chunks"] for k in ("sig", "ids")}
        for p in list(self.folder.glob("sig-*.npy")) + list(self.folder.glob("ids-*.json")):
            if p.name not in listed:
                p.unlink(missing_ok=True)  # orphans of an interrupted commit or a rebuild

    def append(self, spec: IndexSpec, ids: Sequence[str], sigs: np.ndarray) -> tuple[int, int]:
        """Add the ids not stored yet; returns (added, count)."""
        with self._lock():
            m = self.read_manifest()
            if m is None:
                m = {**spec.to_dict(), "count": 0, "chunks": [], "created_at": now_iso()}
            spec.check(m, self.where(), self.reset_hint())
            have = set(self.ids())
            new = [i for i, id_ in enumerate(ids) if id_ not in have]
            new = list({ids[i]: i for i in reversed(new)}.values())[::-1]  # first copy of a repeated id
            if new:
                self._write_chunk(m, [ids[i] for i in new], sigs[new])
                self._commit_manifest(m)
            return len(new), m["count"]

    def replace(self, spec: IndexSpec, ids: Sequence[str], sigs: np.ndarray) -> None:
        with self._lock():
            m = {**spec.to_dict(), "count": 0, "chunks": [], "created_at": now_iso()}
            if ids:
                self._write_chunk(m, ids, sigs)
            self._commit_manifest(m)


class RedisStore:
    """The pool's LSH buckets (datasketch's Redis backend), signatures and manifest in one Redis db."""

    def __init__(self, skill: str, cfg: FilterConfig, url: str) -> None:
        import redis
        from redis.connection import parse_url

        self.url = url
        self.client = redis.Redis.from_url(url)
        spec = IndexSpec.from_config(cfg)
        probe = make_lsh(cfg)
        # The basename covers everything that shapes the buckets, so other parameters never share them.
        tag = f"p{spec.num_perm}s{spec.seed}k{spec.shingle}n{spec.normalizer_version}-{spec.hash_function}-b{probe.b}r{probe.r}"
        self.base = f"{REDIS_PREFIX}:{skill}:{tag}"
        self.manifest_key = f"{REDIS_PREFIX}:{skill}:manifest"
        self.sig_key = f"{self.base}:sigs"
        kwargs = {k: v for k, v in parse_url(url).items() if k in ("host", "port", "db", "password", "username")}
        self.lsh = make_lsh(cfg, {"type": "redis", "basename": self.base.encode(), "redis": kwargs})

    def where(self) -> str:
        return f"{self.url} (key {self.manifest_key})"

    def reset_hint(self) -> str:
        return f"delete the Redis keys {REDIS_PREFIX}:<skill>:* (redis-cli --scan --pattern ... | xargs redis-cli del)"

    def read_manifest(self) -> dict[str, Any] | None:
        raw = self.client.get(self.manifest_key)
        return json.loads(raw) if raw else None

    def ids(self) -> list[str]:
        return [k.decode() for k in self.client.hkeys(self.sig_key)]

    def candidates(self, keys: list[list[bytes]]) -> list[list[tuple[str, np.ndarray]]]:
        """Bucket members for a whole batch: one pipelined round trip per band, one for the signatures."""
        per_doc: list[set[bytes]] = [set() for _ in keys]
        for band, table in enumerate(self.lsh.hashtables):
            for i, found in enumerate(table.getmany(*[hs[band] for hs in keys])):
                per_doc[i].update(found)
        wanted = sorted(set().union(*per_doc)) if per_doc else []
        sigs = dict(zip(wanted, self.client.hmget(self.sig_key, wanted))) if wanted else {}
        out = []
        for found in per_doc:
            # A key without a signature is a half-finished commit: it does not count until completed.
            out.append([(k.decode(), np.frombuffer(sigs[k], dtype=np.uint32)) for k in sorted(found) if sigs.get(k)])
        return out

    def _insert(self, ids: Sequence[str], sigs: np.ndarray) -> None:
        keys = band_keys(self.lsh, sigs)
        with self.lsh.insertion_session(buffer_size=10_000) as session:
            for id_, hs in zip(ids, keys):
                k = id_.encode()
                session.lsh.keys.insert(k, *hs, buffer=True)
                for h, table in zip(hs, session.lsh.hashtables):
                    table.insert(h, k, buffer=True)
        # Signatures last: a key counts as indexed only once its signature is stored.
        pipe = self.client.pipeline(transaction=True)
        for start in range(0, len(ids), 10_000):
            pipe.hset(self.sig_key, mapping={i.encode(): s.tobytes() for i, s in
                                             zip(ids[start:start + 10_000], sigs[start:start + 10_000])})
        pipe.execute()

    def _write_manifest(self, spec: IndexSpec, created: str | None = None) -> int:
        count = int(self.client.hlen(self.sig_key))
        m = {**spec.to_dict(), "count": count, "basename": self.base, "created_at": created or now_iso(),
             "updated_at": now_iso()}
        self.client.set(self.manifest_key, json.dumps(m))
        return count

    def append(self, spec: IndexSpec, ids: Sequence[str], sigs: np.ndarray) -> tuple[int, int]:
        m = self.read_manifest()
        if m is not None:
            spec.check(m, self.where(), self.reset_hint())
        present = self.client.hmget(self.sig_key, [i.encode() for i in ids]) if ids else []
        new = list({id_: i for i, (id_, p) in reversed(list(enumerate(zip(ids, present)))) if p is None}.values())[::-1]
        if new:
            self._insert([ids[i] for i in new], sigs[new])
        return len(new), self._write_manifest(spec, m and m.get("created_at"))

    def replace(self, spec: IndexSpec, ids: Sequence[str], sigs: np.ndarray) -> None:
        for key in self.client.scan_iter(match=f"{self.base}*"):
            self.client.delete(key)
        if len(ids):
            self._insert(list(ids), sigs)
        self._write_manifest(spec)


def open_store(skill: str, cfg: FilterConfig) -> LocalStore | RedisStore:
    return RedisStore(skill, cfg, cfg.redis_url) if cfg.redis_url else LocalStore(index_dir(skill))


# --- the index -------------------------------------------------------------------------------------------------------


class DedupIndex:
    """Near-duplicate lookups against seeds, the persisted pool and this run's accepted items.

    `query_and_add(examples)` is sequential in meaning (the first copy wins, also inside a
    batch) but batched in work: signatures and bucket keys for the whole batch at once.
    """

    def __init__(self, skill: str, cfg: FilterConfig, store: LocalStore | RedisStore | None,
                 text: Callable[[str], str] | None = None) -> None:
        self.skill, self.cfg, self.store = skill, cfg, store
        self.text = text or (lambda s: s)  # what is compared (a function call's request, else the input)
        self.spec = IndexSpec.from_config(cfg)
        self.threshold = cfg.near_dup_threshold
        self.hasher = MinHasher(cfg.num_perm, cfg.minhash_seed, cfg.shingle)
        self.seeds = _MemoryLayer("seeds", cfg)
        self.pool: _MemoryLayer | RedisStore | None = None
        self.run = _MemoryLayer("run", cfg)
        self.lsh = self.run.lsh  # bands/rows of every layer (same parameters)
        self.rebuilt = False

    @classmethod
    def open(cls, skill: str, cfg: FilterConfig, pool: Sequence[Example] = (),
             reference: Sequence[Example] = (), text: Callable[[str], str] | None = None) -> "DedupIndex":
        """Open (or build) the skill's index; `pool` is every example accepted before (the truth the
        index must agree with), `reference` the seeds (compared against, never persisted)."""
        index = cls(skill, cfg, open_store(skill, cfg), text)
        store = index.store
        stored = store.read_manifest()
        changed: list[str] = []
        if stored is not None:
            index.spec.check(stored, store.where(), store.reset_hint())
            changed = index.spec.code_changed(stored)
        pool_ids = [e.id for e in pool]
        have = store.ids() if stored is not None else None
        if have is None or changed or set(have) != set(pool_ids):
            why = ("no index yet" if have is None else
                   f"built by other code ({', '.join(changed)})" if changed else
                   f"index has {len(have)} ids, pool has {len(set(pool_ids))} ({len(set(have) - set(pool_ids))} not in "
                   f"the pool, {len(set(pool_ids) - set(have))} missing)")
            # A fresh skill (no index, empty pool) is the normal first run, not news.
            index.rebuilt = have is not None or len(pool) > 0
            log.log(logging.WARNING if index.rebuilt else logging.INFO,
                    "dedup index for %s at %s: %s; rebuilding it from the accepted pool (%d examples)",
                    skill, store.where(), why, len(pool))
            first = {}
            for e in pool:
                first.setdefault(e.id, e)
            store.replace(index.spec, list(first), index.signatures(list(first.values())))
        if isinstance(store, LocalStore):
            ids, sigs = store.load()
            layer = _MemoryLayer("pool", cfg)
            layer.add(ids, sigs)
            index.pool = layer
        else:
            index.pool = store
        index.add_reference(reference)
        return index

    @classmethod
    def in_memory(cls, cfg: FilterConfig, reference: Sequence[Example] = (),
                  text: Callable[[str], str] | None = None) -> "DedupIndex":
        """No persistence: seeds/reference plus the items of this session (tests, one-off use)."""
        index = cls("", cfg, None, text)
        index.add_reference(reference)
        return index

    def signatures(self, examples: Sequence[Example]) -> np.ndarray:
        return self.hasher.signatures([self.text(e.input) for e in examples])

    def add_reference(self, examples: Sequence[Example]) -> None:
        if examples:
            sigs = self.signatures(examples)
            _check_band_keys(self.seeds.lsh, sigs[0])
            self.seeds.add([e.id for e in examples], sigs)

    def query_and_add(self, examples: Sequence[Example]) -> list[Match | None]:
        """For each example in order: its best match (a near-duplicate), or None and it joins the run layer."""
        if not examples:
            return []
        # A batch allocates ~bands small sets per document and forms no cycles; cyclic GC passes
        # over the growing index cost ~30% of the time, so they wait until the batch is done.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._query_and_add(examples)
        finally:
            if was_enabled:
                gc.enable()

    def _query_and_add(self, examples: Sequence[Example]) -> list[Match | None]:
        sigs = self.signatures(examples)
        keys = band_keys(self.lsh, sigs)
        fixed = [self.seeds.candidates(keys)]
        if self.pool is not None:
            fixed.append(self.pool.candidates(keys))
        layers = ["seeds", "pool"][:len(fixed)]
        out: list[Match | None] = []
        for i, ex in enumerate(examples):
            best: Match | None = None
            cands = [(name, c) for name, per_doc in zip(layers, fixed) for c in per_doc[i]]
            cands += [("run", c) for c in self.run.candidates([keys[i]])[0]]
            if cands:
                js = estimated_jaccard(sigs[i], np.stack([s for _, (_, s) in cands]))
                k = int(np.argmax(js))  # first best: seeds before pool before run, then insertion order
                if js[k] >= self.threshold:
                    best = Match(cands[k][1][0], cands[k][0], float(js[k]))
            if best is None:
                self.run.add([ex.id], sigs[i:i + 1], [keys[i]])
            out.append(best)
        return out

    # --- the transactional part ----------------------------------------------------------------------------------

    def write_pending(self, run_dir: Path, keep_ids: Sequence[str] | None = None) -> Path:
        """Save the signatures of this run's accepted items (all, or those in `keep_ids`) for `commit_index`."""
        ids = self.run.ids
        sigs = self.run.signatures()
        if keep_ids is not None:
            keep = set(keep_ids)
            rows = [i for i, id_ in enumerate(ids) if id_ in keep]
            ids, sigs = [ids[i] for i in rows], sigs[rows] if rows else sigs[:0]
        path = Path(run_dir) / PENDING_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, ids=np.array(ids, dtype=str), sigs=sigs.astype(np.uint32),
                 spec=np.array(json.dumps(self.spec.to_dict())))
        tmp.replace(path)
        return path

    def commit(self, run_dir: Path) -> int:
        return commit_index(self.skill, self.cfg, run_dir)

    def __len__(self) -> int:
        pool = 0 if self.pool is None else (len(self.pool) if isinstance(self.pool, _MemoryLayer)
                                              else int(self.pool.client.hlen(self.pool.sig_key)))
        return len(self.seeds) + pool + len(self.run)


def commit_index(skill: str, cfg: FilterConfig, run_dir: Path, pending: Path | None = None) -> dict[str, Any]:
    """Append the run's pending signatures to the skill's persistent index (call it next to the
    pool append, only at the end of a successful run). Idempotent; a run without pending
    signatures (nothing accepted, or filtering skipped) commits nothing. `pending`: another
    signature file than run_dir/dedup_pending.npz (a held batch's copy)."""
    path = Path(pending) if pending is not None else Path(run_dir) / PENDING_FILE
    if not path.is_file():
        return {"added": 0, "count": None, "pending": False}
    with np.load(path) as z:
        ids, sigs, spec = [str(i) for i in z["ids"]], z["sigs"], json.loads(str(z["spec"]))
    want = IndexSpec.from_config(cfg)
    want.check(spec, str(path), f"re-run the filter stage for {run_dir}")
    store = open_store(skill, cfg)
    added, count = store.append(want, ids, sigs)
    log.info("dedup index for %s: committed %d new signatures from %s (%d in the index)", skill, added, run_dir, count)
    return {"added": added, "count": count, "pending": True}


__all__ = ["DedupIndex", "IndexMismatch", "IndexSpec", "LocalStore", "Match", "RedisStore", "commit_index",
           "open_store", "band_keys", "make_lsh", "PENDING_FILE"]
