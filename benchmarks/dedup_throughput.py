"""Near-dedup and contamination throughput, against plain datasketch in the same run.

Corpus: N documents of ~100 random words (Zipf-like vocabulary), plus planted near-copies
of earlier documents at known shingle Jaccard (0.5, 0.6 below the 0.7 threshold; 0.8,
0.9, 0.95 above), the exact Jaccard of each pair kept as ground truth.

Measured, end to end (text -> signature -> LSH query -> Jaccard check -> insert):
- ours: `DedupIndex.query_and_add` in batches (vectorized MinHash, batched bucket keys);
- plain datasketch: `MinHash.update` per shingle, `MinHashLSH.query`, `MinHash.jaccard`,
  `MinHashLSH.insert`, same normalization, shingles, threshold and LSH parameters. It is
  ~1 ms per document, so it runs on the first `baseline_docs` documents of the same stream
  (the keys say so) and is compared per document.
- precision / recall of the planted pairs at the threshold (ours, whole corpus).
- contamination: `Contamination` docs/s against an eval set of E items of ~100 words, with
  1% of the documents carrying a 13-word span of an eval item (recall reported).

    .venv/bin/python benchmarks/dedup_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

import numpy as np  # noqa: E402

from core.records import Example  # noqa: E402
from core.skills import FilterConfig  # noqa: E402
from filters.contamination import Contamination  # noqa: E402
from filters.index import DedupIndex, make_lsh  # noqa: E402
from filters.minhash import shingle_strings  # noqa: E402

LEVELS = (0.5, 0.6, 0.8, 0.9, 0.95)  # planted Jaccard levels; threshold 0.7 sits between them
VOCAB = 30_000


def make_vocab(rng: np.random.Generator) -> np.ndarray:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return np.array(["".join(rng.choice(letters, size=rng.integers(3, 9))) + str(i % 7) for i in range(VOCAB)])


def random_docs(rng: np.random.Generator, vocab: np.ndarray, n: int) -> list[list[str]]:
    p = 1.0 / np.arange(1, VOCAB + 1) ** 0.8  # Zipf-like: common words repeat, as in text
    p /= p.sum()
    lengths = rng.integers(80, 121, size=n)
    flat = vocab[rng.choice(VOCAB, size=int(lengths.sum()), p=p)]
    out, at = [], 0
    for n_w in lengths:
        out.append(flat[at:at + n_w].tolist())
        at += n_w
    return out


def jaccard(a: str, b: str, k: int) -> float:
    sa, sb = set(shingle_strings(a, k)), set(shingle_strings(b, k))
    return len(sa & sb) / len(sa | sb)


def plant(rng: np.random.Generator, vocab: np.ndarray, base: list[str], target: float, k: int) -> list[str]:
    """A copy of `base` with scattered words replaced so its shingle Jaccard is near `target`."""
    s = len(base) - k + 1
    r = max(1, round(s * (1 - target) / (k * (1 + target))))  # each replaced word changes k shingles
    w = list(base)
    slots = rng.choice(np.arange(0, len(w), k), size=min(r, len(w) // k), replace=False)
    for i in slots:
        w[i] = "zz" + vocab[rng.integers(VOCAB)]  # a word no original document has
    return w


def build_corpus(n: int, seed: int, k: int):
    rng = np.random.default_rng(seed)
    vocab = make_vocab(rng)
    n_pairs = n // 50  # 2% of the documents are planted copies, spread over the levels
    docs = random_docs(rng, vocab, n - n_pairs)
    texts = [" ".join(d) for d in docs]
    # Each copy goes at a random position up to `window` documents after its original (the original
    # must come first and win), so any prefix of the stream, e.g. the baseline's, holds planted pairs.
    window = 500
    keys = [float(i) for i in range(len(texts))]
    items: list[tuple[float, str, int | None, float | None]] = [(k, t, None, None) for k, t in zip(keys, texts)]
    for j in range(n_pairs):
        level = LEVELS[j % len(LEVELS)]
        orig = int(rng.integers(0, len(docs) - 1))
        key = orig + float(rng.uniform(0.01, window))
        items.append((key, " ".join(plant(rng, vocab, docs[orig], level, k)), orig, level))
    items.sort(key=lambda x: x[0])
    out_texts = [t for _, t, _, _ in items]
    final_of = {int(key): i for i, (key, _, orig, _) in enumerate(items) if orig is None}
    pairs = []  # (copy position, original position, planted level, exact shingle jaccard)
    for i, (_, text, orig, level) in enumerate(items):
        if orig is not None:
            o = final_of[orig]
            pairs.append((i, o, level, jaccard(text, out_texts[o], k)))
    return out_texts, pairs, rng, vocab


def run_ours(texts: list[str], cfg: FilterConfig, batch: int = 5000) -> tuple[float, dict[int, str]]:
    examples = [Example(id=str(i), skill="bench", input=t, output=None, source="teacher") for i, t in enumerate(texts)]
    index = DedupIndex.in_memory(cfg)
    flagged: dict[int, str] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(examples), batch):
        part = examples[start:start + batch]
        for ex, m in zip(part, index.query_and_add(part)):
            if m is not None:
                flagged[int(ex.id)] = m.matched_id
    return time.perf_counter() - t0, time.process_time() - c0, flagged


def run_plain_datasketch(texts: list[str], cfg: FilterConfig) -> tuple[float, dict[int, str]]:
    from datasketch import MinHash

    lsh = make_lsh(cfg)  # same bands/rows as ours
    hashes: dict[int, MinHash] = {}
    flagged: dict[int, str] = {}
    t0, c0 = time.perf_counter(), time.process_time()
    for i, text in enumerate(texts):
        m = MinHash(num_perm=cfg.num_perm, seed=cfg.minhash_seed)
        for s in shingle_strings(text, cfg.shingle):
            m.update(s.encode())
        best = max(((m.jaccard(hashes[k]), -k) for k in lsh.query(m)), default=None)
        if best is not None and best[0] >= cfg.near_dup_threshold:
            flagged[i] = str(-best[1])
        else:
            lsh.insert(i, m)
            hashes[i] = m
    return time.perf_counter() - t0, time.process_time() - c0, flagged


def score(flagged: dict[int, str], pairs: list, threshold: float, n_docs: int) -> dict:
    positives = {(c, o) for c, o, _, j in pairs if j >= threshold and c < n_docs}
    found = {(c, int(o)) for c, o in flagged.items()}
    tp = len(found & positives)
    return {"precision": round(tp / max(1, len(found)), 4), "recall": round(tp / max(1, len(positives)), 4),
            "flagged": len(found), "positives": len(positives)}


def contamination_bench(rng: np.random.Generator, vocab: np.ndarray, texts: list[str], n_eval: int,
                        cfg: FilterConfig) -> dict:
    evals = [" ".join(d) for d in random_docs(rng, vocab, n_eval)]
    eval_items = [Example(id=f"e{i}", skill="bench", input=t, output=None, source="human") for i, t in enumerate(evals)]
    cands = list(texts)
    leaked = rng.choice(len(cands), size=len(cands) // 100, replace=False)
    for i in leaked:  # a 13-word span of a random eval item inside the document
        ew = evals[int(rng.integers(n_eval))].split()
        j = int(rng.integers(0, len(ew) - 13))
        w = cands[i].split()
        at = int(rng.integers(0, len(w)))
        cands[i] = " ".join(w[:at] + ew[j:j + 13] + w[at:])
    t0 = time.perf_counter()
    step = Contamination({"bench": eval_items}, cfg)
    build = time.perf_counter() - t0
    examples = [Example(id=str(i), skill="bench", input=t, output=None, source="teacher") for i, t in enumerate(cands)]
    t0 = time.perf_counter()
    dropped = set()
    for start in range(0, len(examples), 5000):
        part = examples[start:start + 5000]
        dropped |= {int(ex.id) for ex, v in zip(part, step.check_batch(part)) if v is not None}
    secs = time.perf_counter() - t0
    leaked_set = {int(i) for i in leaked}
    return {"contamination_docs_per_s": round(len(cands) / secs), "contamination_eval_items": n_eval,
            "contamination_index_build_s": round(build, 2), "contamination_recall": round(len(dropped & leaked_set) / len(leaked_set), 4),
            "contamination_false_drops": len(dropped - leaked_set)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10k docs, 500 baseline docs, 2k eval items (< 1 min)")
    ap.add_argument("--docs", type=int, default=None)
    ap.add_argument("--baseline-docs", type=int, default=None)
    ap.add_argument("--eval-items", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = args.docs or (10_000 if args.quick else 100_000)
    n_base = args.baseline_docs or (500 if args.quick else 5_000)
    n_eval = args.eval_items or (2_000 if args.quick else 10_000)
    cfg = FilterConfig()

    t0 = time.perf_counter()
    texts, pairs, rng, vocab = build_corpus(n, args.seed, cfg.shingle)
    corpus_s = time.perf_counter() - t0

    ours_s, ours_cpu, ours_flagged = run_ours(texts, cfg)
    base_s, base_cpu, base_flagged = run_plain_datasketch(texts[:n_base], cfg)
    ours_sub_s, ours_sub_cpu, _ = run_ours(texts[:n_base], cfg)
    ours_rate, base_rate = n / ours_s, n_base / base_s
    q = score(ours_flagged, pairs, cfg.near_dup_threshold, n)
    q_base = score(base_flagged, pairs, cfg.near_dup_threshold, n_base)
    by_level = {}
    for level in LEVELS:
        ps = [(c, o) for c, o, lv, _ in pairs if lv == level]
        by_level[str(level)] = round(sum(ours_flagged.get(c) == str(o) for c, o in ps) / max(1, len(ps)), 4)
    lsh = make_lsh(cfg)
    result = {
        "benchmark": "dedup_throughput", "quick": args.quick, "docs": n, "mean_words": round(
            sum(len(t.split()) for t in texts[:2000]) / min(2000, n), 1),
        "planted_pairs": len(pairs), "threshold": cfg.near_dup_threshold, "num_perm": cfg.num_perm,
        "shingle": cfg.shingle, "lsh_bands": lsh.b, "lsh_rows": lsh.r,
        "ours_docs_per_s": round(ours_rate), "ours_seconds": round(ours_s, 2),
        "datasketch_baseline_docs": n_base, "datasketch_docs_per_s_on_baseline_docs": round(base_rate),
        "ours_docs_per_s_on_baseline_docs": round(n_base / ours_sub_s),
        "speedup_vs_datasketch": round(ours_rate / base_rate, 1),
        "speedup_same_docs": round((n_base / ours_sub_s) / base_rate, 1),
        # CPU-time rates: the box is shared, so wall-clock rates move with other people's load.
        "ours_docs_per_cpu_s": round(n / ours_cpu), "datasketch_docs_per_cpu_s_on_baseline_docs": round(n_base / base_cpu),
        "speedup_vs_datasketch_cpu": round((n / ours_cpu) / (n_base / base_cpu), 1),
        "precision": q["precision"], "recall": q["recall"], "flagged": q["flagged"], "positives": q["positives"],
        "datasketch_precision_on_baseline_docs": q_base["precision"],
        "datasketch_recall_on_baseline_docs": q_base["recall"],
        "flag_rate_by_planted_jaccard": by_level,
        "corpus_build_s": round(corpus_s, 1),
    }
    result.update(contamination_bench(rng, vocab, texts, n_eval, cfg))
    emit(result)


if __name__ == "__main__":
    main()
