"""The task type has one home (issue 19): behaviour unchanged, no stage branches on a type's name,
imports flow one way, and a type is found from its file alone."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from core.tasks import BUILTIN, get_task, task_class, task_names
from core.tasks.base import TaskType
from tests.core import task_golden

REPO = Path(__file__).resolve().parents[2]
STAGES = ("teachers", "filters", "trainers", "eval_gates", "registry")
TOP = ("flows", "gateway")
PACKAGES = ("core",) + STAGES + TOP


def _sources(*folders: str):
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*.py")):
            yield path


def test_prompts_parses_checks_and_metrics_are_unchanged():
    """Every seed and eval item of the shipped skills (and a generation skill): prompts with and
    without shots, completions, parses, checks, matching texts, teacher prompts, skill.json,
    response_format, the scaffold and the metrics, against digests made before the plug-ins."""
    golden = json.loads(task_golden.GOLDEN.read_text())
    now = task_golden.snapshot()
    assert now.keys() == golden.keys()
    diffs = [f"{skill}/{key}" for skill in golden for key in set(golden[skill]) | set(now[skill])
             if golden[skill].get(key) != now[skill].get(key)]
    assert not diffs, f"{len(diffs)} behaviour change(s), e.g. {sorted(diffs)[:10]}"
    assert sum(len(v) for v in golden.values()) > 2000  # the snapshot covers every item


def test_no_module_outside_core_tasks_branches_on_a_task_name():
    """A task type's name appears as a string only in its own file (grep test)."""
    names = "|".join(re.escape(n) for n in task_names())
    quoted = re.compile(rf"""["']({names})["']""")
    compared = re.compile(r"\.task\s*(==|!=|\bin\b|\bnot in\b)|\btask\.name\s*(==|!=|\bin\b)")
    hits = []
    for path in _sources(*PACKAGES):
        rel = path.relative_to(REPO)
        if rel.parts[:2] == ("core", "tasks"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if quoted.search(code) or compared.search(code):
                hits.append(f"{rel}:{n}: {line.strip()}")
    assert not hits, "branches on a task type outside core/tasks/:\n" + "\n".join(hits)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module.split(".")[0])
    return out & set(PACKAGES)


def test_imports_flow_one_way():
    """core at the bottom; stages above it (teachers/filters/trainers never reach up to the gates or
    the registry); flows/ and the gateway on top, imported by no stage."""
    forbidden = {"core": set(PACKAGES) - {"core"}}
    for stage in STAGES:
        forbidden[stage] = set(TOP)
    for low in ("teachers", "filters", "trainers"):
        forbidden[low] |= {"eval_gates", "registry"}
    bad = []
    for path in _sources(*forbidden):
        pkg = path.relative_to(REPO).parts[0]
        for imported in _imports(path) & forbidden[pkg]:
            bad.append(f"{path.relative_to(REPO)} imports {imported}")
    assert not bad, "\n".join(bad)


def test_builtin_types_are_registered_first_and_others_are_found_from_their_file():
    names = task_names()
    assert names[:4] == BUILTIN
    files = {p.stem for p in (REPO / "core" / "tasks").glob("*.py")} - {"__init__", "base"}
    assert set(names) == files  # one file per type, each registered under its file's name


@pytest.mark.parametrize("name", task_names())
def test_every_type_implements_the_protocol(name):
    cls = task_class(name)
    assert issubclass(cls, TaskType) and cls.name == name
    for key in ("instruction", "input_name", "output_name", "floor", "example"):
        assert key in cls.scaffold, f"{name}.scaffold lacks {key}"
    assert cls.score is not TaskType.score, f"{name} has no metric"


def test_unknown_task_type_names_the_known_ones():
    from core.skills import SkillConfig

    with pytest.raises(ValueError, match="unknown task type 'poetry'; choose one of: classification, extraction"):
        SkillConfig.model_validate({"name": "x", "task": "poetry", "instruction": "i"})
    with pytest.raises(ValueError, match="known: classification"):
        task_class("poetry")


def test_stages_get_the_same_answers_through_the_task_object():
    """core.prompting's functions are the task object's (one code path)."""
    from core import prompting
    from core.skills import load_skill

    for skill_name in task_golden.SHIPPED:
        skill = load_skill(skill_name, root=REPO / "seeds")
        task = get_task(skill.config)
        for ex in skill.eval_set[:10]:
            assert prompting.format_input(skill.config, ex.input) == task.format_input(ex.input)
            assert prompting.parse_output(skill.config, ex.output) == task.parse_output(ex.output)
