"""Issue 34 item 2: traffic as the teacher's context. Recent inputs of every lane (kept ones included) are labelled
by the teacher with the run's option, never with the student's answer, go through the same filters (a replayed or
eval input is dropped as contamination), carry the traffic row in their lineage, are never sent twice, and are
shown as style shots when the teacher writes new inputs. Without traffic, the expansion is the one before.

The teacher is the project's fake OpenAI server (no model): fast, and every prompt it received can be read."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from core.records import read_examples
from core.skills import SkillError, load_skill
from teachers.fakeserver import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
SKILL = "ticket-triage"
TEACHER_LABEL, STUDENT_LABEL = "bug", "billing"
WORDS = ("invoice export login crash sync board dashboard password refund seat plan calendar mobile desktop "
         "widget report upload download folder share permission webhook token printer label receipt tax reminder "
         "notification badge avatar theme font language timezone archive search filter sort column row chart").split()
EMAIL, PHONE = "jane.doe.flywheel@example.com", "+44 20 7946 0958"


def _answer(prompt: str, body: dict) -> str:
    """The teacher: every label prompt gets TEACHER_LABEL; a new-input prompt a ticket of words drawn by its hash."""
    if prompt.endswith("Team:"):
        return " " + TEACHER_LABEL
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    return " " + " ".join(rng.choice(WORDS) for _ in range(14))


HELD = [  # accepted rows of the initial JSONL: with the escalated table row, the replay hold-out (sample 3)
    ("held-1", "The quarterly export to spreadsheet silently drops every row after the first thousand entries"),
    ("held-2", "Please let us pay the annual plan by bank transfer instead of a credit card from now on"),
]
KEPT = [  # the student answered these alone (lane keep, reference_source student): its answer is never a label
    ("k-1", "The new Lumen tablet app freezes on the splash screen right after the March update"),
    ("k-2", "Checkout with PayFlux keeps failing with code 4012 when customers pick the instalment option"),
    ("k-3", "cant open shared folders anymore?? worked yesterday"),
    ("k-4", "After migrating our workspace to the EU region every scheduled automation fires an hour late"),
]


@pytest.fixture()
def teacher_server():
    srv = FakeOpenAIServer(answer=_answer).start()
    yield srv
    srv.stop()


def _make_skill(root: Path, server: FakeOpenAIServer, context: dict | None = None, initial: bool = True) -> None:
    folder = root / SKILL
    shutil.copytree(REPO / "seeds" / SKILL, folder)
    cfg = yaml.safe_load((folder / "skill.yaml").read_text())
    cfg["teacher"] = {"backend": "openai", "base_url": server.base_url, "model": "fake-teacher", "endpoint": "completions",
                      "structured_output": False, "few_shot": 4, "style_shots": 4, "max_retries": 0,
                      "invalid_retries": 0, "max_new_tokens": 48}
    cfg["expansion"] = {"target_examples": 8, "strategies": ["self_instruct", "label"]}
    cfg["audit"] = {"enabled": False}
    cfg["filters"].update(target_precision=None, max_label_distance=None)
    cfg["gates"]["replay"] = {"sample": 3, "initial": "traffic.jsonl" if initial else None,
                              "context": context or {"relabel": 20, "recent": 100, "style_share": 0.5}}
    (folder / "skill.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    rows = [{"id": i, "timestamp": f"2026-01-0{n + 1}T10:00:00Z", "request": text, "reference": "bug",
             "reference_source": "llm", "accepted": True} for n, (i, text) in enumerate(HELD)]
    # A raw personal datum in a log copied in by hand (the gateway's rows are scrubbed at capture).
    rows.append({"id": "pii-1", "timestamp": "2026-01-05T10:00:00Z", "reference": STUDENT_LABEL,
                 "request": f"I was billed for two seats, write to {EMAIL} or call {PHONE} about the refund",
                 "reference_source": "student", "accepted": False})
    (folder / "traffic.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture()
def env(tmp_path, monkeypatch, teacher_server):
    root = tmp_path / "seeds"
    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(root))
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "work"))
    monkeypatch.delenv("DISTILL_TRAFFIC_URL", raising=False)
    monkeypatch.delenv("DISTILL_REGISTRY", raising=False)
    return root


def _serve(skill, extra: list[tuple[str, str]] = ()) -> None:
    """The gateway's table: the KEPT rows (and `extra`) as the student's, one escalated row the teacher answered."""
    from core.privacy import scrubber_for
    from core.workdir import traffic_table_name, traffic_url
    from gateway.traffic import TrafficWriter

    now = datetime.now(timezone.utc)
    w = TrafficWriter(traffic_url(), traffic_table_name, flush_ms=20, scrub_for=lambda _: scrubber_for(skill.config.privacy))
    rows = [(i, t, "keep", "student", None) for i, t in [*KEPT, *extra]]
    rows.append(("esc-1", "Our accountant needs the VAT number printed on every invoice we have received so far",
                 "escalate", "llm", True))
    for n, (ident, text, lane, source, accepted) in enumerate(rows):
        w.write(SKILL, {"id": ident, "created_at": now - timedelta(minutes=60 - n), "skill": SKILL, "version": 1,
                        "request": text, "answer": STUDENT_LABEL, "slm_answer": STUDENT_LABEL,
                        "slm_raw": f" {STUDENT_LABEL}", "lane": lane, "confidence": -0.1, "latency_ms": 5.0,
                        "reference": STUDENT_LABEL if source == "student" else "billing", "reference_source": source,
                        "accepted": accepted})
    assert w.flush(30)
    w.close()


def _expand(skill, run_dir: Path, seed: int, pool=None, replay=None):
    from eval_gates.replay import replay_items
    from filters import filter_stage
    from flows.traffic_context import gather
    from teachers import open_skill_teacher
    from teachers.strategies import run_expansion

    replay = replay if replay is not None else replay_items(skill)[0]
    run_dir.mkdir(parents=True, exist_ok=True)
    context, sampled = gather(skill, run_dir, seed, replay, pool=pool or [])
    with open_skill_teacher(skill, None, run_dir) as teacher:
        res = run_expansion(skill, teacher, run_dir, seed, traffic=context)
    out = filter_stage(skill, read_examples(run_dir / "generated.jsonl"), replay, pool or [], run_dir)
    return context, sampled, res, out, replay


def _prompts(server: FakeOpenAIServer) -> list[str]:
    return [b["prompt"] for b in server.bodies]


def test_traffic_is_labelled_by_the_teacher_filtered_and_traced_to_its_row(env, teacher_server, tmp_path):
    _make_skill(env, teacher_server)
    skill = load_skill(SKILL, root=env)
    # Two more kept rows: a copy of a held-out request under another id, and a copy of an eval item.
    evalx = skill.eval_set[0]
    _serve(skill, extra=[("dup-of-held", HELD[0][1]), ("dup-of-eval", evalx.input)])
    context, sampled, res, out, replay = _expand(skill, tmp_path / "run", seed=3)

    holdout = {e.meta.get("traffic_id", e.id) for e in replay}
    assert holdout == {"held-1", "held-2", "esc-1"}
    sent = {e.meta["traffic_id"] for e in context.relabel}
    # Every lane's row but the held-out ones: the kept (student) rows and the hand-copied log's.
    assert sent == {"k-1", "k-2", "k-3", "k-4", "dup-of-held", "dup-of-eval", "pii-1"}
    assert sampled["excluded"] == {"in_replay_holdout": 3} and sampled["read"] == 10

    relabels = {e.meta["traffic_id"]: e for e in res.examples if e.source == "traffic_relabel"}
    assert set(relabels) == sent and res.traffic["relabelled"] == len(sent)
    for tid, e in relabels.items():
        # The teacher's label under the run's option, never the student's answer the row carries.
        assert e.output == TEACHER_LABEL != STUDENT_LABEL
        assert e.id == f"traffic_relabel:{tid}" and e.teacher == "fake-teacher"
        assert e.meta["strategy"] == "traffic_relabel" and e.meta["answer_strategy"] == "label"
        assert e.meta["traffic_timestamp"] and e.meta["traffic_log"]
    assert relabels["k-1"].meta["traffic_lane"] == "keep" and "traffic_ticket_triage" in relabels["k-1"].meta["traffic_log"]
    # Counted with the rest of the teacher's work.
    acc = res.accounting
    assert acc["strategies"]["traffic_relabel"] == {"kept": len(sent), "dropped": 0}
    assert acc["traffic_context"]["relabel_sent"] == len(sent) and acc["requests"] >= len(sent) + 8

    # The same filters as teacher data: a held-out request under another id and an eval item never train.
    kept = {e.meta.get("traffic_id") for e in out.kept if e.source == "traffic_relabel"}
    assert kept == {"k-1", "k-2", "k-3", "k-4", "pii-1"}
    dropped = {r.example.meta["traffic_id"]: r for r in out.rejected if r.example.source == "traffic_relabel"}
    assert dropped["dup-of-held"].stage == "contamination" and dropped["dup-of-held"].detail["eval_set"] == "replay"
    assert dropped["dup-of-eval"].stage == "contamination" and dropped["dup-of-eval"].detail["eval_set"] == "eval"

    # Personal data: the hand-copied row reached the teacher, the candidates and the run folder as placeholders.
    assert "<EMAIL_ADDRESS>" in relabels["pii-1"].input and "<PHONE_NUMBER>" in relabels["pii-1"].input
    prompts = "\n".join(_prompts(teacher_server))
    assert EMAIL not in prompts and PHONE not in prompts and "<EMAIL_ADDRESS>" in prompts
    for f in (tmp_path / "run").iterdir():
        if f.suffix in (".json", ".jsonl"):
            text = f.read_text()
            assert EMAIL not in text and PHONE not in text, f
    # The run folder names the rows it sampled, never their text.
    ctx = json.loads((tmp_path / "run" / "traffic_context.json").read_text())
    assert set(ctx["relabel_ids"]) == sent and KEPT[0][1] not in json.dumps(ctx)


def test_new_inputs_take_traffic_as_style_shots(env, teacher_server, tmp_path):
    _make_skill(env, teacher_server)
    skill = load_skill(SKILL, root=env)
    _serve(skill)
    context, sampled, res, out, _ = _expand(skill, tmp_path / "run", seed=1)
    style_ids = {e.meta["traffic_id"] for e in context.style}
    # The held-out requests are never shown; every other recent input is (scrubbed).
    assert style_ids == {"k-1", "k-2", "k-3", "k-4", "pii-1"} and sampled["style_pool"] == 5
    writes = [p for p in _prompts(teacher_server) if p.endswith("Ticket:")]
    assert writes
    k = int(skill.config.teacher.style_shots * skill.config.gates.replay.context.style_share)  # 4 x 0.5 = 2
    texts = {e.meta["traffic_id"]: e.input for e in context.style}
    for p in writes:
        shown = [tid for tid, text in texts.items() if f"Ticket: {text}\n" in p]
        assert len(shown) == k
        seeds_shown = [s for s in skill.seeds if f"Ticket: {s.input}\n" in p]
        assert len(seeds_shown) == skill.config.teacher.style_shots - k
    generated = [e for e in res.examples if e.source == "teacher"]
    assert generated and res.traffic["traffic_style_shots"] == k * res.traffic["requests_with_traffic_shots"]
    seeds = {s.id for s in skill.seeds}
    for e in generated:  # lineage: the traffic rows shown, beside the seeds shown
        shown = 1 if e.meta.get("counterfactual") else k  # a counterfactual request shows one (next test)
        assert len(e.meta["style_traffic_ids"]) == shown and set(e.meta["style_traffic_ids"]) <= style_ids
        assert set(e.parent_ids) <= seeds
    # The kept ones name them too, after the filters.
    assert all("style_traffic_ids" in e.meta for e in out.kept if e.source == "teacher")


def test_counterfactual_requests_cross_a_traffic_input_with_every_label(env, teacher_server, tmp_path):
    """context.cross_share of the label requests ask for an input of that label about what one traffic input
    names: its seeds, the input, the label; every label gets its turn; the answer is still the teacher's."""
    _make_skill(env, teacher_server, context={"relabel": 0, "recent": 100, "style_share": 0.5, "cross_share": 0.25})
    cfg = yaml.safe_load((env / SKILL / "skill.yaml").read_text())
    cfg["expansion"]["target_examples"] = 40
    (env / SKILL / "skill.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    skill = load_skill(SKILL, root=env)
    _serve(skill)
    context, _, res, _, _ = _expand(skill, tmp_path / "run", seed=2)
    texts = {e.meta["traffic_id"]: e.input for e in context.style}
    cross = [p for p in _prompts(teacher_server) if "received today:" in p]
    writes = [p for p in _prompts(teacher_server) if p.endswith("Ticket:")]
    assert res.traffic["counterfactual_requests"] == len(cross) > 0
    # One in four label requests, evenly spaced: with five labels cycling, each label has one.
    assert len(cross) == (len(cross) + len(writes)) // 4
    labels = set()
    for p in cross:
        label = p.split("whose right team is ", 1)[1].split(":", 1)[0]
        labels.add(label)
        assert p.endswith("New ticket:") and f"Write a new ticket whose right team is {label}," in p
        today = p.split("received today:", 1)[1]
        assert sum(f"Ticket: {t}\n" in today for t in texts.values()) == 1  # one traffic input, after the seeds
        shown = [s for s in skill.seeds if f"Ticket: {s.input}\n" in p]
        assert shown and all(s.output == label for s in shown)
    assert labels == set(skill.config.labels)
    per_label = Counter(p.split("whose right team is ", 1)[1].split(":", 1)[0] for p in cross)
    assert max(per_label.values()) - min(per_label.values()) <= 1
    made = [e for e in res.examples if e.meta.get("counterfactual")]
    assert made and all(e.output == TEACHER_LABEL for e in made)  # the teacher's label, not the one asked for
    assert all(e.meta["seed_label"] in labels and len(e.meta["style_traffic_ids"]) == 1 for e in made)
    assert json.loads((tmp_path / "run" / "traffic_context.json").read_text())["cross_share"] == 0.25


@pytest.mark.parametrize("groups", range(1, 9))
@pytest.mark.parametrize("share", [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.75, 1.0])
def test_every_label_gets_its_share_of_counterfactual_requests(groups, share):
    """Requests cycle through the label groups; `share` of each group's requests are counterfactual, within one,
    whatever the number of labels (a count over all requests sent every one of them to one label of four)."""
    from teachers.strategies import counterfactual_turn

    for requests in (groups, 4 * groups + 3, 40 * groups + 1):
        got = Counter(i % groups for i in range(requests)
                      if counterfactual_turn(i // groups, i % groups, groups, share))
        for g in range(groups):
            turns = len(range(g, requests, groups))
            assert abs(got[g] - share * turns) <= 1, (groups, share, requests, g, got)
        assert abs(sum(got.values()) - share * requests) <= groups
    if share:  # over enough requests, every label has some
        long = Counter(i % groups for i in range(40 * groups) if counterfactual_turn(i // groups, i % groups,
                                                                                        groups, share))
        assert set(long) == set(range(groups))


def test_cross_share_zero_asks_for_no_counterfactual(env, teacher_server, tmp_path):
    _make_skill(env, teacher_server, context={"relabel": 0, "recent": 100, "style_share": 0.5, "cross_share": 0.0})
    skill = load_skill(SKILL, root=env)
    _serve(skill)
    _, _, res, _, _ = _expand(skill, tmp_path / "run", seed=2)
    assert not any("received today:" in p for p in _prompts(teacher_server))
    assert res.traffic["counterfactual_requests"] == 0 and res.traffic["requests_with_traffic_shots"] > 0


def test_style_share_zero_shows_seeds_only(env, teacher_server, tmp_path):
    _make_skill(env, teacher_server, context={"relabel": 0, "style_share": 0.0})
    skill = load_skill(SKILL, root=env)
    _serve(skill)
    context, sampled, res, _, _ = _expand(skill, tmp_path / "run", seed=1)
    assert not context.relabel and not context.style and sampled["read"] == 0
    assert all("style_traffic_ids" not in e.meta for e in res.examples)
    assert "traffic_context" not in res.accounting and "traffic_relabel" not in res.accounting["strategies"]


# Digest of the sorted self-instruct prompts sent for the shipped ticket-triage seeds, this skill's teacher
# settings (style_shots 4) and seed 0, with no traffic. Re-pinned on 2026-12-07 over the sorted list: the first
# digest (562d6bc) was taken in the server's arrival order, which the client's concurrency does not fix. The
# prompt builder itself is pinned against the code before item 2 by tests/core/task_golden.json's build_input/*.
NO_TRAFFIC_PROMPTS = "f6434523238e352f039c"


def test_without_traffic_the_expansion_is_the_one_before(env, teacher_server, tmp_path):
    from flows.traffic_context import gather
    from teachers import open_skill_teacher
    from teachers.strategies import TrafficContext, run_expansion

    _make_skill(env, teacher_server, initial=False)  # no initial log and no gateway table: no traffic at all
    skill = load_skill(SKILL, root=env)
    skill.config.teacher.cache = False
    context, sampled = gather(skill, tmp_path / "a", 0, [], pool=[])
    assert sampled["read"] == 0 and context.relabel == [] and context.style == []
    runs = []
    for name, ctx in (("a", context), ("b", None), ("c", TrafficContext(style_share=0.5))):
        teacher_server.reset()
        with open_skill_teacher(skill, None, tmp_path / name) as teacher:
            res = run_expansion(skill, teacher, tmp_path / name, 0, traffic=ctx)
        # Sorted: the client sends concurrently, so the arrival order at the server is not the request order.
        runs.append((sorted(_prompts(teacher_server)), [e.to_dict() | {"created_at": 0} for e in res.examples],
                     {k: v for k, v in res.accounting.items() if not k.startswith("latency") and k != "seconds"}))
    assert runs[0] == runs[1] == runs[2]
    prompts = runs[0][0]
    assert "traffic_context" not in runs[0][2] and all("style_traffic_ids" not in e["meta"] for e in runs[0][1])
    digest = hashlib.sha256(json.dumps([p for p in prompts if p.endswith("Ticket:")]).encode()).hexdigest()[:20]
    assert digest == NO_TRAFFIC_PROMPTS


def test_a_rerun_sends_nothing_twice_and_the_pool_holds_each_row_once(env, teacher_server, tmp_path):
    from filters.pool import append_pool, read_pool
    from flows.traffic_context import commit_context, relabelled_ledger

    _make_skill(env, teacher_server, context={"relabel": 3, "recent": 100, "style_share": 0.5})
    skill = load_skill(SKILL, root=env)
    _serve(skill)
    run_a = tmp_path / "a"
    ctx_a, _, res_a, out_a, replay = _expand(skill, run_a, seed=5)
    first = {e.meta["traffic_id"] for e in ctx_a.relabel}
    assert len(first) == 3 and res_a.accounting["sent"] > 0
    # The same run again (a crash, a retry): same seed, same sample, same prompts: the cache answers them all.
    before = teacher_server.total
    ctx_again, _, res_again, _, _ = _expand(skill, run_a, seed=5, replay=replay)
    assert {e.meta["traffic_id"] for e in ctx_again.relabel} == first
    assert res_again.accounting["sent"] == 0 and teacher_server.total == before
    # The run completes: its examples join the pool, its relabelled rows the ledger.
    append_pool(SKILL, out_a.kept)
    assert commit_context(SKILL, run_a) == {"committed": True, "ledger": 3}
    assert commit_context(SKILL, run_a)["ledger"] == 3  # idempotent
    assert relabelled_ledger(SKILL) == first
    # The completed run run again keeps its recorded sample (its rows are in the ledger now): nothing is sent.
    before = teacher_server.total
    ctx_done, sampled_done, res_done, _, _ = _expand(skill, run_a, seed=5, pool=read_pool(SKILL), replay=replay)
    assert {e.meta["traffic_id"] for e in ctx_done.relabel} == first and sampled_done["reused_sample"]
    assert res_done.accounting["sent"] == 0 and teacher_server.total == before
    # A later run (another seed) never sends those rows to the teacher again, even to a cold cache.
    teacher_server.reset()
    pool = read_pool(SKILL)
    ctx_b, sampled_b, _, out_b, _ = _expand(skill, tmp_path / "b", seed=6, pool=pool, replay=replay)
    second = {e.meta["traffic_id"] for e in ctx_b.relabel}
    assert second and not second & first and sampled_b["excluded"]["relabelled_before"] == 3
    texts = {e.input for e in ctx_a.relabel}
    assert not [p for p in _prompts(teacher_server) if p.endswith("Team:") and any(t in p.rsplit("Ticket:", 1)[1]
                                                                                 for t in texts)]
    append_pool(SKILL, out_b.kept)
    append_pool(SKILL, out_a.kept)  # a commit retried: ids the pool holds are skipped
    ids = [e.meta["traffic_id"] for e in read_pool(SKILL) if e.source == "traffic_relabel"]
    assert len(ids) == len(set(ids)) and set(ids) <= first | second


def test_a_bad_context_value_names_its_key(env, teacher_server):
    _make_skill(env, teacher_server, context={"style_share": 1.5})
    with pytest.raises(SkillError, match=r"gates\.replay\.context\.style_share"):
        load_skill(SKILL, root=env)
    _make_skill(env / "x", teacher_server, context={"relabels": 3})
    with pytest.raises(SkillError, match=r"gates\.replay\.context\.relabels"):
        load_skill(SKILL, root=env / "x")
    _make_skill(env / "y", teacher_server, context={"prefer": "newest"})
    with pytest.raises(SkillError, match=r"gates\.replay\.context\.prefer"):
        load_skill(SKILL, root=env / "y")


SHIFTED = [  # new kinds of ticket after a shift: words the seeds never use
    ("s-1", "Klarna instalments declined at checkout since Tuesday"),
    ("s-1b", "Klarna instalments declined at checkout since Tuesday morning"),
    ("s-2", "Pulse copilot summaries hallucinate dates in standups"),
    ("s-3", "Okta SCIM provisioning stopped syncing groups overnight"),
]


def test_after_a_shift_the_teacher_sees_what_the_pool_lacks(env, teacher_server, tmp_path):
    """prefer novel (the default): the relabel sample is the shifted rows, one of a near-identical pair (farthest
    first); the style shots are the novel inputs only. prefer random: a uniform sample of the whole window."""
    from flows.traffic_context import gather

    _make_skill(env, teacher_server, context={"relabel": 3, "recent": 100, "style_share": 0.5})
    skill = load_skill(SKILL, root=env)
    routine = [(f"r-{i}", f"Hello, {s.input} Thanks.") for i, s in enumerate(skill.seeds[:8])]  # what seeds cover
    _serve(skill, extra=routine + SHIFTED)
    context, stats = gather(skill, tmp_path / "run", 0, [], pool=[])
    sent = {e.meta["traffic_id"] for e in context.relabel}
    assert stats["prefer"] == "novel" and len(sent) == 3
    assert {"s-2", "s-3"} <= sent and len(sent & {"s-1", "s-1b"}) == 1
    style = {e.meta["traffic_id"] for e in context.style}
    assert {"s-1", "s-1b", "s-2", "s-3"} <= style and not style & {i for i, _ in routine}
    assert stats["style_novel"] == len(style) >= skill.config.teacher.style_shots
    # The pool covers the shift: once the Klarna and Okta tickets trained, they are no longer what is missing.
    from core.records import Example

    pool = [Example(id=f"p-{i}", skill=SKILL, input=t, output="billing", source="teacher")
            for i, (_, t) in enumerate(SHIFTED)]
    context_p, _ = gather(skill, tmp_path / "run-p", 0, [], pool=pool)
    assert not {e.meta["traffic_id"] for e in context_p.relabel} & {"s-1", "s-1b", "s-3"}

    _make_skill(env / "r", teacher_server, context={"relabel": 3, "recent": 100, "style_share": 0.5, "prefer": "random"})
    skill_r = load_skill(SKILL, root=env / "r")
    context_r, stats_r = gather(skill_r, tmp_path / "run-r", 0, [], pool=[])
    assert stats_r["prefer"] == "random" and "style_novel" not in stats_r
    assert len(context_r.relabel) == 3 and len(context_r.style) == stats_r["read"]  # no hold-out: replay_items=[]


def test_without_enough_eval_items_to_place_novelty_the_style_pool_is_the_window(env, teacher_server, tmp_path):
    """Fewer than 20 eval inputs cannot place the novelty threshold: the style shots come from the whole window
    (said in the stats) and the relabel sample is still farthest-first, which needs no threshold."""
    from flows.traffic_context import gather

    _make_skill(env, teacher_server, context={"relabel": 3, "recent": 100, "style_share": 0.5})
    skill = load_skill(SKILL, root=env)
    skill.eval_set = skill.eval_set[:5]
    routine = [(f"r-{i}", f"Hello, {s.input} Thanks.") for i, s in enumerate(skill.seeds[:8])]
    _serve(skill, extra=routine + SHIFTED)
    context, stats = gather(skill, tmp_path / "run", 0, [], pool=[])
    assert "calibrating the threshold" in stats["style_novel_why"] and "style_novel" not in stats
    assert len(context.style) == stats["read"]
    assert {"s-2", "s-3"} <= {e.meta["traffic_id"] for e in context.relabel}
