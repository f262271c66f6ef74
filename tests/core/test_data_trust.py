"""Data you can trust (issue 15): one normalizer decides "same text"; invisible characters, markup,
case beyond ASCII and scripts without spaces do not hide a copy; JSONL is read byte-safe everywhere
(invalid UTF-8 costs one named line, a BOM costs nothing, only "\\n" ends a line)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from core.records import Example, iter_jsonl, parse_jsonl_lines, read_jsonl, write_jsonl
from core.skills import load_skill, validate_all
from core.structured import canonical_json
from core.text import normalize, words
from filters.contamination import Contamination
from filters.quality import QualityFilter
from core.skills import FilterConfig
from tests.core.skillkit import config, make_skill

REPO = Path(__file__).resolve().parents[2]
ZWSP = "\u200b"


def _zero_width(text: str, mark: str = ZWSP) -> str:
    out = []
    for i, w in enumerate(text.split(" "), 1):
        out.append(w + (mark if i % 3 == 0 else ""))
    return out[0][:2] + mark + " ".join(out)[2:]  # and one inside the first word (short texts too)


def _inside_words(text: str, mark: str) -> str:
    """`mark` inside every word of 3+ characters (after its second character)."""
    return " ".join(w[:2] + mark + w[2:] if len(w) > 2 else w for w in text.split(" "))


# Invisible code points not in category Cf (the old normalizer kept them): the combining grapheme
# joiner (Mn), a variation selector (Mn), a Hangul filler (Lo), a tag character (Cf, but unassigned
# in older data), a Mongolian free variation selector (Mn).
INVISIBLES = {"cgj": "\u034f", "vs16": "\ufe0f", "hangul_filler": "\u3164", "halfwidth_filler": "\uffa0",
              "choseong_filler": "\u115f", "tag": "\U000e0041", "mongolian_fvs": "\u180b"}


# ---- one normalizer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a, b", [
    ("Reset my password please, the email never arrives", "Reset my password please - the email never arrives!"),
    ("Reset my password please, the email never arrives", "Reset my password please\uff0c the email never arrives"),
    ("I was charged twice", "I was " + ZWSP + "charged\u00ad twice\u200d"),  # zero-width, soft hyphen, joiner
    ("Tom's order <3 & more", html.escape("Tom's order <3 & more")),
    ("reset my password", "<p>Reset <b>my</b> password</p>"),
    ("STRASSE und MASSE", "straße und maße"),  # case folding beyond ASCII
    ("ｒｅｓｅｔ　ｍｙ　ｐａｓｓｗｏｒｄ", "reset my password"),  # full-width letters and space
])
def test_one_normalizer_sees_through_punctuation_invisibles_markup_and_case(a, b):
    assert normalize(a) == normalize(b)


def test_text_without_spaces_is_counted_per_character():
    ticket = "我上个月的订阅被重复扣款了两次请帮我退还多收的费用"
    assert len(words(ticket)) == len(ticket)
    assert words("refund 退款 please") == ["refund", "退", "款", "please"]
    assert len(words("ข้อความภาษาไทย")) > 3  # Thai: no spaces either
    assert normalize("a < b and c > d") == "a < b and c > d"  # not a tag


def test_a_chinese_ticket_passes_the_length_check():
    cfg = FilterConfig()
    ex = Example(id="x", skill="s", input="我上个月的订阅被重复扣款了两次请帮我退还多收的费用", output="billing",
                 source="teacher")
    assert QualityFilter(cfg, labels=["billing", "bug"]).check(ex) is None


def _contamination(eval_items: list[Example]) -> Contamination:
    return Contamination.from_config({"eval": eval_items}, FilterConfig(), lambda s: s)


@pytest.mark.parametrize("skill_name", ["ticket-triage", "json-extraction", "tool-calling"])
@pytest.mark.parametrize("disguise", ["zero_width", "html_escape", *INVISIBLES])
def test_disguised_copies_of_every_shipped_eval_item_are_contamination(skill_name, disguise):
    from filters.stage import dedup_text

    skill = load_skill(skill_name, root=REPO / "seeds")
    text = dedup_text(skill.config)
    step = Contamination.from_config({"eval": skill.eval_set}, skill.config.filters, text)
    missed = []
    for ev in skill.eval_set:
        shown = text(ev.input)
        if disguise in INVISIBLES:
            fake = _inside_words(shown, INVISIBLES[disguise])
        else:
            fake = _zero_width(shown) if disguise == "zero_width" else \
                "<p>" + html.escape(shown).replace(" ", "&nbsp;", 2) + "</p>"
        inp = fake
        if ev.input.startswith("{"):  # a function call: the request is disguised, the tools kept
            inp = canonical_json({**json.loads(ev.input), "request": fake})
        assert inp != ev.input
        (got,) = step.check_batch([Example(id="c", skill=skill_name, input=inp, output=ev.output, source="teacher")])
        if not got or got[1]["eval_id"] != ev.id:
            missed.append(ev.id)
    assert not missed, f"{len(missed)}/{len(skill.eval_set)} disguised copies slipped through: {missed[:5]}"


def test_a_wrapped_copy_of_a_chinese_eval_item_is_flagged():
    item = Example(id="zh-1", skill="s", input="我上个月的订阅被重复扣款了两次请帮我退还多收的费用", output="billing",
                   source="human")
    step = _contamination([item])
    (got,) = step.check_batch([Example(id="c", skill="s", input="您好！" + item.input + "，谢谢", output="billing",
                                       source="teacher")])
    assert got and got[0] == "eval_ngram_overlap" and got[1]["eval_id"] == "zh-1"


def test_distill_skills_flags_an_eval_item_that_repeats_a_seed_up_to_punctuation(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    make_skill(tmp_path, "classification")
    folder = tmp_path / config("classification")["name"]
    seeds = [json.loads(x) for x in (folder / "seeds.jsonl").read_text().splitlines()]
    seeds[1]["input"] = "Reset my password please, the email never arrives"
    (folder / "seeds.jsonl").write_text("".join(json.dumps(s) + "\n" for s in seeds))
    evals = [json.loads(x) for x in (folder / "eval.jsonl").read_text().splitlines()]
    evals[2]["input"] = "Reset my password please - the email never arrives!"
    evals[0]["input"] = "Reset my password please\uff0c the email never arrives"
    (folder / "eval.jsonl").write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in evals))
    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(tmp_path))
    assert main(["skills"]) == 1
    err = capsys.readouterr()
    text = err.out + err.err
    assert "eval.jsonl:3" in text and "eval.jsonl:1" in text and "seeds.jsonl:2" in text


# ---- bytes and lines --------------------------------------------------------------------------------------------


def test_invalid_utf8_costs_one_named_line_in_every_reader(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n{"a": 3}\n')
    got = list(iter_jsonl(p))
    assert [(n, o) for n, o, _ in got] == [(1, {"a": 1}), (2, None), (3, {"a": 3})]
    assert "invalid UTF-8 (byte 0xE9" in got[1][2]
    from core.records import DataError

    with pytest.raises(DataError, match=r"x.jsonl:2: invalid UTF-8"):
        list(read_jsonl(p))


def test_bom_and_unicode_line_separators(tmp_path):
    p = tmp_path / "x.jsonl"
    rows = [{"id": "1", "reason": "line\u2028separator\u2029para\x85nel\x0bvt\x0cff\x1cfs"}, {"id": "2"}]
    write_jsonl(p, rows)
    assert [o for _, o in read_jsonl(p)] == rows
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())  # a UTF-8 BOM costs nothing
    assert [o for _, o in read_jsonl(p)] == rows
    text = p.read_text(encoding="utf-8")
    assert [o for _, o, _ in parse_jsonl_lines(text.split("\n"))] == rows  # str lines: BOM dropped too
    p.write_bytes("\n".join(json.dumps(r) for r in rows).encode("utf-16"))
    (bad,) = list(iter_jsonl(p))
    assert bad[0] == 1 and "UTF-16" in bad[2]


def test_distill_skills_names_the_bad_traffic_line_and_the_readers_keep_the_rest(tmp_path, monkeypatch, capsys):
    from eval_gates.replay import load_skill_traffic
    from flows.cli import main

    make_skill(tmp_path, "classification")
    folder = tmp_path / config("classification")["name"]
    lines = (folder / "traffic.jsonl").read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"is this", b"is th\xe9s")
    (folder / "traffic.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines))
    (folder / "seeds.jsonl").write_bytes(b"\xef\xbb\xbf" + (folder / "seeds.jsonl").read_bytes())
    monkeypatch.setenv("DISTILL_SEEDS_DIR", str(tmp_path))
    assert main(["skills"]) == 1
    out = capsys.readouterr()
    problems = [ln for ln in (out.out + out.err).splitlines() if "jsonl:" in ln]
    assert len(problems) == 1 and "traffic.jsonl:2" in problems[0] and "invalid UTF-8" in problems[0]
    skill = load_skill(folder.name, root=tmp_path)  # the BOM cost no seed
    assert len(skill.seeds) == 3
    log = load_skill_traffic(skill)
    assert len(log) == len([x for x in lines if x.strip()]) - 1  # the BOM cost no record, the bad line only itself
    assert [s.where.rsplit(":", 1)[1] for s in log.skipped] == ["2"]
