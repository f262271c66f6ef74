"""The greedy path (teachers.greedy: one prefill, jump-forward over forced tokens, one forward per choice)
answers exactly as transformers' generate() does, under every kind of grammar and free: same text, finish
reason, token count and confidences, for prompts of different lengths in one batch, with the length cap
cutting some answers."""

from __future__ import annotations

import json

import pytest

from core.config import SkillConfig
from tests.core import skillkit

pytest.importorskip("xgrammar")


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    from teachers.local import LocalModel

    return LocalModel(tiny_model_path)


def _same(a, b, tol=1e-4):
    assert [c.text for c in a] == [c.text for c in b]
    assert [c.finish_reason for c in a] == [c.finish_reason for c in b]
    assert [c.completion_tokens for c in a] == [c.completion_tokens for c in b]
    assert [c.prompt_tokens for c in a] == [c.prompt_tokens for c in b]
    assert [c.confidence_source for c in a] == [c.confidence_source for c in b]
    for x, y in zip(a, b):
        assert (x.confidence is None) == (y.confidence is None)
        if x.confidence is not None:
            assert x.confidence == pytest.approx(y.confidence, abs=tol)
        for k, v in (y.signals or {}).items():
            if k == "min_margin":  # read by the greedy path only (generate()'s recorder does not keep a runner-up)
                continue
            got = (x.signals or {}).get(k)
            assert (got is None) == (v is None), k
            if v is not None:
                assert got == pytest.approx(v, abs=tol), k


PROMPTS = [f"Ticket: {'the invoice is wrong again ' * (1 + i % 4)}{i}\nTeam:" for i in range(11)]


def _both(model, prompts, **kw):
    a = model.complete(prompts, confidence=True, **kw)
    b = model.complete(prompts, confidence=True, decoder="generate", **kw)
    return a, b


@pytest.mark.parametrize("labels", [["billing", "bug", "account access", "feature request"],
                                    ["refund_not_received_by_customer", "refund_requested", "other"]])
def test_label_grammar_answers_like_generate(tiny, labels):
    spec = {"prefix": " ", "choices": labels}
    a, b = _both(tiny, PROMPTS, max_new_tokens=16, grammars=[spec] * len(PROMPTS), batch_size=4)
    _same(a, b)
    assert all(c.text.strip() in labels for c in a if c.finish_reason == "stop")
    assert any(c.finish_reason == "stop" for c in a)


def test_schema_grammar_and_length_cap_answer_like_generate(tiny):
    schema = {"type": "object", "properties": {"person": {"type": ["string", "null"]}, "kind": {"enum": ["order", "support"]}},
              "required": ["person", "kind"], "additionalProperties": False}
    spec = {"prefix": " ", "json_schema": schema}
    for cap in (5, 24):  # 5: every answer is cut mid-object ("length"); 24: some end
        a, b = _both(tiny, PROMPTS, max_new_tokens=cap, grammars=[spec] * len(PROMPTS), batch_size=16)
        _same(a, b)
    assert any(c.finish_reason == "length" for c in a)


def test_mixed_grammars_and_free_rows_in_one_batch_answer_like_generate(tiny):
    specs = [{"prefix": " ", "choices": ["yes", "no"]}, None, {"regex": " [0-9]{1,3}"}] * 4
    a, b = _both(tiny, PROMPTS + ["x"], max_new_tokens=8, grammars=specs[:12], batch_size=6)
    _same(a, b)


def test_free_decoding_answers_like_generate(tiny):
    for newline in (True, False):
        a = tiny.complete(PROMPTS, max_new_tokens=7, confidence=True, stop_at_newline=newline)
        b = tiny.complete(PROMPTS, max_new_tokens=7, confidence=True, stop_at_newline=newline, decoder="generate")
        _same(a, b)


