"""Behaviour snapshot of every task type over the shipped skills (issue 19: "behaviour unchanged").

`snapshot()` renders everything a task type decides for every seed and eval item of the three
shipped skills (and a generation skill from the scaffold): prompts with and without shots,
completions, lenient parses of noisy answers, validation verdicts, matching texts, teacher
prompts, the consumer template, response_format, the new-skill scaffold, and the metrics on
deterministic predictions. Each value is stored as a SHA-256 digest in task_golden.json, made
once from the code before the task-type plug-ins; test_task_types.py compares.

Regenerate only for a deliberate behaviour change:  python -m tests.core.task_golden --write
Deliberate changes since the snapshot (their digests re-made from the new code, everything else is
the old code's): `overlap_key/*` (issue 15: the seed/eval overlap check uses the filters' one
normalizer), `template_spec` (skill.json records prompt_format: issue 16) and `scaffold/*` (comment lines naming core/config.py and the task registry; the
new keys: gates.replay.settle_window_days, gates.min_paired_items, schedule, student.train.rejected_runs and max_pool_examples, filters.threshold_shrinkage, decoding.constrained, student.train.distillation / distill_alpha / distill_temperature, expansion.inputs_per_request, student.train.checkpoint_selection, decoding.max_string_chars, student.train.readmit_held, student.train.pool_sampling; teacher.local_server's description; teacher.max_retry_wait_s's description, issue 35; the routing block's policy, max_teacher_share, confidence_level, significance, fallback and signal, issue 31; issue 36: the measured settings new-skill writes with their figures (expansion.target_examples, audit.floor
and teacher.shot_selection auto, audit.on_fail, and for label sets calibration, filters.target_precision,
max_label_distance, checkpoint_selection, gates.margin) and the answer-cap descriptions; issue 34: the privacy block and gates.replay's gateway source, and the drift block; issue 34 item 2: gates.replay.context, traffic as the teacher's context, with recent, relabel and style_share, and its cross_share (counterfactual requests, off by default); issue 36: descriptions point to docs/ pages instead of README sections; issue 31: routing.significance's description names the family-wise adjustment),
`ticket-triage/answer_max_tokens` (issue 36: an unset cap holds the longest label, 8 -> 18 tokens by the
tokenizer-free bound, core/answer_cap.py) and `shots/*` (issue 31: a shot picker's draw is a function of its seed
and the input alone, so the gateway's teacher lane shows the shots the pipeline measured).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("task_golden.json")
SHIPPED = ("ticket-triage", "json-extraction", "tool-calling")


def _digest(value) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _noisy_answers(ex, rng: random.Random) -> list[str]:
    """Raw model outputs around the gold answer: exact, decorated, cut, wrapped, wrong, empty."""
    gold = ex.output or ""
    return [gold, f" {gold}\nmore text", gold.upper(), f"```{gold}```", f"{gold}.", gold[: max(1, len(gold) // 2)],
            f"Answer: {gold}", "", "none of these", '{"tool_calls":[{"function":{"name":"x","arguments":"{}"}}]}',
            f'{{"function": {gold}}}' if gold.startswith("{") else gold.replace("_", " "),
            rng.choice(["billing", "bug", '{"a":1}', "[1,2]", "{"])]


def _predictions(ex, rng: random.Random) -> list[str | None]:
    """Parsed predictions the metrics are scored on: gold, None, and perturbed variants."""
    from core import prompting

    outs = [ex.output, None, prompting.parse_output(_cfg_of[ex.skill], f"{ex.output}")]
    gold = json.loads(ex.output) if ex.output and ex.output.startswith("{") else None
    if isinstance(gold, dict):
        drop = dict(list(gold.items())[:-1])
        outs.append(json.dumps(drop, ensure_ascii=False, separators=(",", ":")))
        if "arguments" in gold and isinstance(gold["arguments"], dict):
            args = {k: (v[0] if isinstance(v, list) and v else v) for k, v in gold["arguments"].items()}
            outs.append(json.dumps({"name": gold["name"], "arguments": args}, separators=(",", ":")))
            outs.append(json.dumps({"name": gold["name"] + "_x", "arguments": args}, separators=(",", ":")))
        else:
            mod = {k: (str(v) + "!" if isinstance(v, str) else v) for k, v in gold.items()}
            outs.append(json.dumps(mod, ensure_ascii=False, separators=(",", ":")))
    else:
        outs.append(rng.choice(["billing", "bug", "account", "other", "feature_request", "nonsense"]))
    return outs


_cfg_of: dict = {}


def _generation_skill(tmp: Path):
    """A generation skill from the scaffold (no shipped one), with a few rows."""
    from core.skills import load_skill

    try:
        from core.scaffold import create_skill
    except ImportError:  # the code before the task-type plug-ins
        from core.skills import create_skill

    folder = create_skill("golden-generation", "generation", tmp)
    rows = [("send me the report now", "Could you send me the report, please?"),
            ("fix   this bug today", "Could you fix this bug today, please?"),
            ("call me back", "Would you call me back, please?"),
            ("where is my refund", "Could you tell me where my refund is, please?")]
    (folder / "seeds.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "input": a, "output": b}) + "\n"
                                                for i, (a, b) in enumerate(rows[:3])))
    (folder / "eval.jsonl").write_text(json.dumps({"id": "e0", "input": rows[3][0], "output": rows[3][1]}) + "\n")
    return load_skill("golden-generation", root=tmp)


def _skill_snapshot(skill, s: dict) -> None:
    from core import prompting
    from core.skills import input_key
    try:
        from core.tasks import get_task
    except ImportError:  # the code before the task-type plug-ins
        from eval_gates.tasks import get_task
    from filters.stage import dedup_text
    from teachers import strategies
    from teachers.shots import ShotPicker, similarity_text

    cfg = skill.config
    _cfg_of[cfg.name] = cfg
    rng = random.Random(0)
    shots = [(x.input, x.output) for x in skill.seeds[:3]]
    items = list(skill.seeds) + list(skill.eval_set)
    s["header"] = _digest(prompting.header(cfg))
    s["template_spec"] = _digest(prompting.template_spec(cfg))
    s["response_format"] = _digest(prompting.response_format(cfg))
    s["is_json"] = prompting.is_json_task(cfg)
    text = dedup_text(cfg)
    for ex in items:
        k = ex.id
        s[f"prompt/{k}"] = _digest(prompting.format_prompt(cfg, ex.input))
        s[f"prompt_shots/{k}"] = _digest(prompting.format_prompt(cfg, ex.input, shots))
        s[f"input_problem/{k}"] = _digest(prompting.input_problem(cfg, ex.input))
        s[f"match/{k}"] = _digest([text(ex.input), similarity_text(cfg, ex.input), strategies._shown_input(cfg, ex.input)])
        s[f"overlap_key/{k}"] = _digest(input_key(cfg, ex.input))
        parsed = [prompting.parse_output(cfg, raw) for raw in _noisy_answers(ex, rng)]
        s[f"parse/{k}"] = _digest(parsed)
        s[f"valid/{k}"] = _digest([prompting.output_problem(cfg, p, ex.input) if p is not None else None
                                   for p in parsed])
    for ex in skill.seeds:
        s[f"completion/{ex.id}"] = _digest(prompting.format_completion(cfg, ex.output))
    # Teacher prompts.
    groups = strategies._style_groups(skill)
    s["style_groups"] = _digest([(key, [e.id for e in xs]) for key, xs in groups])
    for gi, (key, xs) in enumerate(groups):
        s[f"style_prompt/{gi}"] = _digest(strategies.style_prompt(skill, xs[:4]))
        s[f"build_input/{gi}"] = _digest(strategies._build_input(cfg, "a new request here", key))
    if strategies.NEW_TOOLS and cfg.expansion.new_function_share and skill.seeds[0].input.startswith('{"request"'):
        s["new_tools_prompt"] = _digest(strategies.new_tools_prompt(skill, skill.seeds[:3]))  # function calls only
    s["build_input_new_tools"] = _digest([strategies._build_input(cfg, t, strategies.NEW_TOOLS)
                                          for t in ('{"request": "x", "tools": []}', "not json")])
    for ex in skill.seeds:
        for mode in ("paraphrase", "harder"):
            s[f"rewrite/{mode}/{ex.id}"] = _digest(strategies.rewrite_prompt(skill, ex, mode))
    s["answer_max_tokens"] = strategies.answer_max_tokens(cfg)
    for mode in ("random", "similar"):
        picker = ShotPicker(cfg, skill.seeds, 4, mode, seed=3)
        s[f"shots/{mode}"] = _digest([[e.id for e in picker.pick(ex.input)] for ex in skill.eval_set[:20]])
    # Metrics on deterministic predictions.
    task = get_task(cfg)
    examples, preds = [], []
    for ex in skill.eval_set:
        for p in _predictions(ex, rng):
            examples.append(ex)
            preds.append(p)
    per_item = [task.score(e, p) for e, p in zip(examples, preds)]
    s["metric/per_item"] = _digest(per_item)
    s["metric/errors"] = _digest([task.error(e, p) for e, p in zip(examples, preds)])
    s["metric/aggregate"] = _digest(task.aggregate(per_item, examples, preds))
    s["metric/primary"] = task.primary


def snapshot() -> dict:
    import tempfile

    from core.skills import load_skill

    try:
        from core.scaffold import skill_template
    except ImportError:  # the code before the task-type plug-ins
        from core.skills import skill_template

    out: dict = {}
    for name in SHIPPED:
        out[name] = {}
        _skill_snapshot(load_skill(name, root=REPO / "seeds"), out[name])
    with tempfile.TemporaryDirectory() as tmp:
        out["golden-generation"] = {}
        _skill_snapshot(_generation_skill(Path(tmp)), out["golden-generation"])
    # Re-made from the new code (see the module docstring).
    out["scaffold"] = {t: _digest(skill_template("my-skill", t))
                       for t in ("classification", "extraction", "function_call", "generation")}
    return out


if __name__ == "__main__":
    snap = snapshot()
    if "--write" in sys.argv:
        GOLDEN.write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN}: {sum(len(v) if isinstance(v, dict) else 1 for v in snap.values())} digests")
    else:
        print(json.dumps({k: len(v) for k, v in snap.items()}))
