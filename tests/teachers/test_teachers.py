"""Strategies on the local transformers backend (tiny random Gemma), config checks, the stage function."""

import json
import random
import socket

import pytest

from core.records import read_examples
from core.skills import ExpansionConfig, SkillError, TeacherConfig, load_skill
from teachers import open_teacher
from teachers.base import TeacherUnreachable
from teachers.client import ClientSettings, Teacher
from teachers.local import LocalBackend, LocalModel
from teachers.shots import balanced_shots
from teachers.strategies import label, run_expansion, self_instruct


def test_every_request_ends_kept_or_rejected_with_lineage(skill, tiny_model_path):
    teacher = Teacher(LocalBackend(LocalModel(tiny_model_path, name="tiny")), ClientSettings(batch_size=8),
                      cache=None, name="tiny")
    kept, rejected = self_instruct(skill, teacher, 6, seed=0)
    assert len(kept) + len(rejected) == 6
    assert all(r.reason in {"truncated", "empty_generation", "empty_input"} for r in rejected)
    for e in kept + [r.example for r in rejected]:
        assert e.source == "teacher" and e.teacher == "tiny" and len(e.parent_ids) == 3
        assert set(e.parent_ids) <= {s.id for s in skill.seeds}
        assert e.meta["strategy"] == "self_instruct"
        # per-label shot cycling: every shot shares the example's seed label
        assert {s.output for s in skill.seeds if s.id in e.parent_ids} == {e.meta["seed_label"]}
    inputs = skill.eval_set[:5]
    labeled, bad = label(skill, teacher, inputs, seed=0)
    assert len(labeled) + len(bad) == 5
    assert all(e.output in skill.config.labels for e in labeled)
    assert all(r.reason in ("unparseable_answer", "truncated") for r in bad)  # a cut answer is not an answer


def test_generation_is_deterministic_for_a_seed(tiny_model_path):
    teacher = LocalModel(tiny_model_path)
    a = teacher.complete(["Ticket: hello", "Ticket: my invoice"], max_new_tokens=6, temperature=0.9, seed=3)
    b = teacher.complete(["Ticket: hello", "Ticket: my invoice"], max_new_tokens=6, temperature=0.9, seed=3)
    assert [c.text for c in a] == [c.text for c in b]
    assert all(c.prompt_tokens > 0 for c in a)


def test_balanced_shots_cover_every_label(skill):
    shots = balanced_shots(skill.seeds, 10, random.Random(0))
    assert len(shots) == 10
    assert {s.output for s in shots} == set(skill.config.labels)