def test_without_own_logprobs_only_the_renormalised_signals_are_read(tiny):
    spec = {"prefix": " ", "choices": ["refund_not_received_by_customer", "refund_requested", "other"]}
    full = tiny.complete(PROMPTS, max_new_tokens=16, confidence=True, grammars=[spec] * len(PROMPTS))
    lean = tiny.complete(PROMPTS, max_new_tokens=16, confidence=True, grammars=[spec] * len(PROMPTS), own=False)
    assert [c.text for c in lean] == [c.text for c in full]
    for x, y in zip(lean, full):
        if y.confidence_source == "scores":
            assert x.signals["min_grammar_logprob"] == pytest.approx(y.signals["min_grammar_logprob"], abs=1e-5)
            assert x.signals["mean_grammar_logprob"] == pytest.approx(y.signals["mean_grammar_logprob"], abs=1e-5)


def test_an_empty_prompt_list_and_one_prompt(tiny):
    assert tiny.complete([], max_new_tokens=4) == []
    a, b = _both(tiny, ["Ticket: hi\nTeam:"], max_new_tokens=4, grammars=[{"choices": ["a", "b"]}])
    _same(a, b)


def test_the_skill_decode_path_uses_it_and_matches_generate(tiny):
    from eval_gates.predict import decode

    cfg = SkillConfig.model_validate(skillkit.config("classification", decoding={"constrained": True},
                                                     labels=["billing", "bug", "account access"]))
    inputs = [json.dumps({"i": i}) for i in range(5)]
    prompts = [f"Ticket: {x}\nTeam:" for x in inputs]
    a = decode(tiny, cfg, prompts, inputs=inputs, signal="min_logprob")
    b = decode(tiny, cfg, prompts, inputs=inputs, signal="min_logprob", decoder="generate")
    assert a.raw == b.raw and a.preds == b.preds
    assert a.confidences == pytest.approx(b.confidences, abs=1e-4)


def _random_adapter(base: str, folder, seed: int) -> str:
    """A LoRA adapter with random (non-zero) weights: its answers differ from the base's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(str(folder))
    return str(folder)


def test_mixed_adapter_batches_answer_as_each_adapter_alone(tiny_model_path, tmp_path):
    """Rows of different adapters (and the base) in one batch: each answers exactly as its adapter alone."""
    from teachers.local import LocalModel

    model = LocalModel(tiny_model_path)
    model.add_adapter("a", _random_adapter(tiny_model_path, tmp_path / "a", 1))
    model.add_adapter("b", _random_adapter(tiny_model_path, tmp_path / "b", 2))
    spec = {"prefix": " ", "choices": ["billing", "bug", "account access", "feature request", "other"]}
    who = ["a", "b", None, "b", "a", None, "a", "b", "a", "b", None]
    caps = [3, 16, 16, 2, 16, 16, 16, 16, 4, 16, 16]
    mixed = model.complete(PROMPTS, max_new_tokens=16, confidence=True, grammars=[spec] * 11, adapters=who, caps=caps)
    alone = {}
    for name in ("a", "b", None):
        idx = [i for i, w in enumerate(who) if w == name]
        outs = model.complete([PROMPTS[i] for i in idx], max_new_tokens=16, confidence=True, grammars=[spec] * len(idx),
                              adapter=name, caps=[caps[i] for i in idx])
        alone.update(zip(idx, outs))
    _same(mixed, [alone[i] for i in range(11)])
    # The adapters really differ (else the test could not tell rows apart).
    texts = {name: [c.text for c in model.complete(PROMPTS, max_new_tokens=16, grammars=[spec] * 11, adapter=name)]
             for name in ("a", "b", None)}
    assert texts["a"] != texts["b"] or texts["a"] != texts[None]
    assert all(c.completion_tokens <= cap for c, cap in zip(mixed, caps))
    with pytest.raises(KeyError, match="not loaded"):
        model.complete(PROMPTS[:2], max_new_tokens=4, adapters=["a", "zzz"])
    with pytest.raises(ValueError, match="adapters: 1 for 2"):
        model.complete(PROMPTS[:2], max_new_tokens=4, adapters=["a"])


def test_the_margin_is_the_choice_over_the_runner_up_among_allowed_tokens(tiny):
    """min_margin: top-1 minus top-2 log-probability among the labels' first tokens, at the one open choice."""
    import torch

    labels = ["billing", "bug", "account access", "feature request", "other"]
    spec = {"prefix": " ", "choices": labels}
    (c,) = tiny.complete([PROMPTS[0]], max_new_tokens=16, confidence=True, grammars=[spec])
    assert c.signals["min_margin"] is not None and c.signals["min_margin"] >= 0
    # Recompute by hand: the logits after the prompt + " " prefix tokens the grammar forced, over allowed firsts.
    tok = tiny.tokenizer
    ids = tok(PROMPTS[0])["input_ids"]
    firsts = {tok(" " + lab, add_special_tokens=False)["input_ids"][0] for lab in labels}
    with torch.inference_mode():
        logits = tiny.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    if len(firsts) > 1 and all(len(tok(" " + lab, add_special_tokens=False)["input_ids"]) >= 1 for lab in labels):
        top = sorted((float(logits[t]) for t in firsts), reverse=True)
        # The grammar allows at least these first tokens; the recorded margin is at most their top-2 gap
        # (other allowed tokens, like a bare " ", can only shrink it).
        assert c.signals["min_margin"] <= top[0] - top[1] + 1e-4


