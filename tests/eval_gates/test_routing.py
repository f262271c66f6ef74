"""Routing profile: threshold math on fixed data, confidences from a real (tiny) model."""

import pytest

from eval_gates.routing import answer_logprobs, routing_threshold


def test_threshold_keeps_the_largest_prefix_within_the_target():
    conf = [-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8, -0.9, -1.0, -0.05]
    correct = [1, 1, 1, 1, 0, 1, 1, 0, 0, 0, 1]
    valid = [True] * 10 + [False]  # an invalid answer escalates whatever its confidence
    p = routing_threshold(conf, correct, valid, target_error_rate=0.2)
    # Kept prefixes: 1..4 no error, 5 -> 1/5, 6 -> 1/6, 7 -> 1/7, 8 -> 2/8 > 0.2: keep 7.
    assert p.mode == "threshold" and p.threshold == -0.7 and p.kept == 7
    assert p.kept_error_rate == round(1 / 7, 4) and p.escalation_rate == round(4 / 11, 4)
    assert p.n == 11 and p.valid == 10 and p.error_rate_without_routing == round(1 - 6 / 11, 4)
    assert 1 / 7 < p.kept_error_rate_upper < 1
    assert [c["kept"] for c in p.curve] == list(range(1, 11))
    strict = routing_threshold(conf, correct, valid, target_error_rate=0.01)
    assert strict.threshold == -0.4 and strict.kept == 4 and strict.kept_error_rate == 0.0


def test_threshold_never_splits_tied_confidences_and_edge_cases():
    p = routing_threshold([-0.1, -0.2, -0.2, -0.3], [1, 1, 0, 1], [True] * 4, target_error_rate=0.1)
    assert p.threshold == -0.1 and p.kept == 1  # keeping one of the two -0.2 answers is not a threshold
    none = routing_threshold([-0.1, -0.2], [0, 0], [True, True], 0.05)
    assert none.mode == "escalate_all" and none.threshold is None and none.escalation_rate == 1.0
    allk = routing_threshold([-0.1, -0.2], [1, 1], [True, True], 0.05)
    assert allk.mode == "keep_all_valid" and allk.threshold == -0.2 and allk.escalation_rate == 0.0
    empty = routing_threshold([], [], [], 0.05)
    assert empty.mode == "escalate_all" and empty.escalation_rate == 1.0


def test_answer_logprobs_match_a_plain_forward_pass(tiny_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    prompts = ["Ticket: the invoice is wrong\nTeam:", "Ticket: app crashes when I log in on my phone\nTeam:"]
    answers = [" billing", " bug report"]
    got = answer_logprobs(model, tok, prompts, answers + [], batch_size=2)
    for prompt, answer, value in zip(prompts, answers, got):
        p_ids = tok(prompt)["input_ids"]
        a_ids = tok(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p_ids + a_ids])).logits[0].float(), -1)
        want = sum(logp[len(p_ids) - 1 + j, t].item() for j, t in enumerate(a_ids)) / len(a_ids)
        assert value == pytest.approx(want, abs=1e-4) and value < 0
    assert answer_logprobs(model, tok, prompts, ["", " billing"], batch_size=1)[0] is None


def test_published_threshold_keeps_exactly_the_profiled_requests():
    """Rounded after the cut, -0.099996 became -0.1 and a router kept the wrong -0.099998 too."""
    conf, correct = [-0.099996, -0.099998], [True, False]
    p = routing_threshold(conf, correct, [True, True], target_error_rate=0.05)
    assert p.kept == 1 and p.threshold == -0.099996
    assert sum(c >= p.threshold for c in conf) == p.kept
    for point in p.curve:  # every curve point is a threshold a router can use as is
        assert sum(c >= point["threshold"] for c in conf) == point["kept"]
    rng = __import__("random").Random(0)
    for _ in range(200):
        xs = [round(-rng.random() / 10, 6) for _ in range(30)]
        ok = [rng.random() < 0.8 for _ in xs]
        q = routing_threshold(xs, ok, [True] * 30, 0.1)
        assert q.threshold is None or sum(c >= q.threshold for c in xs) == q.kept


def test_nan_and_infinite_confidences_escalate_and_the_profile_stays_json():
    import json
    import math

    conf = [-0.1, math.nan, -0.2, math.inf, -math.inf, None]
    p = routing_threshold(conf, [True] * 6, [True] * 6, target_error_rate=0.05)
    assert p.valid == 2 and p.kept == 2 and p.threshold == -0.2 and p.escalation_rate == round(4 / 6, 4)
    json.dumps(p.to_dict(), allow_nan=False)  # the registry refuses NaN: nothing non-finite is published