def test_unreachable_http_teacher_fails_with_one_clear_error():
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = TeacherConfig(backend="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(TeacherUnreachable, match=f"teacher unreachable at http://127.0.0.1:{port}/v1"):
        with open_teacher(cfg):
            pass


def test_config_errors_name_the_key_and_the_fix(skill_root):
    with pytest.raises(ValueError, match="teacher.base_url is required"):
        TeacherConfig(backend="openai", model="m")
    with pytest.raises(ValueError, match="choose one answerer"):
        ExpansionConfig(strategies=["self_instruct", "label", "self_consistency"])
    with pytest.raises(ValueError, match="needs an input writer"):
        ExpansionConfig(strategies=["label"])
    path = skill_root / "ticket-triage" / "skill.yaml"
    original = path.read_text()
    path.write_text(original + "\nexpansion: {strategies: [rewrite]}\n")
    with pytest.raises(SkillError, match="expansion.*needs an answerer"):
        load_skill("ticket-triage", root=skill_root)
    path.write_text(original + "\nteacher: {model: /models/other, local_server: llama_cpp}\n")
    with pytest.raises(SkillError, match="teacher.local_server: llama_cpp serves only bundled:gemma-3-270m"):
        load_skill("ticket-triage", root=skill_root)


def test_run_expansion_writes_records_and_accounting_and_a_rerun_is_free(skill, tiny_model_path, tmp_path):
    cfg = TeacherConfig.model_validate({**skill.config.teacher.model_dump(),
                                        "prices": {"prompt_per_1k": 1.0, "completion_per_1k": 2.0}})
    run1, run2 = tmp_path / "r1", tmp_path / "r2"
    run1.mkdir(), run2.mkdir()
    with open_teacher(cfg, tiny_model_path) as t:
        assert t.kind == "transformers"
        res = run_expansion(skill, t, run1, seed=5)
    acc = json.loads((run1 / "teacher_accounting.json").read_text())
    assert acc["cache_hits"] == 0 and acc["sent"] == acc["requests"] > 0
    assert acc["estimated_cost"] == pytest.approx(acc["prompt_tokens"] / 1000 + 2 * acc["completion_tokens"] / 1000)
    assert acc["latency_p50_s"] is not None and acc["strategies"]["self_instruct"]["kept"] == res.inputs
    written = read_examples(run1 / "generated.jsonl")
    assert [e.id for e in written] == [e.id for e in res.examples]
    for e in written:  # ticket-triage scores labels: the confidence is the answer's calibrated probability
        assert e.confidence == e.meta["label_probs"][e.output] == max(e.meta["label_probs"].values())
        assert e.meta["answer_strategy"] == "score" and e.teacher == cfg.model and e.parent_ids
    assert acc["answering"] == {"answerer": "score", "shots": "random", "calibration": "contextual",
                                "prior": acc["answering"]["prior"]}
    # every self-instruct request is a kept input or a recorded drop
    assert res.inputs + sum(r.stage == "generate_inputs" for r in res.rejected) == skill.config.expansion.target_examples
    with open_teacher(cfg, tiny_model_path) as t:
        res2 = run_expansion(skill, t, run2, seed=5)
    acc2 = res2.accounting
    assert acc2["sent"] == 0 and acc2["cache_hits"] == acc2["requests"] == acc["requests"]
    assert [e.to_dict() | {"created_at": 0} for e in res2.examples] == [e.to_dict() | {"created_at": 0} for e in res.examples]


def test_rewrite_strategy_keeps_lineage_and_drops_unchanged_copies(skill, fake_server):
    def answer(prompt, body):
        if prompt.endswith("Team:"):
            return " billing"
        source = prompt.split("\nTicket: ", 1)[1].split("\nRewritten ticket:")[0]
        # every third rewrite comes back unchanged (once with invisible joiners and another case: the same
        # text all the same), the others reworded
        if body["seed"] % 3 == 0:
            return " " + ("\u034f".join(source.upper()) if body["seed"] % 2 else source)
        return " Reworded: " + source.lower()

    srv = fake_server(answer=answer)
    cfg = TeacherConfig(backend="openai", model="fake", base_url=srv.base_url, max_retries=0, cache=False)
    ec = skill.config.expansion.model_copy(update={"strategies": ["rewrite", "label"], "rewrite_examples": 6})
    skill.config = skill.config.model_copy(update={"teacher": cfg, "expansion": ec})
    with open_teacher(cfg) as t:
        res = run_expansion(skill, t, None, seed=0)
    assert res.requested == 6 and res.inputs == 4
    assert [r.reason for r in res.rejected] == ["unchanged_rewrite"] * 2
    seeds = {s.id: s for s in skill.seeds}
    modes = []
    for e in res.examples:
        src = seeds[e.parent_ids[0]]
        assert e.input == "Reworded: " + " ".join(src.input.split()).lower()
        assert e.meta["strategy"] == "rewrite" and e.meta["seed_label"] == src.output
        assert e.confidence == (1.0 if src.output == "billing" else 0.5) and e.output == "billing"
        assert "source_input" not in e.meta
        modes.append(e.meta["rewrite_mode"])
    assert set(modes) == {"paraphrase", "harder"}
    assert all("harder to handle" in b["prompt"] or "different words" in b["prompt"]
               for b in srv.bodies if not b["prompt"].endswith("Team:"))


@pytest.mark.parametrize("sources,passes", [(4, 2), (2, 3), (3, 2), (6, 3)])
def test_rewrite_asks_every_mode_of_a_source_asked_for_again(skill, fake_server, sources, passes):
    """More variants than sources: each pass over a source takes the next mode, even when the number of sources
    shares a factor with the number of modes (a plain i % modes gave source k the same mode on every pass)."""
    from teachers.strategies import rewrite

    srv = fake_server(answer=lambda prompt, body: f" Reworded ticket number {body['seed']}")
    cfg = TeacherConfig(backend="openai", model="fake", base_url=srv.base_url, max_retries=0, cache=False)
    ec = skill.config.expansion.model_copy(update={"rewrite_modes": ["paraphrase", "harder"]})
    skill.config = skill.config.model_copy(update={"teacher": cfg, "expansion": ec})
    picked = skill.seeds[:sources]
    with open_teacher(cfg) as t:
        kept, rejected = rewrite(skill, t, picked, sources * passes, seed=3)
    assert not rejected and len(kept) == sources * passes
    modes = {s.id: [] for s in picked}
    for e in kept:  # in request order
        modes[e.parent_ids[0]].append(e.meta["rewrite_mode"])
    for got in modes.values():
        assert len(got) == passes and all(a != b for a, b in zip(got, got[1:])), modes


def test_function_call_self_instruct_asks_for_new_functions(fake_server, tmp_path):
    """Half the tool-calling inputs come with functions the teacher wrote itself (issue 9)."""
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    skill = load_skill("tool-calling", root=repo / "seeds")
    new_input = {"request": "How many calories are in 200 g of rice?",
                 "tools": [{"type": "function", "function": {
                     "name": "nutrition_facts", "description": "Calories of a food portion.",
                     "parameters": {"type": "object", "properties": {"food": {"type": "string"},
                                                                     "grams": {"type": "number"}},
                                    "required": ["food", "grams"]}}}]}

    def answer(prompt: str, body: dict) -> str:
        if prompt.startswith("Each line is a JSON object"):
            return " " + json.dumps(new_input)
        return " Please book a table for two tomorrow at 8pm"

    srv = fake_server(answer=answer)
    cfg = TeacherConfig(backend="openai", model="fake", base_url=srv.base_url, cache=False)
    with open_teacher(cfg) as teacher:
        kept, rejected = self_instruct(skill, teacher, 6, seed=0)
    assert len(kept) + len(rejected) == 6
    new = [e for e in kept if e.meta.get("new_tools")]
    assert len(new) == 3  # expansion.new_function_share 0.5
    seed_functions = {t["function"]["name"] for s in skill.seeds for t in json.loads(s.input)["tools"]}
    for e in new:
        tools = json.loads(e.input)["tools"]
        assert [t["function"]["name"] for t in tools] == ["nutrition_facts"]
        assert "nutrition_facts" not in seed_functions
        assert len(e.parent_ids) == skill.config.teacher.style_shots
    old = [e for e in kept if not e.meta.get("new_tools")]
    assert old and all({t["function"]["name"] for t in json.loads(e.input)["tools"]} <= seed_functions for e in old)


@pytest.mark.parametrize("device,cuda_bf16,cpu_bf16,expected", [
    ("cuda", True, False, "bfloat16"),
    ("cuda", False, False, "float32"),  # a GPU without bf16: float16 overflows Gemma 3's activations
    ("cuda", False, True, "float32"),
    ("cpu", False, True, "bfloat16"),
    ("cpu", False, False, "float32"),
])
def test_inference_never_picks_float16(device, cuda_bf16, cpu_bf16, expected):
    """Issue 16 item 14: the same rule as the trainer's choose_device."""
    from teachers.local import inference_dtype, pick_inference_dtype
    from trainers.qlora import choose_device

    assert pick_inference_dtype(device, cuda_bf16, cpu_bf16) == expected
    if device == "cuda":
        assert expected == choose_device(True, cuda_bf16, False).compute_dtype
    assert str(inference_dtype("cpu")).split(".")[-1] in ("bfloat16", "float32")


def test_several_inputs_per_request_are_checked_one_line_at_a_time(skill, fake_server):
    """expansion.inputs_per_request: one request writes several inputs, one per line; each line is kept or
    rejected on its own (a cut last line, an empty one), and a request that wrote fewer says so."""
    def answer(prompt, body):
        n = body["seed"] % 3
        if n == 0:  # four good lines
            return " printer jam on floor 2\nTicket: refund the double charge\nTicket: cannot log in\nTicket: add dark mode"
        if n == 1:  # two good lines, then the model moves on to something else
            return " invoice is wrong\nTicket: app crashes on start\nTeam: bug"
        return " my password reset mail never came\nTicket:  \nTicket: export to csv please\nTicket: the tab"

    srv = fake_server(answer=answer)
    cfg = TeacherConfig(backend="openai", model="fake", base_url=srv.base_url, max_retries=0, cache=False)
    ec = skill.config.expansion.model_copy(update={"inputs_per_request": 4})
    skill.config = skill.config.model_copy(update={"teacher": cfg, "expansion": ec})
    with open_teacher(cfg) as t:
        kept, rejected = self_instruct(skill, t, 12, seed=0)
    bodies = [b for b in srv.bodies if not b["prompt"].endswith("Team:")]
    assert len(bodies) == 3  # 12 inputs, 4 per request
    assert all(b["max_tokens"] == 4 * skill.config.teacher.max_new_tokens and "\n" not in (b.get("stop") or [])
               for b in bodies)
    texts = sorted(e.input for e in kept)
    assert "refund the double charge" in texts and "app crashes on start" in texts and "Team: bug" not in texts
    reasons = sorted(r.reason for r in rejected)
    assert "fewer_inputs_than_asked" in reasons and "empty_generation" in reasons
    assert len(kept) >= 7
    for e in kept:
        assert e.meta["inputs_per_request"] == 4 and e.parent_ids and "line" in e.meta


@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])  # flat (the nucleus past the top k: the full-sort path) to peaked
def test_nucleus_warper_keeps_what_transformers_top_p_keeps(scale):
    import torch
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from teachers.local import NucleusWarper

    g = torch.Generator().manual_seed(int(scale * 10))
    scores = torch.randn(8, 5000, generator=g) * scale
    scores[0, 100:] = float("-inf")  # a grammar's mask: only 100 tokens allowed
    scores[1, :] = 0.0  # every token tied
    ids = torch.zeros(8, 3, dtype=torch.long)
    ref = TopPLogitsWarper(0.95)(ids, TemperatureLogitsWarper(0.9)(ids, scores.clone()))
    ours = NucleusWarper(0.9, 0.95, k=256)(ids, scores.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))  # the same nucleus in every row
    kept = ~torch.isinf(ref)
    assert torch.allclose(ours[kept], ref[kept])  # the same temperature-scaled logits inside it
    assert kept[2:].sum(dim=1).min() >= 1 and (kept[2:].sum(dim=1) < 5000).all()
    if scale == 0.3:  # the flat rows really took the fallback
        assert (kept[2:].sum(dim=1) > 256).any()


