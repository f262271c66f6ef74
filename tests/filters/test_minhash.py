import random

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from filters.index import band_keys
from filters.minhash import MinHasher, estimated_jaccard, shingle_hash, shingle_strings


def corpus(n=200, seed=0):
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(300)] + ["café", "naïve", "日本語"]
    # Lengths around the shingle size on purpose: empty, shorter than a shingle, exactly one.
    return [" ".join(rng.choice(vocab) for _ in range(rng.choice([0, 1, 2, 3, 4, 7, 60]))) for _ in range(n)]


@pytest.mark.parametrize("num_perm,seed,k", [(128, 1, 3), (64, 7, 5), (16, 0, 1)])
def test_signatures_equal_datasketch_bulk_bit_for_bit(num_perm, seed, k):
    texts = corpus() + ["Hello, WORLD! Don't stop.", ""]
    sigs = MinHasher(num_perm, seed, k).signatures(texts)
    ref = MinHash.bulk([[s.encode() for s in shingle_strings(t, k)] for t in texts],
                       num_perm=num_perm, seed=seed, hashfunc=shingle_hash)
    assert sigs.dtype == np.uint32 and sigs.shape == (len(texts), num_perm)
    for sig, m in zip(sigs, ref):
        assert np.array_equal(sig, m.hashvalues)


def test_equal_to_update_per_shingle_and_wrapped_as_lean_minhash():
    texts = corpus(30, seed=1)
    hasher = MinHasher(128, 1, 3)
    for text, lean in zip(texts, hasher.lean_minhashes(texts)):
        m = MinHash(num_perm=128, seed=1, hashfunc=shingle_hash)
        for s in shingle_strings(text, 3):
            m.update(s.encode())
        assert isinstance(lean, LeanMinHash)
        assert lean == LeanMinHash(m)  # same seed, scheme and hash values
        assert lean.jaccard(LeanMinHash(m)) == 1.0


def test_large_batch_crosses_numpy_blocks():
    # More shingles than one numpy block (16k): the block seams must not change anything.
    texts = [" ".join(f"t{(i * 31 + j) % 997}" for j in range(120)) for i in range(300)]
    hasher = MinHasher(32, 1, 3)
    whole = hasher.signatures(texts)
    one_by_one = np.stack([hasher.signatures([t])[0] for t in texts])
    assert np.array_equal(whole, one_by_one)


def test_estimated_jaccard_matches_datasketch():
    hasher = MinHasher(128, 1, 3)
    a, b, c = hasher.lean_minhashes(["the cat sat on the mat today again", "the cat sat on the mat today once",
                                     "something else entirely different here"])
    est = estimated_jaccard(a.hashvalues, np.stack([b.hashvalues, c.hashvalues]))
    assert est.tolist() == [a.jaccard(b), a.jaccard(c)]
    assert est[0] > est[1]


def test_band_keys_equal_minhashlsh_buckets():
    hasher = MinHasher(128, 1, 3)
    sigs = hasher.signatures(corpus(5))
    lsh = MinHashLSH(threshold=0.7, num_perm=128, weights=(0.1, 0.9))
    keys = band_keys(lsh, sigs)
    for sig, ks in zip(sigs, keys):
        assert ks == [lsh._H(sig[s:e]) for s, e in lsh.hashranges]