def test_label_thresholds_ignore_and_drop_nan_confidences():
    import math

    from core.records import Example
    from filters.confidence import LabelThresholds, label_thresholds

    items = [{"prediction": "a", "confidence": c, "score": 1.0} for c in (0.9, 0.8, math.nan)]
    t = label_thresholds(items, target=0.9, min_support=1, labels=["a"])
    assert t["a"]["threshold"] == 0.8 and t["a"]["support"] == 2
    f = LabelThresholds(t, 0.9, classification=True)
    ex = Example(id="1", skill="s", input="x", output="a", source="teacher", confidence=math.nan)
    assert f.check(ex)[0] == "below_label_threshold"


# --- both lanes: the served-quality curve and the policies (issue 31) ----------------------------------------------

from eval_gates.routing import (LaneItem, auroc, calibration_error, choose_point, compare_signals, evaluate_point,
                                family_wise_p, legacy_point, min_items_to_certify, pick_signal, served_curve,
                                share_rule_point, upper_bound)


def _lanes(n=200, teacher_acc=0.95, seed=0, invalid=0.02):
    """A student right more often when confident; a teacher right `teacher_acc` of the time, everywhere."""
    import random

    rng = random.Random(seed)
    items = []
    for _ in range(n):
        c = rng.random()
        s = 1.0 if rng.random() < 0.45 + 0.5 * c else 0.0
        t = 1.0 if rng.random() < teacher_acc else 0.0
        items.append(LaneItem(signal=c - 1, valid=rng.random() >= invalid, student=s, teacher=t, student_correct=bool(s)))
    return items


def _brute_served(items, k):
    ranked = sorted((it for it in items if it.valid), key=lambda it: -it.signal)
    kept = {id(it) for it in ranked[:k]}
    return sum(it.student if id(it) in kept else (it.teacher if it.teacher is not None else (it.student if it.valid else 0))
               for it in items) / len(items)


def test_curve_points_are_the_served_quality_of_each_cut_with_exact_intervals():
    items = _lanes(120, seed=1)
    curve = served_curve(items)
    assert curve["n"] == 120 and curve["points"][0]["kept"] == 0 and curve["points"][-1]["kept"] == curve["valid"]
    for p in curve["points"]:
        assert p["served"] == round(_brute_served(items, p["kept"]), 4)
        assert p["served_low"] <= p["served"] <= p["served_high"]
        assert p["teacher_share"] == round((120 - p["kept"]) / 120, 4)
        if p["kept"]:  # a threshold keeps exactly the profiled answers
            assert sum(it.valid and it.signal >= p["threshold"] for it in items) == p["kept"]
    assert curve["student_alone"]["served"] == round(sum(it.student if it.valid else 0 for it in items) / 120, 4)
    assert curve["teacher_alone"]["served"] == round(sum(it.teacher for it in items) / 120, 4)


def test_quality_never_escalates_to_a_teacher_measured_no_better():
    """The issue's demo: the teacher (0.34 right) worse than the student on every band."""
    items = _lanes(140, teacher_acc=0.34, seed=2)
    pick = choose_point(served_curve(items), "quality")
    assert pick["mode"] == "keep_all_valid"
    assert pick["point"]["teacher_share"] == round(sum(not it.valid for it in items) / 140, 4)  # invalid answers only
    student = served_curve(items)["student_alone"]["served"]
    assert pick["point"]["served"] >= student
    # A teacher equal to the student, answer for answer: nothing gains, nothing escalates.
    same = [LaneItem(it.signal, it.valid, it.student, it.student, it.student_correct) for it in items]
    assert choose_point(served_curve(same), "quality")["mode"] == "keep_all_valid"


def test_quality_escalates_the_weak_band_of_a_strong_teacher_and_beats_both_lanes():
    items = [LaneItem(-0.05 - i / 1000, True, 1.0, 1.0 if i % 20 else 0.0, True) for i in range(100)]  # confident: right
    items += [LaneItem(-1 - i / 100, True, 1.0 if i % 2 else 0.0, 1.0 if i % 20 else 0.0, bool(i % 2))
              for i in range(60)]  # unsure band: half right; the teacher 95%
    curve = served_curve(items)
    pick = choose_point(curve, "quality")
    p = pick["point"]
    # The band's two most confident answers are ties between the lanes (both wrong, both right): keeping them
    # serves the same with two teacher calls fewer.
    assert pick["mode"] == "threshold" and p["kept"] == 102 and p["teacher_share"] == round(58 / 160, 4)
    assert p["served"] > curve["student_alone"]["served"] and p["served"] > curve["teacher_alone"]["served"]
    assert p["p_teacher_better"] <= 0.05
    # The same pick re-measured on items it was not chosen on holds up.
    again = evaluate_point(items, p["threshold"])
    assert again["served"] == p["served"] and again["teacher_share"] == p["teacher_share"]