def test_nucleus_warper_rejects_settings_that_are_not_sampling():
    from teachers.local import NucleusWarper

    for t, p, k in ((0.0, 0.9, 8), (float("nan"), 0.9, 8), (float("inf"), 0.9, 8), (0.9, 0.0, 8), (0.9, 1.5, 8),
                    (0.9, 0.9, 0), (0.9, 0.9, 2.5)):
        with pytest.raises(ValueError, match="NucleusWarper"):
            NucleusWarper(t, p, k)


def test_identical_requests_in_one_batch_are_sent_once(tmp_path):
    """Two inputs that get the same prompt (per-input shot draws make that deterministic) cost one request."""
    from core.config import TeacherConfig
    from teachers import open_teacher
    from teachers.base import Request
    from teachers.fakeserver import FakeOpenAIServer

    server = FakeOpenAIServer().start()
    try:
        cfg = TeacherConfig(backend="openai", base_url=server.base_url, model="fake", cache=False)
        with open_teacher(cfg) as teacher:
            reqs = [Request(prompt=p, max_tokens=4) for p in ("a", "b", "a", "a")]
            got = teacher.run(reqs)
            acc = teacher.report()
        assert [g.text for g in got][0] == got[2].text == got[3].text != got[1].text
        assert server.total == 2  # what the server received
        assert acc["sent"] == 2 and acc["cache_hits"] == 2
    finally:
        server.stop()


