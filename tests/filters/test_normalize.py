import random
import unicodedata

from filters.normalize import normalize, words


def test_normalize_folds_case_width_punctuation_and_space():
    assert normalize("  Hello,\tWORLD!!  ｆｕｌｌ—width… ") == "hello world full width"
    assert words("Don't   stop") == ["don", "t", "stop"]
    assert normalize("¿¡...!?") == ""


def reference(text):
    # The definition: NFKC, lowercase, every Unicode P* character to a space, whitespace collapsed.
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join("".join(" " if unicodedata.category(c).startswith("P") else c for c in text).split())


def test_fast_normalize_equals_the_definition_on_random_unicode():
    rng = random.Random(0)
    for _ in range(2000):
        pick = rng.choice([lambda: rng.randrange(0, 128), lambda: rng.randrange(0x80, 0x3000),
                           lambda: rng.randrange(0x3000, 0x110000)])
        text = "".join(chr(pick()) for _ in range(30))
        assert normalize(text) == reference(text)
