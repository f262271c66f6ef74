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
