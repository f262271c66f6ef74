"""The one text normalizer: what "the same text" means for dedup, contamination, the quality
filter's length bounds and the seed/eval overlap check of `distill skills`.

`normalize` undoes what hides a copy without changing what it says: HTML entities and tags
(`html.escape`d or marked-up copies), Unicode compatibility forms (NFKC: full-width letters and
punctuation), invisible code points (`invisible_code_points`: Unicode's Default_Ignorable_Code_Point
property, e.g. zero-width spaces and joiners, soft hyphens, bidi marks, the combining grapheme
joiner, variation selectors, tags, Hangul fillers; and every format character, category Cf), case
beyond ASCII (`str.casefold`: "Straße" == "STRASSE"), punctuation (category P*), and whitespace
(the blank Braille pattern U+2800, a space in Braille, too). Emoji ZWJ sequences keep their
emoji and lose the joiners ("👩‍💻" reads as "👩💻"): the same pictures, still unlike any other. `words` splits it into units: words, and single characters of scripts written
without spaces (Chinese, Japanese, Thai, Lao, Khmer, Myanmar), so length bounds and n-grams have
a unit that works for them too.
"""

from __future__ import annotations

import html
import re
import sys
import unicodedata
from functools import lru_cache

import regex

# Bump when `normalize` or `words` changes: dedup and contamination results depend on it (the
# dedup index records it in its manifest and is rebuilt from the accepted pool when it differs).
NORMALIZER_VERSION = "3"

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
# Blank but not white space to str.split: the blank Braille pattern (a space between Braille words).
_BLANKS = (0x2800,)


@lru_cache(maxsize=1)
def invisible_code_points() -> frozenset[int]:
    """Every code point `normalize` removes: Unicode's Default_Ignorable_Code_Point property (from the
    `regex` module's Unicode data, which follows DerivedCoreProperties.txt; unassigned code points in
    its reserved ranges included), the code points named "... FILLER" in Python's Unicode data (the
    Hangul fillers), and every format character (category Cf). Never a white-space character."""
    everything = "".join(map(chr, range(sys.maxunicode + 1)))
    out = {ord(c) for c in regex.findall(r"\p{Default_Ignorable_Code_Point}", everything)}
    for c in range(sys.maxunicode + 1):
        ch = chr(c)
        if unicodedata.category(ch) == "Cf" or unicodedata.name(ch, "").endswith("FILLER"):
            out.add(c)
    return frozenset(c for c in out if not chr(c).isspace())


@lru_cache(maxsize=1)
def invisible_table() -> dict[int, None]:
    """A str.translate table that removes every `invisible_code_points` member."""
    return dict.fromkeys(invisible_code_points())


@lru_cache(maxsize=1)
def _unicode_table() -> dict[int, str | None]:
    # Every Unicode P* code point and blank to a space, every invisible code point removed; built
    # once on the first non-ASCII text (~1 s).
    table: dict[int, str | None] = {c: " " for c in _BLANKS}
    for c in range(sys.maxunicode + 1):
        if unicodedata.category(chr(c)).startswith("P"):
            table[c] = " "
    table.update(invisible_table())
    return table


def normalize(text: str) -> str:
    """`text` as dedup and contamination compare it (str -> str; never raises): HTML unescaped and
    tags dropped, invisible code points removed, NFKC, case-folded, punctuation and blanks to spaces,
    whitespace collapsed. Invisibles go before NFKC too, so a joiner inside "e\u034f\u0301" cannot
    keep "é" from composing."""
    if "&" in text:
        text = html.unescape(text)
    if "<" in text:
        text = _TAG.sub(" ", text)
    if text.isascii():  # no invisible, blank or compatibility character is ASCII
        return " ".join(text.lower().translate(_ASCII_TABLE).split())
    text = text.translate(invisible_table())
    # casefold's output need not be NFKC ("ǰ" -> "ǰ"): normalized again, then invisibles NFKC made
    # (U+FFA0 -> U+3164) dropped with the punctuation.
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    text = text.translate(_unicode_table())
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """The units of the normalized text: words, and one unit per character of scripts written
    without spaces."""
    norm = normalize(text)
    if not norm.isascii():
        norm = _NO_SPACE_SCRIPTS.sub(r" \1 ", norm)
    return norm.split()


def label_form(text: str) -> str:
    """How labels compare everywhere: skill.yaml's labels, the output parser, the metric, seeds, eval
    and traffic references, the gateway's answers. Unicode canonical caseless form (D145: NFD, full
    case folding, composed again as NFC; surrounding white space dropped): "facturación" written
    decomposed (NFD) or composed (NFC), "STRASSE" and "straße", "ΟΔΟΣ" and "οδος" have one form each.
    Full case folding is Unicode's default, not the Turkic one: "I" folds to "i", not "ı". str -> str."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", text).casefold()).strip()
