"""filters.novelty.farthest_first: greedy k-center picks what the covered set lacks first, without repeats."""

from __future__ import annotations

import numpy as np

from filters.novelty import farthest_first, nearest_similarity
from filters.minhash import MinHasher

COVERED = ["my invoice shows the wrong amount", "refund for a double charge please",
           "the app crashes when I upload a photo", "cannot log in after the password reset"]
CANDIDATES = [
    "my invoice shows the wrong amount again",          # 0: covered
    "Klarna instalments declined at checkout",          # 1: new
    "Klarna instalments declined at checkout today",    # 2: new, but a near copy of 1
    "Okta SCIM provisioning stopped syncing groups",    # 3: new
    "the app crashes when I upload a photo on iOS",     # 4: covered
]


def _sig(texts):
    return MinHasher(128, 1, 1).signatures(texts)


def test_new_first_and_no_near_copy_before_another_new_one():
    picked, first = farthest_first(_sig(CANDIDATES), _sig(COVERED), 3, seed=0)
    assert set(picked[:2]) in ({1, 3}, {2, 3}) and len(set(picked)) == 3
    assert picked[2] in (0, 4, 1, 2)
    # The initial similarity is the nearest covered one's, as the drift monitor measures it.
    assert np.allclose(first, nearest_similarity(_sig(CANDIDATES), _sig(COVERED)))
    assert first[0] > 0.5 and first[1] < 0.2


def test_every_row_once_seeded_ties_and_edges():
    sig = _sig(CANDIDATES)
    picked, _ = farthest_first(sig, _sig(COVERED), 99, seed=3)
    assert sorted(picked) == list(range(len(CANDIDATES)))
    assert farthest_first(sig, _sig(COVERED), 99, seed=3)[0] == picked  # deterministic
    same = _sig(["one two three"] * 6)  # all tied: the order is the seed's, and the seeds differ
    orders = {tuple(farthest_first(same, np.zeros((0, 128), np.uint32), 6, seed=s)[0]) for s in range(8)}
    assert len(orders) > 1 and all(sorted(o) == list(range(6)) for o in orders)
    assert farthest_first(sig, _sig(COVERED), 0)[0] == []
    empty, sims = farthest_first(np.zeros((0, 128), np.uint32), _sig(COVERED), 5)
    assert empty == [] and sims.shape == (0,)
