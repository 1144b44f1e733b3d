"""Caption and synonym normalisation, shared by the fast counter and its reference.

A text becomes a sequence of tokens: Unicode NFKC, case-folded; every character that is not a
letter or digit separates tokens (so "t-shirt" is "t shirt" and "dog's" is "dog s"). Words are
kept as written: plurals are not reduced to a stem (see ``rebalance.methods.inflection`` for how a
synonym's plurals are matched instead), and "cat" never matches inside "category".
"""

from __future__ import annotations

import re
import unicodedata

_SEPARATORS = re.compile(r"[\W_]+")


def tokens(text: str) -> list[str]:
    """The normalised tokens of ``text``."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return [token for token in _SEPARATORS.split(folded) if token]


def normalize(text: str) -> str:
    """``text`` as normalised tokens joined by single spaces."""
    return " ".join(tokens(text))


_DISAMBIGUATION = re.compile(r"_?\([^)]*\)")


def readable(name: str) -> str:
    """An LVIS-style class name as words: "bow_(weapon)" -> "bow", "ankle_boot" -> "ankle boot"."""
    return _DISAMBIGUATION.sub("", name).replace("_", " ").strip()
