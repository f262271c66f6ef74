"""Docs that cannot rot: every relative link in README.md and docs/ resolves (file and #anchor), every
`distill ...`, `make ...` and `python benchmarks/...` command they show exists with the flags shown, the
generated results page is what its records give, and the front page stays a front page.

The checkers are plain functions over text, so each is also run on a synthetic bad page (it must fail)."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh"}
MAX_README_LINES = 250


# ---------------------------------------------------------------- reading markdown

def _blank(s: str) -> str:
    """`s` with every character but newlines replaced by a space (keeps offsets and line numbers)."""
    return re.sub(r"[^\n]", " ", s)


def fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, line number of the first code line, code lines) of every ``` fenced block."""
    out, lang, start, body = [], None, 0, []
    for i, line in enumerate(text.split("\n"), 1):
        m = re.match(r"^\s{0,3}```\s*([\w+-]*)", line)
        if m and lang is None:
            lang, start, body = m.group(1).lower(), i + 1, []
        elif re.match(r"^\s{0,3}```\s*$", line) and lang is not None:
            out.append((lang, start, body))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def prose(text: str) -> str:
    """`text` with fenced blocks blanked out (same length and line numbers)."""
    out, inside = [], False
    for line in text.split("\n"):
        fence = re.match(r"^\s{0,3}```", line)
        out.append(_blank(line) if inside or fence else line)
        if fence:
            inside = not inside
    return "\n".join(out)


