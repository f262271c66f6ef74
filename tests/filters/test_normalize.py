import random
import unicodedata

import pytest

from filters.normalize import normalize, words


def test_normalize_folds_case_width_punctuation_and_space():
    assert normalize("  Hello,\tWORLD!!  ｆｕｌｌ—width… ") == "hello world full width"
    assert words("Don't   stop") == ["don", "t", "stop"]
    assert normalize("¿¡...!?") == ""


def _invisible(c: str) -> bool:
    # The definition, spelled out: Unicode's Default_Ignorable_Code_Point, the "... FILLER" code
    # points and category Cf, none of them white space.
    import regex

    return not c.isspace() and (regex.fullmatch(r"\p{Default_Ignorable_Code_Point}", c) is not None
                                or unicodedata.category(c) == "Cf" or unicodedata.name(c, "").endswith("FILLER"))


def reference(text):
    # The definition (core/text.py): HTML entities unescaped and tags dropped, invisible code points
    # removed, NFKC, case-folded, NFKC again, every Unicode P* character and U+2800 to a space, invisible
    # code points removed again, whitespace collapsed.
    import html
    import re

    text = re.sub(r"</?[A-Za-z][^<>]{0,500}>", " ", html.unescape(text))
    text = "".join(c for c in text if not _invisible(c))
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    out = []
    for c in text:
        cat = unicodedata.category(c)
        out.append(" " if cat.startswith("P") or c == "\u2800" else "" if _invisible(c) else c)
    return " ".join("".join(out).split())


def test_fast_normalize_equals_the_definition_on_random_unicode():
    rng = random.Random(0)
    for _ in range(2000):
        pick = rng.choice([lambda: rng.randrange(0, 128), lambda: rng.randrange(0x80, 0x3000),
                           lambda: rng.randrange(0x3000, 0x110000)])
        text = "".join(chr(pick()) for _ in range(30))
        assert normalize(text) == reference(text)


# ---- issue 35 (1): every invisible code point, by its Unicode property -------------------------------------------


def _default_ignorables() -> list[int]:
    import sys

    import regex

    every = "".join(map(chr, range(sys.maxunicode + 1)))
    return [ord(c) for c in regex.findall(r"\p{Default_Ignorable_Code_Point}", every)]


def test_every_default_ignorable_code_point_is_dropped_inside_words():
    from core.text import invisible_code_points

    members = _default_ignorables()
    assert len(members) > 4000  # the whole property (reserved ranges included), not a list of the ones seen
    assert {0x034F, 0x00AD, 0x200B, 0x2060, 0xFE0F, 0xE0001, 0xE0FFF, 0x1D173, 0x180B, 0x3164} <= set(members)
    assert set(members) <= invisible_code_points()
    base = normalize("facturación pendiente")
    for c in members:
        ch = chr(c)
        assert normalize(f"fac{ch}turación pen{ch}diente") == base, hex(c)
        assert normalize(ch) == "", hex(c)
        assert words(f"re{ch}fund 退{ch}款") == ["refund", "退", "款"], hex(c)


@pytest.mark.parametrize("filler", ["\u3164", "\uffa0", "\u115f", "\u1160"])
def test_hangul_fillers_are_dropped_and_braille_blank_is_a_space(filler):
    assert normalize(f"reset{filler} my pass{filler}word{filler}") == "reset my password"
    assert normalize(filler * 3) == ""
    assert normalize("reset\u2800my\u2800password") == "reset my password"


def test_every_format_and_filler_code_point_is_invisible():
    import sys

    from core.text import invisible_code_points

    got = invisible_code_points()
    for c in range(sys.maxunicode + 1):
        ch = chr(c)
        if unicodedata.category(ch) == "Cf" or unicodedata.name(ch, "").endswith("FILLER"):
            assert c in got, hex(c)
    assert not [c for c in got if chr(c).isspace()]  # white space still separates words


def test_ordinary_text_keeps_its_meaning():
    nfc, nfd = "facturación crème brûlée", unicodedata.normalize("NFD", "facturación crème brûlée")
    assert nfc != nfd and normalize(nfc) == normalize(nfd) == "facturación crème brûlée"
    # A joiner between a letter and its accent no longer keeps them from composing.
    assert normalize("factu\u034fracio\u034f\u0301n") == normalize("facturación")
    assert normalize("facturacion") != normalize("facturación")  # accents still count
    assert normalize("我的订阅被重复扣款") == "我的订阅被重复扣款" and normalize("한국어 문장") == "한국어 문장"
    assert normalize(unicodedata.normalize("NFD", "한국어")) == "한국어"  # jamo compose (U+1160 is a filler, not these)
    assert normalize("ΟΔΟΣ") == normalize("οδος") == "οδοσ"  # final sigma folds
    # Emoji stay; a ZWJ sequence keeps its pictures (the joiners go) and stays unlike another one.
    assert normalize("deploy 🚀 now") == "deploy 🚀 now"
    family_girl, family_boy = "👨\u200d👩\u200d👧", "👨\u200d👩\u200d👦"
    assert normalize(family_girl) == "👨👩👧" and normalize(family_girl) != normalize(family_boy)
    assert normalize("I ❤\ufe0f it") == normalize("I ❤ it") != normalize("I it")
    assert normalize("\U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f") == "\U0001f3f4"


def test_normalize_is_idempotent_on_random_unicode():
    rng = random.Random(1)
    for _ in range(2000):
        text = "".join(chr(rng.randrange(0x80, 0x30000)) for _ in range(20))
        once = normalize(text)
        assert normalize(once) == once
