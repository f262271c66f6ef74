import random
import unicodedata

from filters.normalize import normalize, words


def test_normalize_folds_case_width_punctuation_and_space():
    assert normalize("  Hello,\tWORLD!!  ｆｕｌｌ—width… ") == "hello world full width"
    assert words("Don't   stop") == ["don", "t", "stop"]
    assert normalize("¿¡...!?") == ""


def reference(text):
    # The definition (core/text.py): HTML entities unescaped and tags dropped, NFKC, case-folded, every
    # Unicode P* character to a space, every format character (Cf) removed, whitespace collapsed.
    import html
    import re

    text = re.sub(r"</?[A-Za-z][^<>]{0,500}>", " ", html.unescape(text))
    text = unicodedata.normalize("NFKC", text).casefold()
    out = []
    for c in text:
        cat = unicodedata.category(c)
        out.append(" " if cat.startswith("P") else "" if cat == "Cf" else c)
    return " ".join("".join(out).split())


def test_fast_normalize_equals_the_definition_on_random_unicode():
    rng = random.Random(0)
    for _ in range(2000):
        pick = rng.choice([lambda: rng.randrange(0, 128), lambda: rng.randrange(0x80, 0x3000),
                           lambda: rng.randrange(0x3000, 0x110000)])
        text = "".join(chr(pick()) for _ in range(30))
        assert normalize(text) == reference(text)
