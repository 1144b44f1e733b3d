"""Caption and synonym normalisation, shared by the fast counter and its reference.

A text becomes a sequence of tokens: Unicode NFKC, case-folded; every character that is not a
letter or digit separates tokens (so "t-shirt" is "t shirt" and "dog's" is "dog s"); each token is
reduced to a singular form by the suffix rules of ``singular``. The same function normalises
captions and synonyms, so "Dogs" matches "dog" and "cat" never matches inside "category".
"""

from __future__ import annotations

import re
import unicodedata

_SEPARATORS = re.compile(r"[\W_]+")
# Suffix rules, applied in order; the first that fits wins. They are the same in the compiled
# counter (rebalance.text.counter), which is tested against this function.
_ES_ENDINGS = ("ches", "shes", "sses", "xes", "zes")
_KEEP_S_ENDINGS = ("ss", "us", "is")


def singular(token: str) -> str:
    """A crude English singular: "categories" -> "category", "boxes" -> "box", "dogs" -> "dog".

    Not a lemmatiser: it only has to map a plural and its singular to the same key, and it is
    applied alike to captions and synonyms ("glasses" and "glass" both become "glass").
    """
    if len(token) >= 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) >= 4 and token.endswith(_ES_ENDINGS):
        return token[:-2]
    if len(token) >= 3 and token.endswith("s") and not token.endswith(_KEEP_S_ENDINGS):
        return token[:-1]
    return token


def tokens(text: str) -> list[str]:
    """The normalised tokens of ``text``."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [singular(token) for token in _SEPARATORS.split(folded) if token]


def normalize(text: str) -> str:
    """``text`` as normalised tokens joined by single spaces."""
    return " ".join(tokens(text))


_DISAMBIGUATION = re.compile(r"_?\([^)]*\)")


def readable(name: str) -> str:
    """An LVIS-style class name as words: "bow_(weapon)" -> "bow", "ankle_boot" -> "ankle boot"."""
    return _DISAMBIGUATION.sub("", name).replace("_", " ").strip()