def test_quality_needs_evidence_before_it_escalates():
    """One lucky teacher answer in a band of ties is not a measured improvement (sign test)."""
    items = [LaneItem(-0.1 * i, True, 1.0, 1.0, True) for i in range(30)]
    items.append(LaneItem(-9.0, True, 0.0, 1.0, False))  # the least confident answer: the teacher got it
    pick = choose_point(served_curve(items), "quality")
    assert pick["mode"] == "keep_all_valid" and "not measured better" in pick["reason"]
    loose = choose_point(served_curve(items), "quality", significance=1.0)  # the point estimate alone
    assert loose["mode"] == "threshold" and loose["point"]["kept"] == 30


def test_budget_holds_the_teacher_share():
    items = _lanes(200, seed=3)
    curve = served_curve(items)
    for share in (0.0, 0.1, 0.2, 0.5):
        pick = choose_point(curve, "budget", max_teacher_share=share)
        within = [p for p in curve["points"] if p["teacher_share"] <= share]
        if within:
            assert pick["point"]["teacher_share"] <= share
            assert pick["point"]["served"] == max(p["served"] for p in within)
        else:  # invalid answers alone exceed it: valid answers are all kept, and it says so
            assert pick["mode"] == "keep_all_valid" and "above max_teacher_share" in pick["reason"]


def test_target_error_certifies_with_an_exact_bound_or_says_it_cannot():
    assert min_items_to_certify(0.05) == 59 and upper_bound(0, 59) <= 0.05 < upper_bound(0, 58)
    ok = [LaneItem(-i / 100, True, 1.0, 0.0, True) for i in range(80)] + \
         [LaneItem(-5 - i, True, 0.0, 1.0, False) for i in range(10)]
    pick = choose_point(served_curve(ok), "target_error", target_error_rate=0.05)
    assert pick["certified"] is True and pick["point"]["kept"] == 80 and pick["point"]["kept_error_upper"] <= 0.05
    few = ok[:30] + ok[80:]  # 30 right answers cannot certify 5%
    pick = choose_point(served_curve(few), "target_error", target_error_rate=0.05, fallback="quality")
    assert pick["certified"] is False and pick["fallback"] == "quality"
    assert "cannot be certified on 40 items" in pick["reason"] and "59 kept answers" in pick["reason"]
    assert pick["point"] == choose_point(served_curve(few), "quality")["point"]


def test_peer_and_legacy_rules():
    items = _lanes(200, seed=4)
    curve = served_curve(items)
    p = share_rule_point(curve, 0.2)
    assert p["teacher_share"] >= 0.2 and all(q["teacher_share"] < 0.2 or q["kept"] <= p["kept"] for q in curve["points"])
    q = legacy_point(curve, 0.05)
    assert q["kept"] == 0 or q["kept_error_rate"] <= 0.05