def _uncached(model, prompts, **kw):
    saved, model.prefixes = model.prefixes, None
    try:
        return model.complete(prompts, confidence=True, **kw)
    finally:
        model.prefixes = saved


def test_a_shared_prompt_prefix_is_computed_once_and_answers_the_same(tiny):
    """The prompts' shared prefix comes from the prefix cache (a hit from the second chunk on), and the answers
    and confidences are those of prefilling each whole prompt."""
    from teachers.greedy import PrefixCache

    tiny.prefixes = PrefixCache()
    spec = {"prefix": " ", "choices": ["billing", "bug", "account access", "feature request", "other"]}
    kw = dict(max_new_tokens=16, grammars=[spec] * len(PROMPTS), batch_size=4)
    cached = tiny.complete(PROMPTS, confidence=True, **kw)
    assert tiny.prefixes.misses == 1 and tiny.prefixes.hits == 2  # 3 chunks of 4, one prefix
    _same(cached, _uncached(tiny, PROMPTS, **kw), tol=1e-5)
    # A request alone shares the prefix with the one before it.
    (one,) = tiny.complete([PROMPTS[3]], confidence=True, max_new_tokens=16, grammars=[spec])
    assert tiny.prefixes.hits == 3
    _same([one], _uncached(tiny, [PROMPTS[3]], max_new_tokens=16, grammars=[spec]), tol=1e-5)
    # Free decoding and the model's own log-probabilities of forced tokens too.
    _same(tiny.complete(PROMPTS, confidence=True, max_new_tokens=6), _uncached(tiny, PROMPTS, max_new_tokens=6), 1e-5)


def test_prompts_with_nothing_in_common_or_past_the_sliding_window_skip_the_cache(tiny):
    from teachers.greedy import PrefixCache

    tiny.prefixes = PrefixCache()
    odd = ["x", "Team: yes", "a b c d e f g h i j k"]
    _same(tiny.complete(odd, confidence=True, max_new_tokens=4), _uncached(tiny, odd, max_new_tokens=4), 1e-5)
    assert tiny.prefixes.hits == tiny.prefixes.misses == 0
    window = tiny.model.config.sliding_window
    long = [f"Ticket: {'the invoice is wrong again ' * 40}{i}\nTeam:" for i in range(3)]
    assert len(tiny.tokenizer(long[0])["input_ids"]) >= window  # the window's keys would not hold a cached prefix
    _same(tiny.complete(long, confidence=True, max_new_tokens=4), _uncached(tiny, long, max_new_tokens=4), 1e-5)
    assert tiny.prefixes.hits == tiny.prefixes.misses == 0


