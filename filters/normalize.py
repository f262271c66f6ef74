"""Text normalization shared by every filter, so they all agree on "the same text": the one
normalizer lives in core/text.py (the seed/eval overlap check of `distill skills` uses it too)."""

from core.text import NORMALIZER_VERSION, normalize, words

__all__ = ["NORMALIZER_VERSION", "normalize", "words"]
