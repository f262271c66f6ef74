"""Issue 10: shot selection, label scoring, contextual calibration and the k-fold teacher audit,
on the tiny random model (real forward passes) and the real ticket-triage seeds."""

import json
import math

import pytest

from core.records import Example
from teachers.audit import make_folds, options_for, run_audit
from teachers.base import Request
from teachers.client import Teacher
from teachers.local import LocalBackend, LocalModel
from teachers.scoring import calibrate, content_free_prior, label_options, run_scores, softmax
from teachers.shots import ShotPicker, tokens


def _ex(i, text, label):
    return Example(id=f"s{i}", skill="t", input=text, output=label, source="human")


def test_similar_shots_are_the_nearest_seeds_of_every_label(skill):
    cfg = skill.config
    pool = skill.seeds
    query = pool[0].input
    picker = ShotPicker(cfg, pool, 10, "similar")
    shots = picker.pick(query)
    assert len(shots) == 10 and query not in [s.input for s in shots]
    assert {s.output for s in shots} == set(cfg.labels)  # balanced: two per label
    assert max(sum(s.output == lab for s in shots) for lab in cfg.labels) == 2
    # Within each label, the chosen seeds are the ones BM25 ranks highest for the query.
    from rank_bm25 import BM25Okapi

    others = [s for s in pool if s.input != query]
    bm = BM25Okapi([tokens(s.input) for s in pool])  # the picker's index is the whole pool
    scores = dict(zip([s.id for s in pool], bm.get_scores(tokens(query))))
    for lab in cfg.labels:
        best = sorted((scores[s.id] for s in others if s.output == lab), reverse=True)[:2]
        assert sorted((scores[s.id] for s in shots if s.output == lab), reverse=True) == best
    # The most similar shot is last, next to the input.
    assert scores[shots[-1].id] == max(scores[s.id] for s in shots)
    random_shots = ShotPicker(cfg, pool, 10, "random").pick(query)
    assert sorted(s.output for s in random_shots) == sorted(cfg.labels * 2)


def _full_sequence_logprob(model, prompt, option):
    import torch

    tok = model.tokenizer
    p = tok(prompt)["input_ids"]
    full = tok(prompt + option)["input_ids"]
    with torch.inference_mode():
        logits = model.model(input_ids=torch.tensor([full])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return sum(float(lp[j - 1, full[j]]) for j in range(len(p), len(full)))


def test_local_scoring_equals_full_sequence_loglikelihood(skill, tiny_model_path):
    model = LocalModel(tiny_model_path)
    cfg = skill.config
    from core import prompting

    prompt = prompting.format_prompt(cfg, "I was charged twice for my plan", [(s.input, s.output) for s in skill.seeds[:4]])
    options = label_options(cfg) + (" something much longer than a label",)
    c = model.score(prompt, options)
    got = json.loads(c.text)
    assert c.finish_reason == "scored" and set(got) == set(options)
    assert any(len(model.tokenizer(o, add_special_tokens=False)["input_ids"]) > 1 for o in options)
    for o in options:  # the KV-cache continuation gives the same numbers as scoring each sequence whole
        assert got[o] == pytest.approx(_full_sequence_logprob(model, prompt, o), abs=2e-3)


def test_scores_go_through_the_cache(skill, tiny_model_path, tmp_path):
    from teachers.cache import ResponseCache

    cfg = skill.config
    backend = LocalBackend(LocalModel(tiny_model_path))
    cache = ResponseCache(tmp_path / "c.sqlite")
    t = Teacher(backend, cache=cache)
    first = run_scores(cfg, t, ["Ticket: a\nTeam:", "Ticket: b\nTeam:"])
    assert t.accounting.sent == 2 and all(set(s) == set(cfg.labels) for s in first)
    t2 = Teacher(backend, cache=cache)
    assert run_scores(cfg, t2, ["Ticket: a\nTeam:", "Ticket: b\nTeam:"]) == first
    assert t2.accounting.sent == 0 and t2.accounting.cache_hits == 2
    # A scoring request never shares a cache key with a sampling one of the same prompt.
    assert Request(prompt="x").cache_key({}) != Request(prompt="x", options=(" a",)).cache_key({})
    cache.close()


def test_contextual_calibration_divides_out_the_prior():
    probs = {"a": 0.6, "b": 0.3, "c": 0.1}
    assert calibrate(probs, None) == probs
    uniform = calibrate(probs, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3})
    assert all(math.isclose(uniform[k], probs[k]) for k in probs)
    # A teacher that leans to `a` on content-free input: the lean is removed and `b` wins.
    cal = calibrate(probs, {"a": 0.8, "b": 0.1, "c": 0.1})
    assert max(cal, key=cal.get) == "b" and math.isclose(sum(cal.values()), 1.0)
    assert softmax({"a": 0.0, "b": math.log(3)}) == pytest.approx({"a": 0.25, "b": 0.75})


