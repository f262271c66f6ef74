"""Issue 10: per-label thresholds from the audit, and the label-distribution bound."""

from collections import Counter

import pytest

from core.records import Example
from filters.base import run_filters
from filters.confidence import ALL, LabelDistribution, LabelThresholds, distribution, label_thresholds, tv_distance


def _item(pred, conf, correct):
    return {"prediction": pred, "confidence": conf, "score": float(correct)}


def test_threshold_is_the_lowest_confidence_that_reaches_the_precision():
    items = [_item("a", 0.9, 1), _item("a", 0.8, 1), _item("a", 0.7, 1), _item("a", 0.6, 0), _item("a", 0.5, 0),
             _item("b", 0.9, 0), _item("b", 0.8, 0), _item("b", 0.7, 1),
             _item("c", 0.9, 1)]
    t = label_thresholds(items, target=0.75, min_support=3, labels=["a", "b", "c", "d"])
    # a: top 3 all right (1.0), top 4 = 0.75 -> threshold 0.6 keeps precision 0.75 on 4 items.
    assert t["a"] == {"threshold": 0.6, "precision": 0.75, "support": 4, "reachable": True}
    assert t["b"]["reachable"] is False and t["b"]["precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert t["c"]["reachable"] is False  # right, but one audit item is not enough support
    assert t["d"] == {"threshold": None, "precision": None, "support": 0, "reachable": False}


def test_equal_confidences_are_kept_or_dropped_together():
    items = [_item("a", 0.9, 1), _item("a", 0.5, 1), _item("a", 0.5, 0), _item("a", 0.5, 0)]
    t = label_thresholds(items, target=0.6, min_support=1, labels=["a"])
    assert t["a"]["threshold"] == 0.9  # 0.5 would keep all three 0.5s: precision 0.5


def test_without_labels_one_group_and_mean_scores():
    items = [_item("{}", 0.9, 0.9), _item("{}", 0.4, 0.1)]
    t = label_thresholds(items, target=0.8, min_support=1)
    assert set(t) == {ALL} and t[ALL]["threshold"] == 0.9


def _teacher(i, label, conf):
    return Example(id=f"t{i}", skill="s", input=f"ticket {i}", output=label, source="teacher", confidence=conf)


def test_label_thresholds_filter_drops_below_and_unreachable():
    table = {"a": {"threshold": 0.6, "precision": 0.8, "support": 5, "reachable": True},
             "b": {"threshold": None, "precision": 0.2, "support": 4, "reachable": False}}
    f = LabelThresholds(table, 0.75, classification=True)
    human = Example(id="h", skill="s", input="x", output="b", source="human")
    kept, rejected, stats = run_filters([_teacher(1, "a", 0.7), _teacher(2, "a", 0.5), _teacher(3, "b", 0.99), human],
                                        [f])
    assert [e.id for e in kept] == ["t1", "h"]
    assert {r.example.id: r.reason for r in rejected} == {"t2": "below_label_threshold",
                                                          "t3": "label_precision_unreachable"}
    assert f.kept_by_label == {"a": 1}


def test_distribution_bound_drops_the_least_confident_of_the_over_represented_label():
    seeds = ["a"] * 5 + ["b"] * 5
    batch = [_teacher(i, "a", 0.5 + i / 100) for i in range(8)] + [_teacher(10 + i, "b", 0.9) for i in range(2)]
    step = LabelDistribution(seeds, max_distance=0.1)
    kept, rejected, _ = run_filters(batch, [step])
    labels = Counter(e.output for e in kept)
    assert tv_distance(distribution([e.output for e in kept]), {"a": 0.5, "b": 0.5}) <= 0.1
    assert labels["b"] == 2 and labels["a"] == 3  # 3/5 = 0.6: distance 0.1
    # The dropped ones are the least confident `a`s.
    assert sorted(r.example.confidence for r in rejected) == [0.5, 0.51, 0.52, 0.53, 0.54]
    assert all(r.reason == "label_over_represented" for r in rejected)
    assert step.report["reached"] is True and step.report["distance_before"] == pytest.approx(0.3)


def test_distribution_bound_stops_when_a_label_is_missing():
    seeds = ["a", "b", "c", "d"]
    batch = [_teacher(i, lab, 0.9) for i, lab in enumerate("aaaaabbc")]
    step = LabelDistribution(seeds, max_distance=0.05)
    kept, rejected, _ = run_filters(batch, [step])
    # `d` was never given: the bound holds on the seeds' distribution over a, b, c (1/3 each), so it
    # drops only the surplus `a`s and `b`s it needs, names `d` as missing, and says it reached the bound.
    assert step.report["missing_labels"] == ["d"] and step.report["target"] == pytest.approx(
        {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, abs=1e-4)
    kept_labels = Counter(e.output for e in kept)
    assert kept_labels["a"] == kept_labels["b"] == 2 and kept_labels["c"] == 1  # the old bound kept 1 `a`, 2 `b`
    assert step.report["distance_after"] == pytest.approx(2 / 15, abs=1e-4)


def test_a_missing_label_does_not_shrink_labels_already_in_proportion():
    seeds = ["a"] * 4 + ["b"] * 4 + ["c"] * 2
    batch = [_teacher(i, lab, 0.9) for i, lab in enumerate("aaaabbbb")]  # c missing, a:b as in the seeds
    step = LabelDistribution(seeds, max_distance=0.05)
    kept, rejected, _ = run_filters(batch, [step])
    assert rejected == [] and len(kept) == 8 and step.report["missing_labels"] == ["c"]


def test_shrinkage_gives_a_label_with_few_audit_answers_the_pooled_threshold():
    items = [_item("a", 0.9 - i / 100, 1) for i in range(10)] + [_item("a", 0.5, 0), _item("a", 0.45, 0)]
    items += [_item("b", 0.85, 1)]  # one right answer: a hard support cut of 3 would drop every `b`
    hard = label_thresholds(items, target=0.8, min_support=3, labels=["a", "b", "c"])
    assert hard["b"]["reachable"] is False and hard["c"]["reachable"] is False
    soft = label_thresholds(items, target=0.8, min_support=0, labels=["a", "b", "c"], shrinkage=5)
    assert soft["b"]["reachable"] and soft["b"]["support"] == 1 and soft["b"]["estimate"] >= 0.8
    assert soft["c"]["reachable"] and soft["c"]["support"] == 0  # never predicted: the pooled threshold
    assert soft["a"]["threshold"] == hard["a"]["threshold"] == 0.45  # enough own answers: the same threshold
    assert soft["c"]["threshold"] == 0.45 and soft["c"]["estimate"] == pytest.approx(11 / 13, abs=1e-4)
