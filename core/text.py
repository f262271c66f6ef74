"""The one text normalizer: what "the same text" means for dedup, contamination, the quality
filter's length bounds and the seed/eval overlap check of `distill skills`.

`normalize` undoes what hides a copy without changing what it says: HTML entities and tags
(`html.escape`d or marked-up copies), Unicode compatibility forms (NFKC: full-width letters and
punctuation), format characters (category Cf: zero-width spaces and joiners, soft hyphens, bidi
marks), case beyond ASCII (`str.casefold`: "Straße" == "STRASSE"), punctuation (category P*),
and whitespace. `words` splits it into units: words, and single characters of scripts written
without spaces (Chinese, Japanese, Thai, Lao, Khmer, Myanmar), so length bounds and n-grams have
a unit that works for them too.
"""

from __future__ import annotations

import html
import re
import sys
import unicodedata
from functools import lru_cache

# Bump when `normalize` or `words` changes: dedup and contamination results depend on it (the
# dedup index records it in its manifest and is rebuilt from the accepted pool when it differs).
NORMALIZER_VERSION = "2"

# A tag: "<" + a letter or "/" ... ">" (so "a < b" and "x<3" stay text).
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,500}>")
# Scripts written without spaces between words: each character is its own unit.
_NO_SPACE_SCRIPTS = re.compile(
    "([\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0e7f\u0e80-\u0eff"
    "\u1000-\u109f\u1780-\u17ff\U00020000-\U0003134f])")


def _is_punct(c: int) -> bool:
    return unicodedata.category(chr(c)).startswith("P")


# str.translate tables (punctuation -> space) instead of a per-character Python loop:
# same result, ~10x faster on ASCII text, which is most of what the filters see.
_ASCII_TABLE = {c: " " for c in range(128) if _is_punct(c)}


@lru_cache(maxsize=1)
def _unicode_table() -> dict[int, str | None]:
    # Every Unicode P* code point to a space, every format character (Cf) removed; built once on
    # the first non-ASCII text (~1 s).
    table: dict[int, str | None] = {}
    for c in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(c))
        if cat.startswith("P"):
            table[c] = " "
        elif cat == "Cf":
            table[c] = None
    return table


def normalize(text: str) -> str:
    """HTML unescaped and tags dropped, NFKC, case-folded, format characters removed,
    punctuation to spaces, whitespace collapsed."""
    if "&" in text:
        text = html.unescape(text)
    if "<" in text:
        text = _TAG.sub(" ", text)
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_TABLE).split())
    text = unicodedata.normalize("NFKC", text).casefold()
    text = text.translate(_unicode_table())
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """The units of the normalized text: words, and one unit per character of scripts written
    without spaces."""
    norm = normalize(text)
    if not norm.isascii():
        norm = _NO_SPACE_SCRIPTS.sub(r" \1 ", norm)
    return norm.split()