def test_content_free_prior_is_a_distribution(skill, tiny_model_path):
    t = Teacher(LocalBackend(LocalModel(tiny_model_path)))
    prior = content_free_prior(skill.config, t, skill.seeds, seed=0, shot_sets=2)
    assert set(prior) == set(skill.config.labels) and math.isclose(sum(prior.values()), 1.0)
    assert t.accounting.sent == 2 * 3  # 3 content-free inputs per shot set


class RecordingBackend(LocalBackend):
    def __init__(self, model):
        super().__init__(model)
        self.prompts = []

    def complete_requests(self, requests):
        self.prompts += [r.prompt for r in requests]
        return super().complete_requests(requests)


def _with(skill, **over):
    from core.skills import Skill, deep_merge

    cfg = skill.config.model_validate(deep_merge(skill.config.model_dump(), over))
    return Skill(config=cfg, folder=skill.folder, profile=skill.profile, seeds=skill.seeds, eval_set=skill.eval_set)


def test_folds_are_stratified_and_cover_every_seed_once(skill):
    folds = make_folds(skill.config, skill.seeds, 5, seed=3)
    ids = [s.id for f in folds for s in f]
    assert sorted(ids) == sorted(s.id for s in skill.seeds)
    for f in folds:  # ten seeds per label over five folds: two of each label per fold
        assert sorted(s.output for s in f) == sorted(skill.config.labels * 2)


def test_audit_scores_each_seed_once_with_shots_from_other_folds(skill, tiny_model_path):
    sk = _with(skill, expansion={"strategies": ["self_instruct", "score"]},
               teacher={"shot_selection": "auto", "calibration": "auto", "calibration_shot_sets": 1},
               audit={"folds": 5, "floor": 0.99})
    assert [o for o in options_for(sk.config)] == [
        {"shots": "random", "calibration": "none"}, {"shots": "random", "calibration": "contextual"},
        {"shots": "similar", "calibration": "none"}, {"shots": "similar", "calibration": "contextual"}]
    backend = RecordingBackend(LocalModel(tiny_model_path))
    teacher = Teacher(backend)
    audit = run_audit(sk, teacher, seed=0)
    assert len(audit["options"]) == 4 and audit["n"] == len(skill.seeds)
    items = audit["items"]
    assert sorted(i["id"] for i in items) == sorted(s.id for s in skill.seeds)
    assert all(i["prediction"] in sk.config.labels and 0 < i["confidence"] <= 1 for i in items)
    # Held-out seeds are never shown as shots: each item prompt contains its own input once
    # (as the question) and no other seed of its fold.
    folds = make_folds(sk.config, audit_seeds_of(sk), 5, seed=0)
    from core import prompting

    for fold in folds:
        fold_lines = {prompting.format_input(sk.config, s.input) for s in fold}
        for s in fold:
            prompt = next(p for p in backend.prompts if p.endswith(prompting.format_input(sk.config, s.input)
                                                                   + f"\n{sk.config.output_name}:"))
            shown = {line for line in prompt.split("\n")[:-2] if line.startswith(sk.config.input_name + ":")}
            assert not shown & fold_lines
    for o in audit["options"]:
        assert set(o["per_label_precision"]) == set(sk.config.labels)
        assert sum(o["predicted_distribution"].values()) == len(skill.seeds)
        assert o["teacher_seconds"] >= 0 and o["requests_sent"] >= 0
    # Calibrated options cost the content-free prompts on top of the scoring pass.
    assert teacher.accounting.sent == 2 * len(skill.seeds) + 5 * 3
    # The random tiny model cannot reach the floor: the audit refuses, and says why.
    assert audit["passed"] is False and "audit.floor 0.990" in audit["reason"] and "refused" in audit["reason"]


def audit_seeds_of(sk):
    from teachers.audit import audit_seeds

    return audit_seeds(sk, 0)


def test_audit_with_the_label_answerer_has_no_confidences(skill, tiny_model_path):
    sk = _with(skill, teacher={"shot_selection": "similar"}, audit={"folds": 3, "floor": None},
               expansion={"strategies": ["self_instruct", "label"]}, filters={"target_precision": None})
    audit = run_audit(sk, Teacher(LocalBackend(LocalModel(tiny_model_path))), seed=1)
    assert [o["option"] for o in audit["options"]] == ["similar shots"]
    assert audit["passed"] is True and "has no floor" in audit["reason"]
    assert all(i["confidence"] is None for i in audit["items"])


def test_score_needs_a_classification_skill_and_logprobs():
    from pydantic import ValidationError

    from core.skills import SkillConfig

    base = {"name": "x", "task": "classification", "instruction": "i", "labels": ["a", "b"],
            "expansion": {"strategies": ["self_instruct", "score"]}}
    SkillConfig.model_validate(base)
    chat = {"endpoint": "chat", "backend": "openai", "base_url": "http://127.0.0.1:1/v1"}
    SkillConfig.model_validate({**base, "teacher": chat})  # first-token logprobs (auto)
    with pytest.raises(ValidationError, match="chat endpoints"):
        SkillConfig.model_validate({**base, "teacher": {**chat, "score_method": "echo"}})
    with pytest.raises(ValidationError, match="closed label set"):
        SkillConfig.model_validate({**base, "task": "generation", "labels": []})
    with pytest.raises(ValidationError, match="one answerer"):
        SkillConfig.model_validate({**base, "expansion": {"strategies": ["self_instruct", "score", "label"]}})