def test_auroc_and_calibration_error():
    import random

    assert auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auroc([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5 and auroc([0.1], [True]) is None
    rng = random.Random(0)
    xs = [rng.random() for _ in range(60)]
    ys = [rng.random() < 0.5 for _ in xs]
    pairs = sum((a > b) + 0.5 * (a == b) for a, ya in zip(xs, ys) if ya for b, yb in zip(xs, ys) if not yb)
    assert auroc(xs, ys) == round(pairs / (sum(ys) * (60 - sum(ys))), 4)
    # A signal that is the true probability: small held-out calibration error; too few items: None.
    p = [rng.random() for _ in range(4000)]
    y = [rng.random() < q for q in p]
    assert calibration_error(p, y) < 0.05 and calibration_error(p[:5], y[:5]) is None


def test_signal_choice_prefers_the_one_that_separates():
    import random

    rng = random.Random(5)
    correct = [rng.random() < 0.7 for _ in range(100)]
    sigs = [{"mean_logprob": rng.random(), "min_logprob": (1.0 if ok else 0.0) + rng.random() * 0.5,
             "mean_grammar_logprob": None, "min_grammar_logprob": None} for ok in correct]
    comp = compare_signals(sigs, correct, [True] * 100)
    assert comp["min_logprob"]["auroc"] > 0.9 > comp["mean_logprob"]["auroc"] and comp["mean_grammar_logprob"]["n"] == 0
    assert pick_signal(comp)[0] == "min_logprob" and pick_signal(comp, "mean_logprob")[0] == "mean_logprob"
    flat = compare_signals([{"mean_logprob": 1.0}] * 4, [True] * 4, [True] * 4)
    assert pick_signal(flat)[0] == "mean_logprob"  # nothing measurable: the default


# --- found by a hostile review -------------------------------------------------------------------------------------


def test_quality_takes_the_best_point_the_teacher_is_measured_better_on():
    """The highest-quality cut escalates a wide band where the evidence is thin; a narrower one is proven."""
    sure = [LaneItem(-0.01 * i, True, 1.0, 1.0, True) for i in range(100)]
    mixed = [LaneItem(-1 - 0.01 * i, True, float(i % 2), float(i % 3 != 0), bool(i % 2)) for i in range(30)]
    weak = [LaneItem(-5 - 0.01 * i, True, 0.0, 1.0, False) for i in range(10)]  # the teacher wins all 10
    curve = served_curve(sure + mixed + weak)
    pick = choose_point(curve, "quality")
    assert pick["mode"] == "threshold" and pick["point"]["p_teacher_better"] <= 0.05
    assert pick["point"]["served"] > curve["points"][-1]["served"]  # better than keeping everything


def test_no_policy_hands_a_band_to_a_teacher_measured_worse_or_not_measured():
    good = [LaneItem(-0.01 * i, True, 1.0, 1.0, True) for i in range(100)]
    bad = [LaneItem(-3 - 0.01 * i, True, 1.0 if i % 4 else 0.0, 0.0, bool(i % 4)) for i in range(40)]
    for policy in ("target_error", "budget", "quality"):
        pick = choose_point(served_curve(good + bad), policy, max_teacher_share=0.3)
        assert pick["mode"] == "keep_all_valid", (policy, pick["reason"])
    unmeasured = [LaneItem(it.signal, it.valid, it.student, None, it.student_correct) for it in good + bad]
    pick = choose_point(served_curve(unmeasured), "target_error")
    assert pick["mode"] == "keep_all_valid" and "not measured" in pick["reason"]


def test_the_keep_all_point_keeps_answers_without_a_confidence_as_the_gateway_does():
    items = [LaneItem(-0.1 * i, True, 1.0, 0.0, True) for i in range(8)] + \
            [LaneItem(None, True, 1.0, 0.0, True), LaneItem(float("nan"), True, 0.0, 1.0, False)]
    curve = served_curve(items)
    last = curve["points"][-1]
    assert last["kept"] == 10 and last["teacher_share"] == 0.0 and last["served"] == 0.9
    assert evaluate_point(items, None, kept_all=True)["served"] == 0.9
    assert curve["points"][-2]["kept"] == 7  # below it, thresholds keep scored answers only


def test_bounds_and_shares_are_compared_exact_not_rounded():
    # 298 right answers: the exact bound is 0.0100024 > 0.01 (299 needed); rounded it would read 0.01.
    items = [LaneItem(-0.001 * i, True, 1.0, 1.0, True) for i in range(298)]
    assert choose_point(served_curve(items), "target_error", target_error_rate=0.01)["certified"] is False
    assert choose_point(served_curve(items + [LaneItem(-1.0, True, 1.0, 1.0, True)]), "target_error",
                        target_error_rate=0.01)["certified"] is True
    # 4004 items: a share of 801/4004 = 0.20005 is over a 0.2 budget even though it rounds to 0.2.
    many = [LaneItem(-0.001 * i, True, 0.0 if i >= 3203 else 1.0, 1.0, i < 3203) for i in range(4004)]
    pick = choose_point(served_curve(many), "budget", max_teacher_share=0.2)
    assert 4004 - pick["point"]["kept"] <= 0.2 * 4004


def test_a_configured_signal_the_decode_lacks_falls_back_to_the_default():
    comp = compare_signals([{"mean_logprob": -0.1 * i} for i in range(20)], [i % 2 == 0 for i in range(20)],
                           [True] * 20)
    signal, why = pick_signal(comp, "min_grammar_logprob")
    assert signal == "mean_logprob" and "not available" in why


def _demo_pattern():
    """Today's fresh-clone demo version (2026-12-07), rebuilt from its routing.json: 104 items, the lanes equal
    overall (teacher 0.66, student 0.64); the best cut escalates 56 answers with the teacher better on 15 and the
    student on 6 (sign test p = 0.039, the only cut under 0.05), and out of sample (the 36 replay requests through
    the gateway) that escalation served 0.53 against the student's 0.58."""
    # (kept so far, teacher wins, student wins) per curve point, most confident first; ties between the steps
    steps = [(0, 15, 13), (27, 15, 12), (33, 15, 11), (44, 15, 8), (48, 15, 6), (51, 14, 6), (55, 13, 6),
             (73, 7, 2), (90, 2, 0), (104, 0, 0)]
    items, prev = [], steps[0]
    for k, w, l in steps[1:]:
        moved, tw, sw = k - prev[0], prev[1] - w, prev[2] - l
        for j in range(moved):  # confidences distinct inside a step: every kept count is a cut
            if j < tw:
                items.append(LaneItem(-prev[0] - j / 1000, True, 0.0, 1.0, False))
            elif j < tw + sw:
                items.append(LaneItem(-prev[0] - j / 1000, True, 1.0, 0.0, True))
            else:
                items.append(LaneItem(-prev[0] - j / 1000, True, 1.0, 1.0, True))
        prev = (k, w, l)
    return items


def test_a_cut_found_by_searching_thirty_is_not_evidence_the_teacher_is_better():
    """The kind: the policy tries every cut and keeps the best, so one cut's p = 0.04 is the luck of looking.
    The family-wise p (Westfall-Young maxT over every cut) keeps today's demo version on the student."""
    items = _demo_pattern()
    curve = served_curve(items)
    raw = [p for p in curve["points"] if p["p_teacher_better"] <= 0.05]
    assert raw and all(p["p_teacher_better_fw"] > 0.05 for p in raw)
    pick = choose_point(curve, "quality")
    assert pick["mode"] == "keep_all_valid" and "every cut tried counted" in pick["reason"]
    assert pick["point"]["teacher_share"] == 0.0
    # a curve written before the family-wise p (no p_teacher_better_fw) is judged by the per-cut p, as then
    old = {**curve, "points": [{k: v for k, v in p.items() if k != "p_teacher_better_fw"} for p in curve["points"]]}
    assert choose_point(old, "quality")["mode"] == "threshold"


def test_family_wise_p_is_never_below_the_per_cut_p_and_keeps_a_strong_teacher():
    """The adjusted p is at least the one-sided sign test's (up to resampling error) at every cut, 1.0 where
    nothing escalated differs, deterministic; a teacher far better on the weak band still gets it."""
    items = _lanes(200, teacher_acc=0.95, seed=4)
    curve = served_curve(items)
    for p in curve["points"]:
        assert p["p_teacher_better_fw"] >= p["p_teacher_better"] - 0.01
        if p["teacher_wins"] + p["student_wins"] == 0:
            assert p["p_teacher_better_fw"] == 1.0
    assert served_curve(items)["points"] == curve["points"]  # seeded: the same curve twice
    pick = choose_point(curve, "quality")
    assert pick["mode"] == "threshold" and pick["point"]["p_teacher_better_fw"] <= 0.05
    assert pick["point"]["served"] > curve["student_alone"]["served"]


def test_family_wise_p_under_the_null_holds_its_level():
    """Lanes exchangeable on every item (each differing answer a fair coin): the smallest adjusted p over all
    cuts is <= 0.05 in about 5% of data sets (the per-cut minimum is, far more often)."""
    import random

    rng = random.Random(11)
    fw_hits = raw_hits = 0
    runs = 200
    for _ in range(runs):
        diffs = [rng.choice([-1, 0, 0, 1]) for _ in range(80)]
        starts = list(range(0, 81, 2))
        fw = family_wise_p(diffs, starts, resamples=500, seed=rng.randrange(10**6))
        fw_hits += min(fw) <= 0.05
        from scipy.stats import binomtest

        ps = []
        for k in starts:
            w, l = sum(d > 0 for d in diffs[k:]), sum(d < 0 for d in diffs[k:])
            ps.append(binomtest(w, w + l, 0.5, alternative="greater").pvalue if w + l else 1.0)
        raw_hits += min(ps) <= 0.05
    assert fw_hits / runs <= 0.09  # 5% nominal; 200 data sets: a binomial sd of 1.5 points
    assert raw_hits > 2 * fw_hits


def test_family_wise_p_refuses_a_cut_outside_the_items_and_takes_a_large_curve():
    with pytest.raises(ValueError, match="starts"):
        family_wise_p([1, -1], [3])
    assert family_wise_p([], [0]) == [1.0]
    # a curve over many items (verify-lane outcomes read back) in bounded memory: resamples go in chunks
    big = [(-1) ** i if i % 3 else 0 for i in range(30_000)]
    ps = family_wise_p(big, list(range(0, 30_001, 100)))
    assert len(ps) == 301 and all(0 < p <= 1 for p in ps) and ps[-1] == 1.0
