"""Caption and synonym normalisation, shared by the fast counter and its reference.

A text becomes a sequence of tokens: Unicode NFKC, case-folded, diacritics removed; every
character that is not a letter or digit separates tokens (so "t-shirt" is "t shirt" and "dog's" is
"dog s").

Diacritics fold ("consommé" mentions consomme, "Café" is "cafe"), as a user searching English
web captions expects and as SQLite FTS5's ``remove_diacritics`` (REAL's own matcher) does: web
text spells the same word with and without its accents. The price is that words told apart only
by a mark become one ("año" and "ano"); captions in such languages need their own synonyms. Words are
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
    if not folded.isascii():
        decomposed = unicodedata.normalize("NFKD", folded)
        stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
        folded = unicodedata.normalize("NFKC", stripped)
    return [token for token in _SEPARATORS.split(folded) if token]


def normalize(text: str) -> str:
    """``text`` as normalised tokens joined by single spaces."""
    return " ".join(tokens(text))


_DISAMBIGUATION = re.compile(r"_?\([^)]*\)")


def readable(name: str) -> str:
    """An LVIS-style class name as words: "bow_(weapon)" -> "bow", "ankle_boot" -> "ankle boot"."""
    return _DISAMBIGUATION.sub("", name).replace("_", " ").strip()
