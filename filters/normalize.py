"""Text normalization shared by every filter, so they all agree on "the same text"."""

from __future__ import annotations

import unicodedata

# Bump when `normalize` changes: dedup and contamination results depend on it.
NORMALIZER_VERSION = "1"


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    # Unicode category P* covers ASCII and non-ASCII punctuation alike ("don't" -> "don t").
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def words(text: str) -> list[str]:
    return normalize(text).split()
