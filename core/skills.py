"""Skill folders: loading and validating a skill's files.

A skill folder is `seeds/<name>/` with `skill.yaml`, `seeds.jsonl` (human
examples), `eval.jsonl` (the frozen regression set) and `traffic.jsonl` (a log of
live requests with the reference answer and whether a person accepted it).
Every config error is collected into one message naming the key and the fix;
every data error names the file and line. The schema of `skill.yaml` is core/config.py
(re-exported here); what differs per task type is asked of core/tasks/.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core import structured
from core.config import (  # noqa: F401  (re-exported: the schema is imported from here across the tree)
    ANSWERERS, BUILTIN_PROFILES, DEFAULT_BOILERPLATE_PATTERNS, DEFAULT_REFUSAL_PATTERNS, SKILL_NAME_RE, AuditConfig,
    ExpansionConfig, FilterConfig, GateConfig, LoraConfigModel, PriceTable, ReplayConfig, RoutingConfig,
    ScheduleConfig, SkillConfig, SkillError, StudentConfig, TeacherConfig, TrafficColumns, TrafficContextConfig,
    TrainConfig, check_skill_name, deep_merge, skill_name_problem)
from core.records import DataError, Example, iter_jsonl
from core.tasks import get_task
from core.text import normalize


def _format_validation(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: {err.error_count()} problem(s) in the skill file:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  - {key}: {e['msg']}")
    return "\n".join(lines)


@dataclass
class Skill:
    """A loaded skill: its validated config and its human data."""

    config: SkillConfig
    folder: Path
    profile: str
    seeds: list[Example]
    eval_set: list[Example]

    @property
    def name(self) -> str:
        return self.config.name

    def traffic_path(self) -> Path:
        """The JSONL traffic log: gates.replay.source, or for source gateway the file read beside the table."""
        r = self.config.gates.replay
        return self.folder / (r.initial or "traffic.jsonl" if r.source == "gateway" else r.source)



def skill_dir(root: str | Path, name: str) -> Path:
    """`root/name` for a valid skill name, checked to resolve inside `root` (no symlink escapes)."""
    check_skill_name(name)
    base = Path(root).resolve()
    folder = (base / name).resolve()
    if folder.parent != base:
        raise SkillError(f"skill {name!r}: {base / name} resolves to {folder}, outside {base}; remove the link")
    return folder


def seeds_root() -> Path:
    """Where skill folders live: $DISTILL_SEEDS_DIR, else ./seeds."""
    return Path(os.environ.get("DISTILL_SEEDS_DIR", "seeds")).resolve()


def list_skills(root: Path | None = None) -> list[str]:
    """Names of the skill folders (valid name, with a skill.yaml) under root."""
    root = root or seeds_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not skill_name_problem(p.name) and (p / "skill.yaml").is_file())


def load_config(folder: Path, profile: str = "default") -> SkillConfig:
    path = folder / "skill.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SkillError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise SkillError(f"{path}: expected a mapping of keys at the top level")
    profiles = deep_merge(BUILTIN_PROFILES, raw.get("profiles") or {})
    if profile not in profiles:
        raise SkillError(f"unknown profile {profile!r} for skill {folder.name}; choose one of: {', '.join(sorted(profiles))}")
    merged = deep_merge(raw, profiles[profile])
    try:
        cfg = SkillConfig.model_validate(merged)
    except ValidationError as e:
        raise SkillError(_format_validation(path, e)) from None
    if cfg.name != folder.name:
        raise SkillError(f"{path}: name is {cfg.name!r} but the folder is {folder.name!r}; make them the same")
    return cfg


# load_examples' `kind`: which file it reads. Eval answers of function_call skills list the
# acceptable values per argument (BFCL style); seeds give one concrete call.
EXAMPLE_KINDS = {"seeds": "seeds", "eval": "eval", "eval set": "eval"}
_MAX_LISTED = 20  # problems listed in one exception; `distill skills` lists them all


def _json_lines(path: Path):
    """(line number, object or None, problem or None) for each non-blank line; never stops early."""
    yield from iter_jsonl(path)


def _json_text(cfg: SkillConfig, value: Any, key: str, json_ok: bool) -> tuple[str | None, str | None]:
    """A JSONL field as the Example's text: canonical JSON for objects (contract), stripped
    text otherwise. Returns (text, problem)."""
    if isinstance(value, str):
        if not value.strip():
            return None, f"'{key}' must not be empty"
        if json_ok:
            try:  # a JSON object written as a string is accepted and canonicalized
                return structured.canonical_json(json.loads(value)), None
            except ValueError:
                return value, None  # the per-task check reports invalid_json
        return value.strip(), None
    if json_ok and isinstance(value, (dict, list)):
        return structured.canonical_json(value), None
    want = "a JSON object or a string" if json_ok else "a non-empty string"
    return None, f"'{key}' must be {want} for a {cfg.task} skill, got {type(value).__name__}"


def _json_fields(cfg: SkillConfig) -> tuple[bool, bool]:
    """Whether (input, output) of this task type are JSON."""
    task = get_task(cfg)
    return task.json_input, task.json_output


def scan_examples(path: Path, cfg: SkillConfig, kind: str) -> tuple[list[tuple[int, Example]], list[str]]:
    """Every valid example with its line number, and every problem as 'file:line: what'."""
    if kind not in EXAMPLE_KINDS:
        raise ValueError(f"kind must be one of {sorted(EXAMPLE_KINDS)}, got {kind!r}")
    kind = EXAMPLE_KINDS[kind]
    json_in, json_out = _json_fields(cfg)
    good: list[tuple[int, Example]] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for lineno, obj, problem in _json_lines(path):
        where = f"{path}:{lineno}"
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        unknown = set(obj) - {"id", "input", "output", "meta"}
        if unknown:
            problems.append(f"{where}: unknown key(s) {sorted(unknown)}; allowed: id, input, output, meta")
            continue
        missing = [k for k in ("id", "input", "output") if k not in obj]
        if missing:
            problems.append(f"{where}: missing key(s) {missing}")
            continue
        if not isinstance(obj["id"], str) or not obj["id"].strip():
            problems.append(f"{where}: 'id' must be a non-empty string")
            continue
        if obj["id"] in seen:
            problems.append(f"{where}: duplicate id {obj['id']!r} (first on line {seen[obj['id']]})")
            continue
        seen[obj["id"]] = lineno
        if not isinstance(obj.get("meta", {}), dict):
            problems.append(f"{where}: 'meta' must be a JSON object")
            continue
        input, bad_in = _json_text(cfg, obj["input"], "input", json_in)
        output, bad_out = _json_text(cfg, obj["output"], "output", json_out)
        if output is not None:  # a label as declared in skill.yaml, whatever its Unicode form or case here
            output = get_task(cfg).canonical_output(output)
        bad = bad_in or bad_out or get_task(cfg).example_problem(input, output, kind)
        if bad:
            problems.append(f"{where}: {bad}")
            continue
        good.append((lineno, Example(id=obj["id"], skill=cfg.name, input=input, output=output,
                                     source="human", meta=obj.get("meta") or {})))
    if not good and not problems:
        problems.append(f"{path}: no examples (write one JSON object per line: {{\"id\", \"input\", \"output\"}})")
    return good, problems


def _raise(problems: list[str]) -> None:
    if problems:
        more = len(problems) - _MAX_LISTED
        lines = problems[:_MAX_LISTED] + ([f"... and {more} more (`distill skills` lists every problem)"] if more > 0 else [])
        raise DataError("\n".join(lines))


def load_examples(path: Path, cfg: SkillConfig, kind: str) -> list[Example]:
    """Load human-written examples ({"id", "input", "output"}) with per-line checks.

    `kind` is "seeds" or "eval" ("eval set" too). `input`/`output` may be JSON objects
    for JSON task types; they are stored as canonical JSON text. Every problem found is
    reported at once, each with file and line."""
    if not path.is_file():
        raise SkillError(f"{path}: missing {'eval set' if EXAMPLE_KINDS.get(kind) == 'eval' else kind} "
                         f"file for skill {cfg.name}")
    good, problems = scan_examples(path, cfg, kind)
    _raise(problems)
    return [e for _, e in good]


def input_key(cfg: SkillConfig, input: str) -> str:
    """The normalized text two inputs are compared by (seeds/eval overlap): the task type's
    matching text (a function call's request: the same request with other tools is the same item)."""
    return normalize(get_task(cfg).match_text(input))  # the filters' normalizer: one notion of "same text"


def _cross_problems(cfg: SkillConfig, seeds: list[tuple[int, Example]], seeds_path: Path,
                    evals: list[tuple[int, Example]], eval_path: Path) -> list[str]:
    """Eval items whose input or id also appears in the seeds."""
    by_key = {input_key(cfg, e.input): n for n, e in seeds}
    by_id = {e.id: n for n, e in seeds}
    out = []
    for n, e in evals:
        if e.id in by_id:
            out.append(f"{eval_path}:{n}: id {e.id!r} is also used in {seeds_path}:{by_id[e.id]}")
        k = input_key(cfg, e.input)
        if k in by_key:
            out.append(f"{eval_path}:{n}: input also in {seeds_path}:{by_key[k]}; "
                       f"an eval item must not be a seed (it would be trained on)")
    return out


def _cap_problems(cfg: SkillConfig, inputs: list[str]) -> list[str]:
    """An explicit answer cap that would cut an allowed answer, counted with the student's tokenizer when
    it is on this machine (core/answer_cap.py); the run's start checks again with the resolved model."""
    from core.answer_cap import cap_problems, local_tokenizer

    if cfg.gates.max_new_tokens is None and cfg.teacher.answer_max_tokens is None:
        return []  # the defaults hold every answer: no tokenizer to load
    tokenizer = local_tokenizer(cfg.student.base_model)
    return [] if tokenizer is None else cap_problems(cfg, tokenizer, inputs)


def load_skill(name: str, profile: str = "default", root: Path | None = None) -> Skill:
    root = root or seeds_root()
    folder = skill_dir(root, name)
    if not (folder / "skill.yaml").is_file():
        known = list_skills(root)
        raise SkillError(f"unknown skill {name!r}: no {folder}/skill.yaml (skills found: {', '.join(known) or 'none'})")
    cfg = load_config(folder, profile)
    paths = {kind: folder / f for kind, f in (("seeds", "seeds.jsonl"), ("eval", "eval.jsonl"))}
    for kind, path in paths.items():
        if not path.is_file():
            raise SkillError(f"{path}: missing {'eval set' if kind == 'eval' else kind} file for skill {cfg.name}")
    seeds, p1 = scan_examples(paths["seeds"], cfg, "seeds")
    evals, p2 = scan_examples(paths["eval"], cfg, "eval")
    _raise(p1 + p2 + _cross_problems(cfg, seeds, paths["seeds"], evals, paths["eval"]))
    return Skill(config=cfg, folder=folder, profile=profile, seeds=[e for _, e in seeds],
                 eval_set=[e for _, e in evals])


def scan_traffic(path: Path, cfg: SkillConfig) -> tuple[int, list[str]]:
    """Check a JSONL traffic log line by line: (number of good lines, problems).
    Rejected references (accepted: false) may be wrong answers, so only accepted ones
    are checked against the task."""
    task = get_task(cfg)
    json_in, json_out = task.json_input, task.json_output
    count, problems, seen = 0, [], {}
    for lineno, obj, problem in _json_lines(path):
        where = f"{path}:{lineno}"
        if problem:
            problems.append(f"{where}: {problem}")
            continue
        bad = next((f"'{k}' must be a non-empty string" for k in ("id", "timestamp", "reference_source")
                    if not isinstance(obj.get(k), str) or not obj[k].strip()), None)
        if bad is None and obj["reference_source"] not in ("llm", "human"):
            bad = "'reference_source' must be 'llm' or 'human'"
        if bad is None and not isinstance(obj.get("accepted"), bool):
            bad = "'accepted' must be true or false"
        if bad is None and obj["id"] in seen:
            bad = f"duplicate id {obj['id']!r} (first on line {seen[obj['id']]})"
        request = reference = None
        if bad is None:
            seen[obj["id"]] = lineno
            request, bad = _json_text(cfg, obj.get("request"), "request", json_in)
        if bad is None:
            reference, bad = _json_text(cfg, obj.get("reference"), "reference", json_out)
        if bad is None:
            p = task.input_problem(request)
            bad = f"request: {p[0]}: {p[1]}" if p else None
        if bad is None and obj["accepted"]:
            p = task.output_problem(task.canonical_output(reference), request)
            bad = f"reference: {p[0]}: {p[1]}" if p else None
        if bad:
            problems.append(f"{where}: {bad}")
        else:
            count += 1
    return count, problems


@dataclass
class SkillReport:
    """What `validate_all` found for one skill folder."""

    name: str
    folder: Path
    task: str | None = None
    counts: dict[str, int | str] = field(default_factory=dict)  # seeds, eval, traffic
    schedule: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_all(root: Path | None = None) -> list[SkillReport]:
    """Check every skill folder under root and collect ALL problems (file and line for
    data): the skill file and its profiles, labels and schemas, every seeds/eval/traffic
    line, duplicate ids, and eval items that repeat a seed. Never raises for bad data."""
    root = Path(root or seeds_root())
    reports = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))) \
        if root.is_dir() else []
    for folder in folders:
        rep = SkillReport(name=folder.name, folder=folder)
        reports.append(rep)
        bad_name = skill_name_problem(folder.name)
        if bad_name:
            rep.problems.append(f"{folder}: {bad_name}; rename the folder and `name:`")
        if not (folder / "skill.yaml").is_file():
            rep.problems.append(f"{folder}: no skill.yaml (start one with `distill new-skill NAME --type TASK`)")
            continue
        try:
            cfg = load_config(folder)
        except SkillError as e:
            rep.problems.append(str(e))
            continue
        rep.task, rep.schedule = cfg.task, cfg.schedule.cron
        for profile in sorted(set(BUILTIN_PROFILES) | set(cfg.profiles)):
            try:
                load_config(folder, profile)
            except SkillError as e:
                rep.problems.append(f"profile {profile}: {e}")
        scanned = {}
        for kind, fname in (("seeds", "seeds.jsonl"), ("eval", "eval.jsonl")):
            path = folder / fname
            if not path.is_file():
                rep.problems.append(f"{path}: missing (an empty file is not enough: it needs examples)")
                continue
            good, problems = scan_examples(path, cfg, kind)
            scanned[kind] = (path, good)
            rep.counts[kind] = len(good)
            rep.problems += problems
        if len(scanned) == 2:
            rep.problems += _cross_problems(cfg, scanned["seeds"][1], scanned["seeds"][0],
                                            scanned["eval"][1], scanned["eval"][0])
        rep.problems += _cap_problems(cfg, [e.input for _, e in scanned.get("seeds", (None, []))[1]])
        source = cfg.gates.replay.source
        if source == "sql":
            rep.counts["traffic"] = "sql"
        elif source == "gateway":  # the gateway's table (read at run time) and the initial JSONL, when present
            initial = folder / cfg.gates.replay.initial if cfg.gates.replay.initial else None
            rep.counts["traffic"] = "gateway"  # only the gateway's table, read at run time
            if initial is not None and initial.is_file():
                rep.counts["traffic"], problems = scan_traffic(initial, cfg)  # the initial log's lines
                rep.problems += problems
        elif not (folder / source).is_file():
            rep.problems.append(f"{folder / source}: missing traffic log (gates.replay.source)")
        else:
            rep.counts["traffic"], problems = scan_traffic(folder / source, cfg)
            rep.problems += problems
    return reports