def test_an_adapter_loaded_again_under_its_name_never_meets_its_old_prefix(tiny_model_path, tmp_path):
    """A version reloaded under the same adapter name (other weights): its prefix keys are computed again, and
    its weights are the new ones (PEFT keeps the last adapter when it is removed; loading onto that name mixed
    old and new weights)."""
    from teachers.local import LocalModel

    model = LocalModel(tiny_model_path)
    model.add_adapter("a", _random_adapter(tiny_model_path, tmp_path / "a", 1))
    first = model.complete(PROMPTS, max_new_tokens=6, confidence=True, adapter="a")
    model.remove_adapter("a")
    model.add_adapter("a", _random_adapter(tiny_model_path, tmp_path / "b", 2))
    again = model.complete(PROMPTS, max_new_tokens=6, confidence=True, adapter="a")
    fresh = LocalModel(tiny_model_path)
    fresh.prefixes = None
    fresh.add_adapter("a", str(tmp_path / "b"))
    _same(again, fresh.complete(PROMPTS, max_new_tokens=6, confidence=True, adapter="a"), tol=1e-5)
    assert [c.confidence for c in first] != [c.confidence for c in again]
    # Another name after the only adapter was removed: the leftover goes, the new one answers as itself.
    model.remove_adapter("a")
    model.add_adapter("c", str(tmp_path / "a"))
    assert set(model.model.peft_config) == {"c"}
    _same(model.complete(PROMPTS, max_new_tokens=6, confidence=True, adapter="c"), first, tol=1e-5)


def test_common_prefix_and_plan():
    from teachers.greedy import PrefixCache, common_prefix

    assert common_prefix([]) == 0 and common_prefix([[1, 2, 3], [1, 2]]) == 2 and common_prefix([[1], [2]]) == 0
    pc = PrefixCache(min_tokens=3)
    rows = [list(range(10)) + [50], list(range(10)) + [60, 61]]
    assert pc.plan(["a", "a"], rows) == 10
    assert pc.plan(["a"], [list(range(10)) + [70]]) == 10  # alone: shares the prefix with the last prompt
    assert pc.plan(["b"], [list(range(10)) + [70]]) == 0  # a first prompt of another adapter: nothing known
    assert pc.plan(["a"], [[0, 1, 2]]) == 0  # a prefix must leave at least one token to prefill (and >= 3)
    # Two prompts in a row that open with the same word: the earlier history keeps that word out of the prefix.
    pc = PrefixCache(min_tokens=3)
    pc.plan(["a"], [list(range(10)) + [80, 1]])
    pc.plan(["a"], [list(range(10)) + [70, 1]])
    assert pc.plan(["a"], [list(range(10)) + [70, 2]]) == 10


def test_a_drafted_remainder_answers_as_step_by_step_in_fewer_forwards(tiny):
    """Labels whose rest has several tokenizations (no single forced token): the drafted tokenization, verified in
    one forward, gives the step-by-step answer and scores, with no more forwards (fewer where it is accepted)."""
    import torch

    from teachers.greedy import greedy_batch

    labels = ["refund_not_received_by_customer", "refund_requested", "feature_request", "other"]
    spec = {"prefix": " ", "choices": labels}
    tok = tiny.tokenizer
    ids = tok(PROMPTS)["input_ids"]
    vocab = tiny.model.get_output_embeddings().weight.shape[0]
    runs = {}
    for draft in (True, False):
        calls = []
        hook = tiny.model.register_forward_pre_hook(lambda m, a, k: calls.append(1), with_kwargs=True)
        try:
            with torch.inference_mode():
                rows = greedy_batch(tiny.model, tok, ids, 24, matchers=tiny.grammar_compiler().matchers([spec] * len(ids)),
                                    bitmask_vocab=vocab, draft=draft)
        finally:
            hook.remove()
        runs[draft] = (rows, len(calls))
    (a, fa), (b, fb) = runs[True], runs[False]
    assert [r.ids for r in a] == [r.ids for r in b] and [r.finish for r in a] == [r.finish for r in b]
    for x, y in zip(a, b):
        assert x.glps == pytest.approx(y.glps, abs=1e-4)
        assert [m is None for m in x.margins] == [m is None for m in y.margins]
    assert fa < fb  # 8 against 10 on this model and prompts
    assert any(tok.decode(r.ids, skip_special_tokens=True).strip() in labels for r in a)


def test_a_model_whose_cache_the_prefix_path_cannot_read_decodes_without_it(tiny, monkeypatch, caplog):
    import teachers.greedy as G
    from teachers.greedy import PrefixCache

    def broken(*a, **k):
        raise AttributeError("'LinearAttentionLayer' object has no attribute 'keys'")

    tiny.prefixes = PrefixCache()
    monkeypatch.setattr(G, "prefix_kv", broken)
    got = tiny.complete(PROMPTS, max_new_tokens=4, confidence=True)
    assert tiny.prefixes is None and "prefix cache off" in caplog.text
    _same(got, _uncached(tiny, PROMPTS, max_new_tokens=4), tol=1e-5)
    tiny.prefixes = PrefixCache()


