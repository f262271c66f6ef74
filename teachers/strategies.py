"""Expansion strategies and the stage function `run_expansion`. Plain functions; flows/ wraps them.

Input writers:
  self_instruct  new inputs in the style of k sampled seeds (classification: shots of one
                 label, cycling through the labels, so every label gets inputs; function_call:
                 requests in the style of seeds that share one tool set, which the new input keeps)
  rewrite        paraphrased or harder variants of seeds (or of this run's new inputs)
Answerers (one of):
  label            the teacher answers with few-shot seeds (greedy)
  score            classification: the labels ranked by the teacher's log-likelihood, optionally
                   calibrated (teachers/scoring.py); the label's probability is the confidence
  self_consistency n sampled answers; the majority answer is kept, its share is the confidence

Every example records its teacher, `meta.strategy` (the input writer), `meta.answer_strategy`
and `parent_ids` (the seeds it was shown or rewritten from). Every request ends as a kept
example or a `Rejected` with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

from core import prompting
from core.records import Example, Rejected, content_id, hash_examples, write_examples, write_json
from core.skills import Skill, SkillConfig
from core.tasks import answer_grammar_for, get_task
from core.tasks.base import NEW_TOOLS
from core.text import normalize
from teachers.base import Completion, Failure, Request
from teachers.client import Teacher
from teachers.shots import ShotPicker

Progress = Callable[[str, int | None], ContextManager[Callable[..., None]]]


@contextlib.contextmanager
def _no_progress(description: str, total: int | None):
    yield lambda n=1, total=None: None


# --- answer checks and limits --------------------------------------------------------------------------------------


def _validate_output(cfg: SkillConfig, output: str, input: str | None) -> str | None:
    return prompting.validate_output(cfg, output, input)


def _validate_input(cfg: SkillConfig, input: str) -> str | None:
    return prompting.validate_input(cfg, input)


def response_format_for(skill: Skill) -> str | None:
    """The response_format payload (canonical JSON text) when structured output is on, else None."""
    tc = skill.config.teacher
    on = tc.structured_output if isinstance(tc.structured_output, bool) else tc.endpoint == "chat"
    if not on:
        return None
    rf = prompting.response_format(skill.config)
    return json.dumps(rf, ensure_ascii=False, separators=(",", ":"), sort_keys=True) if rf else None


def grammar_for(cfg: SkillConfig, input: str) -> str | None:
    """The answer grammar a local teacher decodes under (core.tasks.answer_grammar_for) as canonical
    JSON for the request, or None."""
    spec = answer_grammar_for(cfg, input)
    # Key order kept: a schema's property order is the order the answer is written in.
    return json.dumps(spec, ensure_ascii=False, separators=(",", ":")) if spec else None


def answer_max_tokens(cfg: SkillConfig) -> int:
    # A label is a word or two; JSON answers and text need room (the task type says how much).
    from core.answer_cap import default_cap

    # Unset: the type's default raised to hold the longest allowed answer (core/answer_cap.py).
    return cfg.teacher.answer_max_tokens or default_cap(cfg, get_task(cfg).teacher_answer_tokens)


# --- shots ----------------------------------------------------------------------------------------------------------


def _style_groups(skill: Skill) -> list[tuple[str, list[Example]]]:
    """Groups the style shots come from, by the task type's group key (one per label for
    classification, one per tool set for function calls, else all seeds), sorted by key."""
    task = get_task(skill.config)
    groups: dict[str, list[Example]] = {}
    for s in skill.seeds:
        groups.setdefault(task.group_key(s), []).append(s)
    return sorted(groups.items())


def _shown_input(cfg: SkillConfig, input: str) -> str:
    """The text of an input as shown to the teacher (a function call's request only)."""
    return get_task(cfg).shown_input(input)


def _build_input(cfg: SkillConfig, text: str, group_key: str) -> str:
    return get_task(cfg).build_input(text, group_key)


def new_tools_prompt(skill: Skill, shots: list[Example]) -> str:
    """The prompt asking for a whole new input with functions of the teacher's own (function calls)."""
    return get_task(skill.config).new_tools_prompt(shots)


def style_prompt(skill: Skill, shots: list[Example]) -> str:
    cfg = skill.config
    name = cfg.input_name
    lines = [f"Real examples of the {name.lower()}s we receive, one per line:", ""]
    lines += [f"{name}: {_shown_input(cfg, s.input)}" for s in shots]
    return "\n".join(lines) + f"\n{name}:"


def cross_prompt(skill: Skill, shots: list[Example], traffic: Example, label: str) -> str:
    """The counterfactual request (one-label tasks): a new input whose right answer is `label` (the group the
    `shots`, seeds, are examples of), about what the `traffic` input names: its products, services and voice,
    not its request. After a shift the traffic sample pairs its new words with few labels (every Klarna ticket
    a payment); the teacher writes them with the others, so a student does not learn the word as the label
    (counterfactually augmented data: Kaushik, Hovy and Lipton 2020, "Learning the Difference that Makes a
    Difference with Counterfactually-Augmented Data"). The answer is still the teacher's label of what it wrote,
    not `label`."""
    cfg = skill.config
    name, out = cfg.input_name, cfg.output_name
    lines = [cfg.instruction.strip(), "", f"{name}s whose right {out.lower()} is {label}:"]
    lines += [f"{name}: {_shown_input(cfg, s.input)}" for s in shots]
    lines += ["", f"A {name.lower()} we received today:", f"{name}: {_shown_input(cfg, traffic.input)}", "",
              f"Write a new {name.lower()} whose right {out.lower()} is {label}, naming the products and services "
              f"the {name.lower()} received today names, in its voice. Write it on one line.", f"New {name.lower()}:"]
    return "\n".join(lines)


REWRITE_ASK = {
    "paraphrase": "Rewrite the {name} below in different words: same request, same facts, a different customer voice.",
    "harder": ("Rewrite the {name} below so it is harder to handle: indirect wording, an irrelevant detail, no "
               "obvious keywords, while the request itself stays the same."),
}


def rewrite_prompt(skill: Skill, source: Example, mode: str) -> str:
    cfg = skill.config
    name = cfg.input_name.lower()
    ask = REWRITE_ASK[mode].format(name=name)
    keep = get_task(cfg).rewrite_hint(source.output)
    return (f"{cfg.instruction.strip()}\n\n{ask}{keep} Write it on one line.\n\n"
            f"{cfg.input_name}: {_shown_input(cfg, source.input)}\nRewritten {name}:")


# --- input writers --------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    """One input-writing request and what the example records about it."""

    request: Request
    parents: list[str]
    group_key: str
    meta: dict[str, Any]
    per_request: int = 1  # inputs asked for in this request (one per line)


def _input_lines(cfg: SkillConfig, c: Completion, k: int) -> list[tuple[str, bool]]:
    """The inputs of a several-per-request answer: its first line, then each next line that starts
    with "<input_name>:" (the style prompt's own form), at most k; (text, cut) where `cut` marks a
    last line the length cap ended."""
    raw = (c.text or "").split("\n")
    prefix = f"{cfg.input_name.strip().lower()}:"
    out: list[tuple[str, bool]] = []
    for j, line in enumerate(raw):
        line = line.strip()
        if j > 0:
            if not line:
                continue
            if not line.lower().startswith(prefix):
                break  # the model moved on to something else
            line = line[len(prefix):].strip()
        out.append((" ".join(line.split()), j == len(raw) - 1 and c.finish_reason == "length"))
        if len(out) == k:
            break
    return out


def _line_problem(cfg: SkillConfig, text: str, cut: bool, group_key: str) -> str | None:
    if cut:
        return "truncated"
    if not text:
        return "empty_generation"
    return _validate_input(cfg, _build_input(cfg, text, group_key))


def _several_inputs(skill: Skill, teacher: Teacher, plan: _Plan, o: Completion,
                    stage: str) -> tuple[list[Example], list[Rejected]]:
    """One example per line of a several-inputs answer; each line is kept or rejected on its own."""
    cfg = skill.config
    kept: list[Example] = []
    rejected: list[Rejected] = []
    lines = _input_lines(cfg, o, plan.per_request)
    for j, (text, cut) in enumerate(lines):
        inp = _build_input(cfg, text, plan.group_key) if text else ""
        meta = dict(plan.meta, prompt_tokens=o.prompt_tokens, input_tokens=o.completion_tokens, line=j)
        ex = Example(id=content_id(skill.name, inp), skill=skill.name, input=inp, output=None, source="teacher",
                     teacher=teacher.name, parent_ids=list(plan.parents), meta=meta)
        bad = _line_problem(cfg, text, cut, plan.group_key)
        if bad:
            rejected.append(Rejected(ex, stage, bad, {"raw": text[:200]}))
        else:
            kept.append(ex)
    if len(lines) < plan.per_request:
        ex = Example(id=content_id(skill.name, f"{plan.request.prompt}|missing"), skill=skill.name, input="", output=None,
                     source="teacher", teacher=teacher.name, parent_ids=list(plan.parents), meta=dict(plan.meta))
        rejected.append(Rejected(ex, stage, "fewer_inputs_than_asked",
                                 {"asked": plan.per_request, "written": len(lines)}))
    return kept, rejected


def _write_inputs(skill: Skill, teacher: Teacher, plans: list[_Plan], stage: str,
                  advance: Callable[..., None]) -> tuple[list[Example], list[Rejected]]:
    cfg = skill.config

    def check(c: Completion, i: int) -> str | None:
        if plans[i].per_request > 1:  # several lines: the request is good when one of them is
            lines = _input_lines(cfg, c, plans[i].per_request)
            bad = [_line_problem(cfg, t, cut, plans[i].group_key) for t, cut in lines]
            return None if any(b is None for b in bad) else (bad[0] if bad else "empty_generation")
        text = " ".join(c.text.split())
        if c.finish_reason == "length":
            return "truncated"
        if not text:
            return "empty_generation"
        return _validate_input(cfg, _build_input(cfg, text, plans[i].group_key))

    outcomes = teacher.run([p.request for p in plans], validate=check, progress=advance)
    kept: list[Example] = []
    rejected: list[Rejected] = []
    for plan, o in list(zip(plans, outcomes)):
        if plan.per_request > 1 and isinstance(o, Completion):
            k, r = _several_inputs(skill, teacher, plan, o, stage)
            kept += k
            rejected += r
            continue
        text = " ".join((o.text or "").split())
        inp = _build_input(cfg, text, plan.group_key) if text else ""
        meta = dict(plan.meta)
        if isinstance(o, Completion):
            meta.update(prompt_tokens=o.prompt_tokens, input_tokens=o.completion_tokens)
        ex = Example(id=content_id(skill.name, inp), skill=skill.name, input=inp, output=None, source="teacher",
                     teacher=teacher.name, parent_ids=list(plan.parents), meta=meta)
        if isinstance(o, Failure):
            detail = {"attempts": o.attempts}
            if o.cause == "truncated":
                detail["max_new_tokens"] = plan.request.max_tokens
            if o.detail:
                detail["error"] = o.detail
            rejected.append(Rejected(ex, stage, o.cause, detail))
            continue
        bad = _validate_input(cfg, inp)
        # The one notion of "same text" (core.text.normalize): a rewrite that only adds invisibles,
        # case or punctuation is the source again.
        if bad is None and plan.meta.get("source_input") and normalize(plan.meta["source_input"]) == normalize(text):
            bad = "unchanged_rewrite"
        if bad:
            rejected.append(Rejected(ex, stage, bad, {"raw": o.text[:200]}))
        else:
            kept.append(ex)
    return kept, rejected


def traffic_shot_count(style_shots: int, style_traffic: Sequence[Example], style_share: float) -> int:
    """How many of a request's `style_shots` come from traffic: floor(style_shots x style_share), at most the
    traffic there is; 0 without traffic (the seeds alone, drawn exactly as before)."""
    return min(len(style_traffic), int(style_shots * style_share)) if style_traffic else 0


def _mix_traffic(shots: list[Example], trng: random.Random, style_traffic: Sequence[Example], k: int,
                 meta: dict[str, Any], stats: dict[str, int] | None) -> list[Example]:
    """`shots` (seeds) with `k` traffic inputs drawn from `style_traffic`, shuffled together; the traffic rows
    shown are recorded in meta.style_traffic_ids (lineage) and counted in `stats`."""
    if k <= 0:
        return shots
    picked = trng.sample(list(style_traffic), k)
    meta["style_traffic_ids"] = [str(e.meta.get("traffic_id", e.id)) for e in picked]
    if stats is not None:
        stats["traffic_style_shots"] = stats.get("traffic_style_shots", 0) + k
        stats["requests_with_traffic_shots"] = stats.get("requests_with_traffic_shots", 0) + 1
    mixed = list(shots) + picked
    trng.shuffle(mixed)
    return mixed


def counterfactual_turn(turn: int, group: int, groups: int, share: float) -> bool:
    """Whether the `turn`-th request (0-based) of label group `group` (of `groups`, requests cycling through them)
    is a counterfactual one: `share` of each group's requests, evenly spaced within the group and staggered
    across groups (offset group / groups), so every label gets its share (within one request) whatever the
    number of labels. A count over all requests instead (every 1/share-th) sends every counterfactual to one
    label when the number of labels shares a factor with 1/share (four labels at 0.25)."""
    offset = group / groups
    return int((turn + 1) * share + offset) > int(turn * share + offset)


def self_instruct(skill: Skill, teacher: Teacher, n: int, seed: int = 0,
                  advance: Callable[..., None] = lambda *a, **k: None, style_traffic: Sequence[Example] = (),
                  style_share: float = 0.0, stats: dict[str, int] | None = None,
                  cross_share: float = 0.0) -> tuple[list[Example], list[Rejected]]:
    """New inputs in the style of `style_shots` seeds of one group (label / tool set), cycling the groups;
    `expansion.inputs_per_request` of them per request (one line each), so n inputs take about
    n / inputs_per_request requests. Returns (kept, rejected) examples (inputs only, no answers).

    `style_traffic`: recent traffic inputs (Examples with meta.traffic_id, scrubbed); when given, each request
    shows `traffic_shot_count` of them (floor(style_shots x style_share)) in place of as many seeds, shuffled
    in, and the example's meta.style_traffic_ids names those rows (parent_ids stay the seeds shown). `stats`
    (optional) gets traffic_style_shots and requests_with_traffic_shots added. Without traffic the requests
    are exactly those of the seeds alone.

    `cross_share` (one-label tasks, with traffic shown): that share of each label group's requests
    (`counterfactual_turn`) asks instead for one input of the group's label about what one traffic input
    names (`cross_prompt`, counterfactual augmentation); meta.counterfactual is True and
    meta.style_traffic_ids names the row, `stats` gets counterfactual_requests. The seed draws stay the same."""
    tc = skill.config.teacher
    rng = random.Random(seed)
    trng = random.Random(f"style-traffic-{seed}")  # its own stream: the seed draws stay the seeds' own
    n_traffic = traffic_shot_count(tc.style_shots, style_traffic, style_share)
    groups = _style_groups(skill)
    plans = []
    task = get_task(skill.config)
    share = task.new_tools_share()
    n_new = round(n * share)
    per = skill.config.expansion.inputs_per_request
    i = written = 0
    while written < n:
        meta: dict[str, Any] = {"strategy": "self_instruct"}
        k = 1
        if written < n_new:  # new functions too: shots from across the seeds, each shown whole
            key, shots = NEW_TOOLS, rng.sample(skill.seeds, min(tc.style_shots - n_traffic, len(skill.seeds)))
            prompt = new_tools_prompt(skill, _mix_traffic(shots, trng, style_traffic, n_traffic, meta, stats))
            meta["new_tools"] = True
        else:
            key, pool = groups[i % len(groups)]
            shots = rng.sample(pool, min(tc.style_shots - n_traffic, len(pool)))
            if task.one_label and n_traffic and counterfactual_turn(i // len(groups), i % len(groups), len(groups),
                                                                    cross_share):
                picked = trng.choice(style_traffic)
                meta.update(counterfactual=True, style_traffic_ids=[str(picked.meta.get("traffic_id", picked.id))])
                if stats is not None:
                    stats["counterfactual_requests"] = stats.get("counterfactual_requests", 0) + 1
                prompt = cross_prompt(skill, shots, picked, key)
            else:
                prompt = style_prompt(skill, _mix_traffic(shots, trng, style_traffic, n_traffic, meta, stats))
                k = min(per, n - written)
        if task.one_label:
            meta["seed_label"] = key
        # Several inputs: the answer runs on line after line ("<input_name>: ..."), so no newline stop.
        req = Request(prompt=prompt, max_tokens=tc.max_new_tokens * k, temperature=tc.temperature,
                      top_p=0.95, stop=("\n",) if k == 1 else ("\n\n",), seed=(seed * 100_003 + i) % 2**31)
        if k > 1:
            meta["inputs_per_request"] = k
        plans.append(_Plan(req, [s.id for s in shots], key, meta, per_request=k))
        written += k
        i += 1
    step = n / len(plans) if plans else 1.0  # progress counts inputs; the client reports requests
    return _write_inputs(skill, teacher, plans, "generate_inputs", lambda m=1: advance(m * step))


def rewrite(skill: Skill, teacher: Teacher, sources: list[Example], n: int, seed: int = 0,
            advance: Callable[..., None] = lambda *a, **k: None) -> tuple[list[Example], list[Rejected]]:
    """Paraphrased or harder variants of `sources`, the modes used in turn (a source asked for again in a later
    pass gets the next mode); the variant keeps its source's tool set (function_call) and, for classification,
    its label as `seed_label`."""
    cfg, ec = skill.config, skill.config.expansion
    task = get_task(cfg)
    if not sources or n <= 0:
        return [], []
    rng = random.Random(seed + 7)
    order = rng.sample(sources, len(sources))
    plans = []
    for i in range(n):
        src = order[i % len(order)]
        # The source's place plus the pass: the modes alternate across the sources of a pass and move on by one
        # for a source's next pass (a plain i % modes gives a source the same mode every pass when the number of
        # sources is a multiple of the number of modes).
        mode = ec.rewrite_modes[(i % len(order) + i // len(order)) % len(ec.rewrite_modes)]
        meta: dict[str, Any] = {"strategy": "rewrite", "rewrite_mode": mode, "source_input": _shown_input(cfg, src.input)}
        label = src.output if src.source == "human" else src.meta.get("seed_label")
        if task.one_label and label:
            meta["seed_label"] = label
        key = task.group_key(src)  # the variant keeps its source's group (a function call's tools)
        shown = Example(**{**src.to_dict(), "output": label})
        req = Request(prompt=rewrite_prompt(skill, shown, mode), max_tokens=cfg.teacher.max_new_tokens,
                      temperature=cfg.teacher.temperature, top_p=0.95, stop=("\n",),
                      seed=(seed * 100_003 + 50_000 + i) % 2**31)
        parents = [src.id] if src.source == "human" else list(src.parent_ids)
        plans.append(_Plan(req, parents, key, meta))
    kept, rejected = _write_inputs(skill, teacher, plans, "rewrite", advance)
    for ex in kept + [r.example for r in rejected]:
        ex.meta.pop("source_input", None)
    return kept, rejected


# --- answerers ------------------------------------------------------------------------------------------------------


def shot_picker(skill: Skill, mode: str | None = None, pool: list[Example] | None = None, seed: int = 0) -> ShotPicker:
    """The labeling shots: `mode` (default teacher.shot_selection; auto means random until the
    audit chose) from `pool` (default every seed)."""
    cfg = skill.config
    mode = mode or cfg.teacher.shot_selection
    return ShotPicker(cfg, skill.seeds if pool is None else pool, cfg.teacher.few_shot,
                      "random" if mode == "auto" else mode, seed)


def _answer_prompts(skill: Skill, examples: list[Example], seed: int,
                    picker: ShotPicker | None = None) -> tuple[list[str], list[list[str]]]:
    cfg = skill.config
    picker = picker or shot_picker(skill, seed=seed)
    prompts, shot_ids = [], []
    for ex in examples:
        shots = picker.pick(ex.input)
        prompts.append(prompting.format_prompt(cfg, ex.input, [(s.input, s.output) for s in shots]))
        shot_ids.append([s.id for s in shots])
    return prompts, shot_ids


def _cut(cfg: SkillConfig, c: Completion) -> bool:
    """An answer stopped by the token limit that does not hold a whole answer (finish_reason length)."""
    return c.finish_reason == "length" and not get_task(cfg).whole_despite_cut(c.text)


def _answer_check(cfg: SkillConfig, examples: list[Example]):
    def check(c: Completion, i: int) -> str | None:
        if _cut(cfg, c):
            return "truncated"  # re-asked, then dropped as truncated (as the input writers do)
        answer = prompting.parse_output(cfg, c.text)
        if answer is None:
            return "unparseable_answer"
        return _validate_output(cfg, answer, examples[i].input)  # a call is checked against its own tools

    return check


def label(skill: Skill, teacher: Teacher, examples: list[Example], seed: int = 0,
          advance: Callable[..., None] = lambda *a, **k: None,
          picker: ShotPicker | None = None) -> tuple[list[Example], list[Rejected]]:
    """The teacher answers each input with few-shot seeds (greedy); invalid answers are re-asked,
    then dropped with their reason. Classification confidence: 1.0 when the answer agrees with
    the label whose seeds inspired the input (`seed_label`), 0.5 when they split."""
    cfg = skill.config
    prompts, shot_ids = _answer_prompts(skill, examples, seed, picker)
    rf = response_format_for(skill)
    reqs = [Request(prompt=p, max_tokens=answer_max_tokens(cfg), temperature=0.0, stop=("\n",), seed=seed,
                    response_format=rf, grammar=grammar_for(cfg, ex.input)) for p, ex in zip(prompts, examples)]
    outcomes = teacher.run(reqs, validate=_answer_check(cfg, examples), progress=advance)
    kept: list[Example] = []
    rejected: list[Rejected] = []
    for ex, ids, o in zip(examples, shot_ids, outcomes):
        answer = prompting.parse_output(cfg, o.text) if isinstance(o, Completion) else None
        out = Example(id=content_id(skill.name, ex.input, answer), skill=ex.skill, input=ex.input, output=answer,
                      source="teacher", teacher=teacher.name, parent_ids=list(dict.fromkeys(ex.parent_ids + ids)),
                      created_at=ex.created_at,
                      meta={**ex.meta, "answer_strategy": "label", "raw_answer": o.text,
                            "label_prompt_tokens": o.prompt_tokens if isinstance(o, Completion) else 0})
        if isinstance(o, Failure):
            rejected.append(Rejected(out, "label", o.cause, {"raw": (o.text or "")[:200], "attempts": o.attempts,
                                                             **({"error": o.detail} if o.detail else {})}))
            continue
        if "seed_label" in ex.meta:
            out.confidence = 1.0 if answer == ex.meta["seed_label"] else 0.5
        kept.append(out)
    return kept, rejected


def self_consistency(skill: Skill, teacher: Teacher, examples: list[Example], seed: int = 0,
                     advance: Callable[..., None] = lambda *a, **k: None,
                     picker: ShotPicker | None = None) -> tuple[list[Example], list[Rejected]]:
    """n sampled answers per input; the majority (valid) answer is kept with confidence = its
    share of the n samples. An invalid sample is an abstention, not re-asked (the other samples
    already cover for it)."""
    cfg, ec = skill.config, skill.config.expansion
    n = ec.self_consistency_samples
    prompts, shot_ids = _answer_prompts(skill, examples, seed, picker)
    rf = response_format_for(skill)
    reqs = [Request(prompt=p, max_tokens=answer_max_tokens(cfg), temperature=ec.self_consistency_temperature,
                    top_p=1.0, stop=("\n",), seed=(seed * 1_000 + j) % 2**31, sample_index=j, response_format=rf,
                    grammar=grammar_for(cfg, ex.input))
            for p, ex in zip(prompts, examples) for j in range(n)]
    outcomes = teacher.run(reqs, validate=None, progress=advance)
    kept: list[Example] = []
    rejected: list[Rejected] = []
    for k, (ex, ids) in enumerate(zip(examples, shot_ids)):
        votes: list[str] = []
        reasons: Counter = Counter()
        raws = []
        for o in outcomes[k * n : (k + 1) * n]:
            if isinstance(o, Failure):
                reasons[o.cause] += 1
                continue
            raws.append(o.text)
            ans = prompting.parse_output(cfg, o.text)
            bad = "truncated" if _cut(cfg, o) else \
                "unparseable_answer" if ans is None else _validate_output(cfg, ans, ex.input)
            if bad:
                reasons[bad] += 1
            else:
                votes.append(ans)
        tally = Counter(votes).most_common()
        answer = tally[0][0] if tally else None
        meta = {**ex.meta, "answer_strategy": "self_consistency", "votes": dict(Counter(votes)),
                "samples": n, "invalid_samples": dict(reasons)}
        out = Example(id=content_id(skill.name, ex.input, answer), skill=ex.skill, input=ex.input, output=answer,
                      source="teacher", teacher=teacher.name, parent_ids=list(dict.fromkeys(ex.parent_ids + ids)),
                      created_at=ex.created_at, meta=meta)
        if answer is None:
            rejected.append(Rejected(out, "self_consistency", "no_valid_sample",
                                     {"reasons": dict(reasons), "raw": [r[:100] for r in raws[:3]]}))
            continue
        if len(tally) > 1 and tally[1][1] == tally[0][1]:
            rejected.append(Rejected(out, "self_consistency", "tied_vote", {"votes": dict(Counter(votes))}))
            continue
        out.confidence = round(tally[0][1] / n, 4)
        if "seed_label" in ex.meta:
            meta["seed_label_agrees"] = answer == ex.meta["seed_label"]
        kept.append(out)
    return kept, rejected


def score(skill: Skill, teacher: Teacher, examples: list[Example], seed: int = 0,
          advance: Callable[..., None] = lambda *a, **k: None, picker: ShotPicker | None = None,
          prior: dict[str, float] | None = None) -> tuple[list[Example], list[Rejected]]:
    """Classification: rank the labels by the teacher's log-likelihood (no sampling), divided by
    `prior` (contextual calibration) when given. The answer is the most probable label and its
    probability is the confidence; every label's probability is kept in `meta.label_probs`."""
    from teachers.scoring import argmax, calibrate, run_scores, softmax

    cfg = skill.config
    prompts, shot_ids = _answer_prompts(skill, examples, seed, picker)
    scores = run_scores(cfg, teacher, prompts, advance)
    kept: list[Example] = []
    rejected: list[Rejected] = []
    for ex, ids, sc in zip(examples, shot_ids, scores):
        meta = {**ex.meta, "answer_strategy": "score", "calibrated": prior is not None}
        if isinstance(sc, Failure):
            out = Example(id=content_id(skill.name, ex.input, None), skill=ex.skill, input=ex.input, output=None,
                          source="teacher", teacher=teacher.name, parent_ids=list(dict.fromkeys(ex.parent_ids + ids)),
                          created_at=ex.created_at, meta=meta)
            rejected.append(Rejected(out, "score", sc.cause, {"attempts": sc.attempts,
                                                              **({"error": sc.detail} if sc.detail else {})}))
            continue
        probs = calibrate(softmax(sc), prior)
        answer = argmax(probs)
        meta["label_probs"] = {k: round(v, 4) for k, v in probs.items()}
        if "seed_label" in ex.meta:
            meta["seed_label_agrees"] = answer == ex.meta["seed_label"]
        kept.append(Example(id=content_id(skill.name, ex.input, answer), skill=ex.skill, input=ex.input,
                            output=answer, source="teacher", teacher=teacher.name,
                            parent_ids=list(dict.fromkeys(ex.parent_ids + ids)), created_at=ex.created_at,
                            confidence=round(probs[answer], 4), meta=meta))
    return kept, rejected


# --- the teacher option: one way to ask the teacher, measured by the audit and used everywhere -----------------------


def teacher_option(skill: Skill, teacher: Teacher, choice: dict[str, Any] | None, seed: int,
                   progress: Progress | None = None) -> dict[str, Any]:
    """The complete recipe the teacher answers with: {"answerer": label|score|self_consistency, "shots":
    random|similar, "few_shot": k, "seed": int, and for score "calibration": none|contextual with its
    content-free "prior" {label: p}}. `choice` is the audit's pick ({"shots", "calibration"}); without it
    the config's settings (auto: random shots, calibrated scores). Computing the prior sends
    `teacher.calibration_shot_sets` x 3 requests (cached). The pipeline labels its data, answers the eval
    set and the replay sample with this option, and publishes it beside the adapter so the gateway's
    escalate and verify lanes answer with the very teacher that was measured (`answer_inputs`)."""
    progress = progress or _no_progress
    tc = skill.config.teacher
    choice = dict(choice or {})
    who = answerer(skill.config)
    option: dict[str, Any] = {"answerer": who,
                              "shots": choice.get("shots") or ("random" if tc.shot_selection == "auto" else tc.shot_selection),
                              "few_shot": tc.few_shot, "seed": int(seed),
                              # The shots come from these seeds: a lane on other seeds is not the measured teacher.
                              "seeds_hash": hash_examples(skill.seeds)}
    if who == "self_consistency":
        ec = skill.config.expansion
        option.update(samples=ec.self_consistency_samples, temperature=ec.self_consistency_temperature)
    if who == "score":
        option["calibration"] = choice.get("calibration") or ("contextual" if tc.calibration == "auto" else tc.calibration)
        option["prior"] = None
        if option["calibration"] == "contextual":
            from teachers.scoring import content_free_prior

            with progress("teacher: content-free prior", tc.calibration_shot_sets * 3) as advance:
                prior = content_free_prior(skill.config, teacher, skill.seeds, seed, advance=advance)
            option["prior"] = dict(prior)  # unrounded: a rounded 0 would be divided by
    return option


def answer_examples(skill: Skill, teacher: Teacher, examples: list[Example], option: dict[str, Any],
                    advance: Callable[..., None] = lambda *a, **k: None) -> tuple[list[Example], list[Rejected]]:
    """Answer `examples` (inputs without outputs) with a `teacher_option`: its answerer, its shots (drawn
    per input from every seed with its seed) and its prior. Returns (answered, rejected) as the answerers do."""
    seed = int(option.get("seed", 0))
    cfg = skill.config
    if option.get("few_shot") is not None or option.get("samples") is not None:
        # The option's own settings, whatever the config says now.
        cfg = cfg.model_copy(deep=True)
        if option.get("few_shot") is not None:
            cfg.teacher.few_shot = int(option["few_shot"])
        if option.get("samples") is not None:
            cfg.expansion.self_consistency_samples = int(option["samples"])
            cfg.expansion.self_consistency_temperature = float(option.get("temperature",
                                                                          cfg.expansion.self_consistency_temperature))
        skill = dataclasses.replace(skill, config=cfg)
    picker = shot_picker(skill, option.get("shots"), seed=seed)
    who = option.get("answerer") or answerer(skill.config)
    if who == "label":
        return label(skill, teacher, examples, seed=seed, advance=advance, picker=picker)
    if who == "score":
        return score(skill, teacher, examples, seed=seed, advance=advance, picker=picker, prior=option.get("prior"))
    if who == "self_consistency":
        return self_consistency(skill, teacher, examples, seed=seed, advance=advance, picker=picker)
    raise ValueError(f"teacher option: unknown answerer {who!r} (label, score or self_consistency)")


@dataclass
class TeacherVerdict:
    """The teacher's answer to one input under an option: `answer` (canonical) or `error` (why none)."""

    answer: str | None
    confidence: float | None = None
    error: str | None = None
    raw: str | None = None


def answer_inputs(skill: Skill, teacher: Teacher, inputs: list[str], option: dict[str, Any],
                  advance: Callable[..., None] = lambda *a, **k: None) -> list[TeacherVerdict]:
    """The teacher's answer to each input (in order) under `option`, through `answer_examples`: the path the
    pipeline's evaluate stage measures the teacher lane on and the gateway's escalate/verify lanes serve."""
    blanks = [Example(id=content_id(skill.name, x, str(i)), skill=skill.name, input=x, output=None, source="traffic",
                      meta={}) for i, x in enumerate(inputs)]
    answered, rejected = answer_examples(skill, teacher, blanks, option, advance)
    got = {e.input: e for e in answered}
    why = {r.example.input: r for r in rejected}
    out = []
    for x in inputs:
        e = got.get(x)
        if e is not None and e.output is not None:
            out.append(TeacherVerdict(e.output, e.confidence, None, e.meta.get("raw_answer") or e.output))
        else:
            r = why.get(x)
            out.append(TeacherVerdict(None, None, f"teacher: {r.reason}" if r else "teacher: no answer"))
    return out


# --- the stage ------------------------------------------------------------------------------------------------------


@dataclass
class TrafficContext:
    """Recent traffic for one run's teacher (built by flows/traffic_context.py; plain data, no I/O here).

    `relabel`: served inputs (Examples without outputs, scrubbed, meta.traffic_id naming the row) the teacher
    labels with the run's option, as it labels its own new inputs; they come out as source "traffic_relabel".
    `style`: served inputs shown as self_instruct style shots, `style_share` of each request's shots;
    `cross_share` of the requests are counterfactual (cross_prompt: an input of the request's label about what
    one of them names)."""

    relabel: list[Example] = field(default_factory=list)
    style: list[Example] = field(default_factory=list)
    style_share: float = 0.0
    cross_share: float = 0.0  # share of self_instruct requests that are counterfactual (cross_prompt)


RELABEL = "traffic_relabel"  # meta.strategy and source of a traffic input the teacher labelled


@dataclass
class ExpansionResult:
    examples: list[Example]  # answered, with confidence where a strategy gives one
    rejected: list[Rejected]
    inputs: int  # inputs the writers kept
    requested: int  # inputs asked for (self_instruct target + rewrites + traffic inputs to relabel)
    teacher: str
    accounting: dict[str, Any]
    seconds: float
    by_strategy: dict[str, dict[str, int]] = field(default_factory=dict)
    # Traffic as context: relabel_sent, relabelled, relabel_dropped, style_pool, traffic_style_shots,
    # requests_with_traffic_shots, counterfactual_requests (all 0 without traffic).
    traffic: dict[str, int] = field(default_factory=dict)


def _as_relabel(ex: Example) -> Example:
    """An answered (or dropped) traffic input as a traffic_relabel example: the teacher's label, the row's id."""
    tid = str(ex.meta.get("traffic_id"))
    return dataclasses.replace(ex, id=f"{RELABEL}:{tid}", source=RELABEL)


def answerer(cfg: SkillConfig) -> str:
    st = set(cfg.expansion.strategies)
    return "self_consistency" if "self_consistency" in st else "score" if "score" in st else "label"


def run_expansion(skill: Skill, teacher: Teacher, run_dir: Path | None, seed: int,
                  progress: Progress | None = None, choice: dict[str, Any] | None = None,
                  traffic: TrafficContext | None = None) -> ExpansionResult:
    """Write inputs (self_instruct, rewrite), answer them (label, score or self_consistency), write
    generated.jsonl and teacher_accounting.json to `run_dir`, and return the result. `choice`
    ({"shots": random|similar, "calibration": none|contextual}) is what the teacher audit picked;
    without it the config's settings apply (auto: random shots, calibrated scores).

    `traffic` (TrafficContext): its `style` inputs become part of self_instruct's style shots, and its `relabel`
    inputs are answered with the same option and in the same call as the new inputs, then written as
    source "traffic_relabel" with id traffic_relabel:<row id> and meta.traffic_id (never the student's answer:
    the teacher's). Every teacher request is in the same accounting and cache. None or empty: as before."""
    progress = progress or _no_progress
    traffic = traffic or TrafficContext()
    tstats: dict[str, int] = {"relabel_sent": 0, "relabelled": 0, "relabel_dropped": 0,
                              "style_pool": len(traffic.style), "traffic_style_shots": 0,
                              "requests_with_traffic_shots": 0, "counterfactual_requests": 0}
    ec = skill.config.expansion
    tc = skill.config.teacher
    st = set(ec.strategies)
    choice = dict(choice or {})
    shots = choice.get("shots") or ("random" if tc.shot_selection == "auto" else tc.shot_selection)
    calibration = choice.get("calibration") or ("contextual" if tc.calibration == "auto" else tc.calibration)
    t0 = time.perf_counter()
    inputs: list[Example] = []
    rejected: list[Rejected] = []
    by: dict[str, dict[str, int]] = {}
    requested = 0
    if "self_instruct" in st:
        n = ec.target_examples
        requested += n
        with progress("teacher: new inputs", n) as advance:
            k, r = self_instruct(skill, teacher, n, seed=seed, advance=advance, style_traffic=traffic.style,
                                 style_share=traffic.style_share, stats=tstats, cross_share=traffic.cross_share)
        inputs += k
        rejected += r
        by["self_instruct"] = {"kept": len(k), "dropped": len(r)}
    if "rewrite" in st:
        sources = inputs if ec.rewrite_source == "generated" else skill.seeds
        n = ec.rewrite_examples if sources else 0
        requested += n
        with progress("teacher: rewrites", n) as advance:
            k, r = rewrite(skill, teacher, sources, n, seed=seed, advance=advance)
        inputs += k
        rejected += r
        by["rewrite"] = {"kept": len(k), "dropped": len(r)}
    # Traffic inputs to relabel are answered with the new inputs: one option, one call, one accounting.
    relabel = [dataclasses.replace(e, output=None, meta={**e.meta, "strategy": RELABEL}) for e in traffic.relabel]
    tstats["relabel_sent"] = len(relabel)
    requested += len(relabel)  # every input the teacher is asked about ends kept or dropped with its reason
    option = teacher_option(skill, teacher, {"shots": shots, "calibration": calibration}, seed, progress)
    who = option["answerer"]
    title = {"label": "teacher: labels", "score": "teacher: label scores"}.get(who, "teacher: self-consistency samples")
    total = (len(inputs) + len(relabel)) * (ec.self_consistency_samples if who == "self_consistency" else 1)
    with progress(title, total) as advance:
        answered, r = answer_examples(skill, teacher, inputs + relabel, option, advance=advance)
    if relabel:
        answered = [_as_relabel(e) if e.meta.get("strategy") == RELABEL else e for e in answered]
        r = [dataclasses.replace(x, example=_as_relabel(x.example)) if x.example.meta.get("strategy") == RELABEL
             else x for x in r]
        tstats["relabelled"] = sum(e.source == RELABEL for e in answered)
        tstats["relabel_dropped"] = sum(x.example.source == RELABEL for x in r)
        by[RELABEL] = {"kept": tstats["relabelled"], "dropped": tstats["relabel_dropped"]}
    rejected += r
    by[who] = {"kept": len(answered), "dropped": len(r)}
    used = {k: v for k, v in option.items() if k not in ("seed", "few_shot", "seeds_hash", "samples", "temperature")}
    if used.get("prior"):
        used["prior"] = {k: round(v, 4) for k, v in used["prior"].items()}
    accounting = {**teacher.report(), "strategies": by, "requested_inputs": requested, "answering": used}
    if traffic.relabel or traffic.style:
        accounting["traffic_context"] = tstats
    if run_dir is not None:
        write_examples(Path(run_dir) / "generated.jsonl", answered)
        write_json(Path(run_dir) / "teacher_option.json", option)  # the teacher lane answers with it too
        write_json(Path(run_dir) / "teacher_accounting.json", accounting)
    return ExpansionResult(examples=answered, rejected=rejected, inputs=len(inputs), requested=requested,
                           teacher=teacher.name, accounting=accounting, seconds=round(time.perf_counter() - t0, 2),
                           by_strategy=by, traffic=tstats)
