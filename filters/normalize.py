"""Text normalization shared by every filter, so they all agree on "the same text"."""

from __future__ import annotations

import sys
import unicodedata
from functools import lru_cache

# Bump when `normalize` changes: dedup and contamination results depend on it
# (the dedup index records it in its manifest and refuses an index built with another).
NORMALIZER_VERSION = "1"


def _is_punct(c: int) -> bool:
    return unicodedata.category(chr(c)).startswith("P")


# str.translate tables (punctuation -> space) instead of a per-character Python loop:
# same result, ~10x faster on ASCII text, which is most of what the filters see.
_ASCII_TABLE = {c: " " for c in range(128) if _is_punct(c)}


@lru_cache(maxsize=1)
def _unicode_table() -> dict[int, str]:
    # Every Unicode P* code point; built once on the first non-ASCII text (~1 s).
    return {c: " " for c in range(sys.maxunicode + 1) if _is_punct(c)}


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    # Unicode category P* covers ASCII and non-ASCII punctuation alike ("don't" -> "don t").
    text = text.translate(_ASCII_TABLE if text.isascii() else _unicode_table())
    return " ".join(text.split())


def words(text: str) -> list[str]:
    return normalize(text).split()