# Sampled completions take the same loop (a `sample` callable in place of the argmax).

def test_a_nucleus_of_one_token_samples_the_greedy_answers(tiny, monkeypatch):
    """With top-p near 0 the nucleus holds only the most probable token, so sampling must give the greedy answers
    token for token: the loop's sampler draws from the right step's logits, grammar masks applied."""
    monkeypatch.setattr("teachers.local.TOP_P", 1e-6)
    for grammars in (None, [{"prefix": " ", "choices": ["billing", "bug", "account access"]}] * len(PROMPTS)):
        greedy = tiny.complete(PROMPTS, max_new_tokens=12, batch_size=4, stop_at_newline=False, grammars=grammars)
        sampled = tiny.complete(PROMPTS, max_new_tokens=12, batch_size=4, stop_at_newline=False, temperature=1.0,
                                seed=5, grammars=grammars)
        assert [c.text for c in sampled] == [c.text for c in greedy]
        assert [c.completion_tokens for c in sampled] == [c.completion_tokens for c in greedy]


def test_sampling_is_seeded_rows_differ_and_caps_and_grammars_hold(tiny):
    prompts = ["Ticket: hello\nTeam:"] * 6
    a = tiny.complete(prompts, max_new_tokens=10, temperature=1.5, seed=3, stop_at_newline=False)
    b = tiny.complete(prompts, max_new_tokens=10, temperature=1.5, seed=3, stop_at_newline=False)
    c = tiny.complete(prompts, max_new_tokens=10, temperature=1.5, seed=4, stop_at_newline=False)
    assert [x.text for x in a] == [x.text for x in b]  # the same seed, the same draws
    assert [x.text for x in a] != [x.text for x in c]
    assert len({x.text for x in a}) > 1  # rows of one batch draw independently (n samples of one prompt)
    capped = tiny.complete(prompts, max_new_tokens=10, temperature=1.5, seed=3, caps=[1, 2, 3, 4, 5, 6],
                           stop_at_newline=False)
    assert [x.completion_tokens for x in capped] == [1, 2, 3, 4, 5, 6]
    labels = ["billing", "bug", "account access", "feature request"]
    g = tiny.complete(prompts, max_new_tokens=16, temperature=2.0, seed=3,
                      grammars=[{"prefix": " ", "choices": labels}] * 6)
    assert all(x.text.strip() in labels for x in g)


def test_the_sampled_tokens_follow_the_nucleus_distribution():
    """The loop's sampler against the distribution it must draw from (temperature, then the top-p nucleus):
    over 4,000 draws of one step, no token outside the nucleus and a chi-square fit inside it."""
    import torch

    from teachers.local import NucleusWarper, _sampler

    torch.manual_seed(0)
    logits = torch.randn(1, 50)
    t, top_p = 0.7, 0.9
    want = torch.softmax(NucleusWarper(t, top_p)(None, logits), -1)[0]
    draw = _sampler(t, top_p, seed=11, device="cpu")
    counts = torch.zeros(50)
    for _ in range(40):
        ids = draw(logits.expand(100, 50).clone())
        counts += torch.bincount(ids, minlength=50).float()
    inside = want > 0
    assert 5 <= int(inside.sum()) < 50  # a nucleus of several tokens, and some outside it
    assert counts[~inside].sum() == 0
    expected = want[inside] * counts.sum()
    chi2 = float(((counts[inside] - expected) ** 2 / expected).sum())
    dof = int(inside.sum()) - 1
    assert chi2 < dof + 5 * (2 * dof) ** 0.5  # ~5 sigma over the chi-square's mean
    # a temperature the config allows (>= 0) but so small that logits / temperature overflow float32: the top token
    tiny = _sampler(1e-38, top_p, seed=1, device="cpu")(logits.expand(8, 50).clone() * 30)
    assert tiny.tolist() == [int(logits.argmax())] * 8