def test_first_token_scores_match_the_longest_listed_token():
    from teachers.http import first_token_scores

    top = {" bill": -0.5, " b": -1.0, "bug": -2.0, " account": -3.0}
    got = first_token_scores(top, (" billing", " bug", " account", " other"))
    assert got[" billing"] == -0.5 and got[" bug"] == -2.0 and got[" account"] == -3.0
    assert got[" other"] == pytest.approx(-3.0 - math.log(2))  # not listed: below the last listed


def test_score_answerer_labels_with_calibrated_probabilities(skill, tiny_model_path):
    from teachers.strategies import score, shot_picker

    t = Teacher(LocalBackend(LocalModel(tiny_model_path)))
    items = [Example(id=e.id, skill=e.skill, input=e.input, output=None, source="teacher",
                     meta={"seed_label": e.output}) for e in skill.eval_set[:6]]
    prior = content_free_prior(skill.config, t, skill.seeds, seed=0, shot_sets=1)
    kept, rejected = score(skill, t, items, seed=0, picker=shot_picker(skill, "similar"), prior=prior)
    assert len(kept) == 6 and not rejected
    for e in kept:
        probs = e.meta["label_probs"]
        assert e.output in skill.config.labels and e.confidence == probs[e.output] == max(probs.values())
        assert abs(sum(probs.values()) - 1) < 1e-3 and e.meta["calibrated"] is True
        assert e.meta["answer_strategy"] == "score" and len(e.parent_ids) == skill.config.teacher.few_shot
        assert isinstance(e.meta["seed_label_agrees"], bool)
    raw, _ = score(skill, t, items, seed=0, picker=shot_picker(skill, "similar"), prior=None)
    assert [e.meta["label_probs"] for e in raw] != [e.meta["label_probs"] for e in kept]


def test_audit_of_an_extraction_skill_uses_its_own_metric(skill_root, tiny_model_path):
    from core.skills import load_skill

    ext = load_skill("json-extraction", root=skill_root)
    ext = _with(ext, teacher={"model": tiny_model_path, "answer_max_tokens": 8, "invalid_retries": 0},
                audit={"folds": 2, "max_items": 6, "floor": 0.5})
    audit = run_audit(ext, Teacher(LocalBackend(LocalModel(tiny_model_path))), seed=0)
    assert audit["metric"] == "field_f1" and audit["n"] == 6 and len(audit["items"]) == 6
    assert [o["option"] for o in audit["options"]] == ["random shots"]
    assert audit["passed"] is False and audit["score"] < 0.5  # a random model writes no valid JSON


@pytest.mark.parametrize("endpoint,method", [("completions", "echo"), ("completions", "first_token"),
                                             ("chat", "first_token")])
def test_http_scoring_reads_each_servers_logprobs(fake_server, endpoint, method):
    from teachers.http import OpenAIBackend

    srv = fake_server(answer=lambda prompt, body: " bug crashes")
    t = Teacher(OpenAIBackend(srv.base_url, "fake", endpoint=endpoint, score_method=method))
    prompt = "Ticket: the app crashes\nTeam:"
    (got,) = t.run([Request(prompt=prompt, options=(" billing", " bug", " feature_request"), max_tokens=1)])
    scores = json.loads(got.text)
    if method == "echo":  # one request per option; each option's words scored -len/10 by the fake server
        assert scores == pytest.approx({" billing": -0.7, " bug": -0.3, " feature_request": -1.5})
        assert srv.total == 3 and all(b["echo"] is True for b in srv.bodies)
    else:  # one request; the first answer token is " bug"; unlisted options get a bound below the last listed
        assert scores[" bug"] == -0.1 and scores[" billing"] == scores[" feature_request"] == pytest.approx(-4 - math.log(2))
        assert srv.total == 1


def test_a_server_without_logprobs_stops_with_a_clear_error():
    from aiohttp import web

    from teachers.base import TeacherError
    from teachers.fakeserver import FakeOpenAIServer
    from teachers.http import OpenAIBackend

    class NoLogprobs(FakeOpenAIServer):  # a server that ignores echo and logprobs
        async def _complete(self, request):
            resp = await super()._complete(request)
            data = json.loads(resp.text)
            data["choices"][0].pop("logprobs", None)
            return web.json_response(data)

    with NoLogprobs() as srv:
        for method in ("echo", "first_token"):
            with pytest.raises(TeacherError, match="logprobs"):
                Teacher(OpenAIBackend(srv.base_url, "fake", score_method=method)).run(
                    [Request(prompt="Team:", options=(" a", " b"))])