def inline_code(text: str) -> list[tuple[int, str]]:
    """(line number, content) of every `inline code` span outside fenced blocks (a span may wrap lines)."""
    p = prose(text)
    return [(p.count("\n", 0, m.start()) + 1, " ".join(m.group(1).split()))
            for m in re.finditer(r"`([^`]+)`", p)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: formatting dropped, lower case, punctuation removed, spaces as '-'."""
    s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
    s = re.sub(r"[`*]|<[^>]+>", "", s).strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a page offers: its headings' slugs (GitHub numbers repeats: x, x-1, ...) and explicit
    <a id|name="..."> tags."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(text).split("\n"):
        m = re.match(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    out |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return out


# ---------------------------------------------------------------- links

LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def check_links(text: str, page: Path, repo: Path = REPO) -> list[str]:
    """Problems with the relative links of `text` (the content of `page`): a target that does not exist or
    leaves the repository, or an #anchor that names no heading of its page. Web links are not fetched."""
    masked = prose(text)
    masked = re.sub(r"`[^`]*`", lambda m: _blank(m.group(0)), masked)  # a link inside code is not a link
    problems = []
    for m in LINK.finditer(masked):
        target = m.group(1)
        line = masked.count("\n", 0, m.start()) + 1
        if re.match(r"^[a-zA-Z][\w+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page.resolve()
        where = f"{page.name}:{line}: ({target})"
        try:
            dest.relative_to(repo.resolve())
        except ValueError:
            problems.append(f"{where} leaves the repository")
            continue
        if not dest.exists():
            problems.append(f"{where} links to a missing file")
            continue
        if anchor:
            if dest.suffix != ".md" or not dest.is_file():
                problems.append(f"{where} has an anchor on a file that is not markdown")
            elif anchor not in anchors(dest.read_text(encoding="utf-8") if dest != page.resolve() else text):
                problems.append(f"{where} names no heading #{anchor} in {dest.name}")
    return problems


# ---------------------------------------------------------------- commands

@lru_cache(maxsize=1)
def distill_parser() -> argparse.ArgumentParser:
    """The `distill` command's own parser (flows.cli.build_parser), introspected instead of run."""
    from flows.cli import build_parser

    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


@lru_cache(maxsize=None)
def make_targets(makefile: Path = REPO / "Makefile") -> frozenset[str]:
    """The targets a Makefile defines."""
    return frozenset(m.group(1) for m in re.finditer(r"(?m)^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile.read_text()))


@lru_cache(maxsize=None)
def script_options(script: Path) -> frozenset[str]:
    """The --options a benchmark script's argparse declares (read from its source, never run), plus the
    --record every benchmark takes through benchmarks/_common.py and argparse's --help."""
    opts = {"--record", "--help", "-h"}
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            opts |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                     and a.value.startswith("-")}
    return frozenset(opts)


def _commands(code: str) -> list[list[str]]:
    """The simple commands of a shell snippet, as word lists (comments dropped, lines joined at a trailing
    backslash, split at ;, &&, || and |); a snippet shlex cannot read gives nothing."""
    try:
        lex = shlex.shlex(code.replace("\\\n", " "), posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        lex.commenters = "#"
        words = list(lex)
    except ValueError:
        return []
    out, cur = [], []
    for w in words:
        if w and set(w) <= set(";&|\n"):
            out.append(cur)
            cur = []
        else:
            cur.append(w)
    return [c for c in out + [cur] if c]


def _strip_optional(word: str) -> str:
    return word.strip("[]")


def check_command(words: list[str], repo: Path = REPO) -> str | None:
    """What is wrong with one command (`distill`, `make` or `python benchmarks/...`), or None: an unknown
    subcommand, action, flag, make target or script. Other programs are not checked."""
    words = [_strip_optional(w) for w in words if _strip_optional(w)]
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value before the program
        words = words[1:]
    if not words:
        return None
    prog, args = words[0], words[1:]
    if prog == "distill" or prog.endswith("/distill"):
        parser = distill_parser()
        subs = _subcommands(parser)
        if not args or args[0].startswith("-"):
            bad = [a for a in args if a.startswith("-") and a.split("=")[0] not in _options(parser)]
            return f"distill: unknown option {bad[0]}" if bad else None
        sub = subs.get(args[0])
        if sub is None:
            return f"distill: no subcommand {args[0]!r} (known: {', '.join(sorted(subs))})"
        rest = args[1:]
        positionals = [a for a in sub._actions if not a.option_strings and a.choices]
        first = next((a for a in rest if not a.startswith("-")), None)
        if positionals and first is not None and "|" not in first and not first.isupper():
            choices = positionals[0].choices
            if first not in choices:
                return f"distill {args[0]}: {first!r} is not one of {', '.join(choices)}"
        opts = _options(sub)
        for a in rest:
            if a.startswith("-") and a != "-" and a.split("=")[0] not in opts:
                return f"distill {args[0]}: no option {a.split('=')[0]}"
        return None
    if prog == "make":
        for t in args:
            if not t.startswith("-") and "=" not in t and t not in make_targets(repo / "Makefile"):
                return f"make: no target {t!r} in the Makefile"
        return None
    if re.match(r"^(?:.*/)?python3?$", prog) and args and re.match(r"^benchmarks/[\w-]+\.py$", args[0]):
        script = repo / args[0]
        if not script.is_file():
            return f"{args[0]}: no such script"
        known = script_options(script)
        bad = [a.split("=")[0] for a in args[1:] if a.startswith("--") and a.split("=")[0] not in known]
        return f"{args[0]}: no option {bad[0]}" if bad else None
    return None


def check_commands(text: str, page: Path) -> list[str]:
    """Problems with the commands shown in `text`: every shell command of a fenced block, and every inline
    code span that starts with `distill `, `make ` or `python benchmarks/`."""
    problems = []
    for lang, start, body in fenced_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for line_no, chunk in _logical_lines(body, start):
            for words in _commands(chunk):
                err = check_command(words)
                if err:
                    problems.append(f"{page.name}:{line_no}: {err}")
    for line_no, span in inline_code(text):
        if re.match(r"^(distill|make|python3? benchmarks/)\s", span):
            for words in _commands(span):
                err = check_command(words)
                if err:
                    problems.append(f"{page.name}:{line_no}: `{span}`: {err}")
    return problems


def _logical_lines(body: list[str], start: int) -> list[tuple[int, str]]:
    """Shell lines joined at trailing backslashes, each with the number of its first line."""
    out, cur, first = [], [], start
    for i, line in enumerate(body):
        if not cur:
            first = start + i
        cur.append(line)
        if not line.rstrip().endswith("\\"):
            out.append((first, "\n".join(cur)))
            cur = []
    if cur:
        out.append((first, "\n".join(cur)))
    return out


# ---------------------------------------------------------------- the checks on the real docs

@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_links_resolve(page):
    assert check_links(page.read_text(encoding="utf-8"), page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_commands_exist(page):
    assert check_commands(page.read_text(encoding="utf-8"), page) == []


def test_readme_is_a_front_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    # the two commands, exactly (CI's .ci/run calls `make test`)
    code = "\n".join(line for lang, _, body in fenced_blocks(text) if lang in SHELL_LANGS for line in body)
    assert re.search(r"(?m)^make demo\b", code) and re.search(r"(?m)^make test\b", code)
    assert "make test" in (REPO / ".ci" / "run").read_text()
    # every docs page is reachable from the front page
    linked = {Path(t.partition("#")[0]).name for t in LINK.findall(prose(text)) if t.startswith("docs/")}
    assert {p.name for p in DOCS} - linked == set()


def test_skill_file_shown_in_the_docs_is_the_shipped_one():
    page = REPO / "docs" / "skills-and-task-types.md"
    block = next(body for lang, _, body in fenced_blocks(page.read_text(encoding="utf-8"))
                 if lang == "yaml" and body and body[0].startswith("name: ticket-triage"))
    shown = yaml.safe_load("\n".join(block))
    shipped = yaml.safe_load((REPO / "seeds" / "ticket-triage" / "skill.yaml").read_text(encoding="utf-8"))
    assert shown == shipped


# ---------------------------------------------------------------- the checkers can fail

BAD_PAGE = """# A page

## Real heading

See [a missing page](nowhere.md), [a heading that is not there](#no-such-heading), [this one](#real-heading),
[outside](../../../etc/passwd), [the web](https://example.com/x.md) and `[not a link](in-code.md)`.

```bash
distill run ticket-triage --profile smoke
distill fly ticket-triage
distill run ticket-triage --no-such-flag
distill registry frobnicate ticket-triage
make demo
make no-such-target
python benchmarks/routing.py --skills ticket-triage --through-gateway --record
python benchmarks/no_such_bench.py
python benchmarks/routing.py --no-such-option
```

Inline: `distill gateway --port 8080 --bogus`, and `distill skills` is fine.
"""


def test_checkers_report_a_bad_page(tmp_path):
    page = tmp_path / "docs" / "bad.md"
    page.parent.mkdir()
    page.write_text(BAD_PAGE)
    links = check_links(BAD_PAGE, page, repo=tmp_path)
    assert any("(nowhere.md) links to a missing file" in p for p in links)
    assert any("names no heading #no-such-heading" in p for p in links)
    assert any("(../../../etc/passwd) leaves the repository" in p for p in links)
    assert not any("real-heading" in p or "example.com" in p or "in-code" in p for p in links)
    assert len(links) == 3

    cmds = check_commands(BAD_PAGE, page)
    expected = ["no subcommand 'fly'", "distill run: no option --no-such-flag", "'frobnicate' is not one of",
                "make: no target 'no-such-target'", "benchmarks/no_such_bench.py: no such script",
                "benchmarks/routing.py: no option --no-such-option", "distill gateway: no option --bogus"]
    for e in expected:
        assert any(e in p for p in cmds), (e, cmds)
    assert len(cmds) == len(expected), cmds


def test_slugs_follow_github():
    assert slug("Student stability, tool-calling, `cpu-budget`") == "student-stability-tool-calling-cpu-budget"
    assert slug("Dask / Ray") == "dask--ray"
    assert slug("The embedded teacher: transformers or llama.cpp") == "the-embedded-teacher-transformers-or-llamacpp"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


# ---------------------------------------------------------------- generated results

def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _benchmark(name: str):
    """benchmarks/<name>.py as a module, with benchmarks/ importable while the fixture lives (nothing runs on import)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        yield _load(name, REPO / "benchmarks" / f"{name}.py")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


@pytest.fixture(scope="module")
def results_mod():
    yield from _benchmark("_results")


def test_results_page_is_generated_from_the_records(results_mod):
    records = results_mod.load(results_mod.RESULTS)
    assert records, "benchmarks/results.jsonl holds no record"
    committed = results_mod.PAGE.read_text(encoding="utf-8")
    assert committed == results_mod.render(records, REPO), \
        "docs/results.md is stale: run python benchmarks/render_results.py"
    assert "This page is generated" in committed and "python benchmarks/render_results.py" in committed
    for r in records:  # every record names its benchmark's script, which exists
        script = re.search(r"benchmarks/[\w-]+\.py", r["command"]).group(0)
        assert (REPO / script).is_file(), r["command"]
        assert r["source"].startswith("README narrative, ") if "source" in r else r["commit"]


def test_render_check_fails_on_a_stale_page(tmp_path, results_mod):
    render_mod = _load("render_results", REPO / "benchmarks" / "render_results.py")
    rec = {"date": "2026-01-02T03:04:05Z", "commit": "abc1234", "machine": "test box", "benchmark": "eval_gates",
           "command": "python benchmarks/eval_gates.py --quick", "result": {"benchmark": "eval_gates", "seconds": 1.5}}
    results, page = tmp_path / "results.jsonl", tmp_path / "results.md"
    results_mod.append(rec, results)
    assert render_mod.main(["--results", str(results), "--out", str(page)]) == 0
    assert render_mod.main(["--check", "--results", str(results), "--out", str(page)]) == 0
    assert "| 2026-01-02 | abc1234 | test box | `python benchmarks/eval_gates.py --quick` | seconds **1.5** |" \
        in page.read_text()
    results_mod.append(dict(rec, date="2026-01-03T00:00:00Z"), results)
    assert render_mod.main(["--check", "--results", str(results), "--out", str(page)]) == 1
    (tmp_path / "broken.jsonl").write_text('{"date": "x"}\n')
    with pytest.raises(ValueError, match=r"broken.jsonl:1: a record needs"):
        results_mod.load(tmp_path / "broken.jsonl")


def test_record_flag_is_taken_in_one_place(tmp_path, monkeypatch, results_mod, capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        common = _load("_common", REPO / "benchmarks" / "_common.py")
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    argv, env = ["benchmarks/x.py", "--quick", "--record"], {"DISTILL_BENCH_RECORD": "1", "OTHER": "y"}
    assert common.take_record_request(argv, env) is True
    assert argv == ["benchmarks/x.py", "--quick"] and "DISTILL_BENCH_RECORD" not in env  # children never record
    assert common.take_record_request(["x.py"], {}) is False
    assert common.take_record_request(["x.py"], {"DISTILL_BENCH_RECORD": "0"}) is False

    # emit() with recording on: one record appended (date, commit, machine, command, result), page re-rendered
    monkeypatch.setattr(results_mod, "RESULTS", tmp_path / "results.jsonl")
    monkeypatch.setattr(results_mod, "PAGE", tmp_path / "results.md")
    monkeypatch.setattr(common, "RECORD", True)
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "eval_gates.py"), "--quick"])
    common.emit({"benchmark": "eval_gates", "quick": True, "seconds": 2.0})
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["seconds"] == 2.0
    (rec,) = results_mod.load(tmp_path / "results.jsonl")
    assert rec["command"] == "python benchmarks/eval_gates.py --quick" and rec["benchmark"] == "eval_gates"
    assert rec["result"]["seconds"] == 2.0 and rec["machine"] and re.match(r"^\d{4}-\d\d-\d\dT", rec["date"])
    assert rec["commit"] is None or re.match(r"^[0-9a-f]{7}(\+dirty)?$", rec["commit"])
    assert "eval_gates" in (tmp_path / "results.md").read_text()


def test_a_recorded_command_names_the_script_from_the_repository_root_whatever_the_cwd(tmp_path, monkeypatch,
                                                                                       results_mod):
    """Run as `cd benchmarks && python flywheel.py --record`, after the benchmark moved into a temporary folder:
    the record still says `python benchmarks/flywheel.py ...` (it said `python flywheel.py`, which runs nowhere)."""
    import types

    monkeypatch.chdir(tmp_path)  # where the benchmark is by the time it records
    main = types.ModuleType("__main__")
    main.__file__ = str(REPO / "benchmarks" / "flywheel.py")  # what Python sets (absolute since 3.9)
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert results_mod.command(["flywheel.py", "--keep"]) == "python benchmarks/flywheel.py --keep"
    assert results_mod.command(["other.py"]) == "python other.py"  # not the main script: as given


@pytest.fixture(scope="module")
def fw():
    """benchmarks/flywheel.py as a module (nothing runs on import)."""
    yield from _benchmark("flywheel")


def _flywheel_record(seed: int | None, served: tuple[float, float], share: tuple[float, float], *, quick=False,
                     commit="abc1234", fired=(False, True), found=0, stream=None, context=None) -> dict:
    """A recorded full-size flywheel run with the figures summarize_seeds reads (served: accepted only, context;
    share: phase 1, phase 3 under context)."""
    acc, ctx = served
    phase = {"served_accuracy": 0.8, "student_accuracy": 0.7, "teacher_share": 0.1, "held_by_budget": 0}
    result = {"benchmark": "flywheel", "quick": quick, "stream": stream or {"phase1": 84, "phase2": 35, "phase3": 99},
              "routing": {"policy": "budget", "max_teacher_share": 0.2},
              "drift": {"fired_in_phase1": fired[0], "fired_in_phase2": fired[1]}, "pii": {"found": found},
              "policies": {"frozen": {"phase1": phase},
                           "accepted_only": {"phase3": dict(phase, student_accuracy=acc - 0.1)},
                           "traffic_context": {"phase3": dict(phase, student_accuracy=ctx - 0.1)}},
              "summary": {"phase3_served_accuracy": {"accepted_only": acc, "traffic_context": ctx},
                          "phase3_student_accuracy": {"accepted_only": acc - 0.1, "traffic_context": ctx - 0.1},
                          "context_minus_accepted_only": round(ctx - acc, 4),
                          "teacher_share": {"phase1": share[0], "phase3_traffic_context": share[1]},
                          "phase3_share_minus_phase1_traffic_context": round(share[1] - share[0], 4)}}
    if seed is not None:
        result["seed"] = seed
    if context is not None:
        result["context_policy"] = context
    command = "python benchmarks/flywheel.py --record" + (f" --seed {seed}" if seed not in (None, 7) else "")
    return {"date": "2026-12-07T00:00:00Z", "commit": commit, "machine": "test box", "command": command,
            "benchmark": "flywheel", "result": result}


def test_flywheel_summarize_reads_one_run_per_seed_and_counts_the_bars(tmp_path, monkeypatch, results_mod, fw):
    """`flywheel.py --summarize`: the newest full-size run per seed of today's streams; across seeds the mean and
    sd of each done-when figure and how many seeds meet its bar. Quick runs, other stream sizes and runs from
    before the live budget (no held_by_budget) are not the benchmark the issue is judged on."""
    import statistics

    results = tmp_path / "results.jsonl"
    monkeypatch.setattr(results_mod, "RESULTS", results)
    results.write_text("")
    before = {"relabel": 32, "style_share": 0.5, "cross_share": 0.0}  # runs recorded before context_policy
    with pytest.raises(SystemExit, match="run python benchmarks/flywheel.py --record first"):
        fw.summarize_seeds("budget", 0.2, before)
    old = _flywheel_record(None, (0.9, 0.7), (0.1, 0.1), commit="old0000")  # seed 7 by its command line
    old["result"]["policies"]["frozen"]["phase1"].pop("held_by_budget")
    rows = [_flywheel_record(None, (0.80, 0.86), (0.18, 0.20), commit="aaa0001"),  # seed 7, +0.06, share +0.02
            _flywheel_record(8, (0.88, 0.90), (0.07, 0.20), commit="aaa0002"),     # +0.02, share +0.13
            _flywheel_record(8, (0.88, 0.81), (0.07, 0.20), commit="aaa0003"),     # newer seed 8 stands: -0.07
            _flywheel_record(9, (0.50, 0.99), (0.1, 0.1), quick=True),              # quick: not counted
            _flywheel_record(10, (0.50, 0.99), (0.1, 0.1), stream={"phase1": 24, "phase2": 35, "phase3": 99}),
            _flywheel_record(11, (0.80, 0.90), (0.10, 0.12), fired=(True, False), found=2), old]
    # Two runs of today's traffic_context policy: one says so, one (recorded before it did) shows counterfactuals.
    now = _flywheel_record(12, (0.80, 0.85), (0.10, 0.12), context=dict(fw.CONTEXT_POLICY))
    counted = _flywheel_record(13, (0.80, 0.80), (0.10, 0.20))
    counted["result"]["policies"]["traffic_context"]["refresh"] = {"counts": {"traffic_counterfactual": 48}}
    rows += [now, counted]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    today = fw.summarize_seeds("budget", 0.2)
    assert today["seeds"] == [12, 13] and today["context_policy"] == fw.CONTEXT_POLICY
    assert today["other_policies"] == {json.dumps(before, sort_keys=True): [7, 8, 11]}
    assert today["met"]["context_gain_0.05"] == 1 and today["met"]["of"] == 2
    out = fw.summarize_seeds("budget", 0.2, before)
    assert out["seeds"] == [7, 8, 11]
    assert out["per_seed"][7]["commit"] == "aaa0001" and out["per_seed"][8]["commit"] == "aaa0003"
    assert out["per_seed"][7]["machine"] == "test box"  # each seed says where it ran: bf16 and float32 differ
    assert out["context_minus_accepted_only"]["mean"] == pytest.approx((0.06 - 0.07 + 0.10) / 3, abs=1e-4)
    assert out["context_minus_accepted_only"]["sd"] == pytest.approx(statistics.stdev([0.06, -0.07, 0.10]), abs=1e-4)
    assert out["met"] == {"drift_in_phase2": 2, "context_gain_0.05": 2, "share_within_0.05": 2, "no_pii": 2, "of": 3}
    with pytest.raises(SystemExit, match="routing"):
        fw.summarize_seeds("quality", 0.2, before)
    with results.open("a") as f:
        f.write('{"date": "2026-12-08", "benchmark": "flywheel"\n')  # a line cut by a killed run
    with pytest.raises(ValueError, match=r"results.jsonl:10: not JSON"):
        fw.summarize_seeds("budget", 0.2)


def test_flywheel_slices_name_the_shift_words_and_whether_the_label_follows_them(fw):
    assert fw.slice_of({"input": "Klarna charged twice", "output": "billing"}) == "klarna_billing"
    assert fw.slice_of({"input": "please add KLARNA for annual plans", "output": "feature_request"}) == \
        "klarna_other_label"
    assert fw.slice_of({"input": "okta login loop", "output": "account"}) == "okta_scim_account"
    assert fw.slice_of({"input": "Pulse copilot crashes the tab", "output": "bug"}) == "copilot_bug"
    assert fw.slice_of({"input": "copilot in french pls", "output": "feature_request"}) == "copilot_other_label"
    assert fw.slice_of({"input": "invoice wrong", "output": "billing"}) == "no_new_words"
    _, _, phase2, phase3 = fw.streams()  # the shortcut the slices are there to show: phase 2's Klarna is all billing
    assert {fw.slice_of(it) for it in phase2 if "klarna" in it["input"].lower()} == {"klarna_billing"}
    assert sum(fw.slice_of(it) == "klarna_other_label" for it in phase3) == 5


def test_flywheel_teacher_writes_the_counterfactual_it_is_asked_for(fw):
    """The scripted teacher, asked through the pipeline's own cross_prompt for an account ticket naming what a
    Klarna ticket names, writes a seed of that label led by the new name and remembers the asked label as gold
    (then labels it right `accuracy` of the time, as every ticket it knows); a continuation prompt still gets a
    rewrite of a shown ticket with that ticket's label."""
    from core.records import Example
    from core.skills import load_skill
    from teachers.strategies import cross_prompt, style_prompt

    skill = load_skill("ticket-triage", root=REPO / "seeds")
    vocab = fw.pre_shift_vocab()
    assert "klarna" not in vocab and "refund" in vocab
    t = fw.ScriptedTeacher({}, 1.0, vocab)
    assert t.names_in("Paid via Klarna, order confirmation never came") == ["Klarna"]
    assert t.names_in("Pulse AI copilot invents due dates") == ["Pulse", "AI", "copilot"]
    assert t.names_in("klarna declined twice") == ["klarna", "declined"]  # no capital: the first new words
    seeds = [s for s in skill.seeds if s.output == "account"][:2]
    received = Example(id="t", skill=skill.name, input="Klarna split-pay plan shows 4 installments, portal says overdue",
                       output=None, source="traffic")
    text = t(cross_prompt(skill, seeds, received, "account"), {"seed": 3}).strip()
    assert "Klarna split-pay" in text and t.label_of(text) == "account"
    assert any(w in text for s in seeds for w in s.input.split() if len(w) > 4)  # the seed's request, rewritten
    billing = [s for s in skill.seeds if s.output == "billing"][:1]
    text = t(style_prompt(skill, billing), {"seed": 3}).strip()
    assert t.label_of(text) == "billing" and "Klarna" not in text