def test_the_teacher_option_is_the_whole_recipe(skill_root):
    """The option's own few_shot and unrounded prior answer, whatever the config says now."""
    from core.skills import load_skill
    from teachers.strategies import answer_examples, teacher_option

    skill = load_skill("ticket-triage", "tiny", root=skill_root)
    seen = {}

    class Recorder:  # a Teacher that records the prompts it is asked and scores every label alike
        name = "rec"

        def run(self, reqs, validate=None, progress=None):
            from teachers.base import Completion

            seen["prompts"] = [r.prompt for r in reqs]
            from teachers.scoring import label_options

            return [Completion(text=json.dumps({o: -1.0 for o in label_options(skill.config)}), finish_reason="stop",
                               prompt_tokens=1, completion_tokens=1, seconds=0.0) for _ in reqs]

    prior = {lab: (1 - 3e-5 * (len(skill.config.labels) - 1)) if i == 0 else 3e-5
             for i, lab in enumerate(skill.config.labels)}
    option = {"answerer": "score", "shots": "random", "few_shot": 1, "seed": 3, "calibration": "contextual",
              "prior": prior}
    from core.records import Example

    x = Example(id="x", skill=skill.name, input="my invoice shows the wrong amount", output=None, source="traffic")
    answered, _ = answer_examples(skill, Recorder(), [x], option)
    assert skill.config.teacher.few_shot != 1 and seen["prompts"][0].count(f"\n{skill.config.output_name}:") == 2
    # Equal raw scores divided by the prior: the labels with the 3e-5 prior win (a rounded prior of 0 would not).
    assert answered[0].output != skill.config.labels[0]


def test_the_inference_dtype_can_be_pinned_and_a_bad_value_names_the_variable(monkeypatch):
    import torch

    from teachers.local import inference_dtype

    for name in ("float32", "bfloat16"):
        monkeypatch.setenv("DISTILL_INFERENCE_DTYPE", name)
        assert inference_dtype("cpu") == getattr(torch, name)
    monkeypatch.setenv("DISTILL_INFERENCE_DTYPE", "float16")
    with pytest.raises(ValueError, match="DISTILL_INFERENCE_DTYPE='float16'"):
        inference_dtype("cpu")
    monkeypatch.setenv("DISTILL_INFERENCE_DTYPE", "auto")
    assert inference_dtype("cpu") in (torch.float32, torch.bfloat16)


def test_the_lm_head_input_gets_dense_strides():
    """A last-position slice [1, 1, d] of [1, L, d] is 'contiguous' to torch but keeps the stride L*d on its size-1
    batch dim; bf16 matmul then copied the whole LM head per call. _dense gives row-major strides, copying only
    then."""
    import torch

    from teachers.local import _dense

    h = torch.randn(1, 3, 8)
    last = h[:, -1:, :]
    assert last.is_contiguous() and last.stride() == (24, 8, 1)
    fixed = _dense(last)
    assert fixed.stride() == (8, 8, 1) and torch.equal(fixed, last)
    dense = torch.randn(2, 4)
    assert _dense(dense) is dense and _dense(None) is None
