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

import functools
import re
import unicodedata

_SEPARATORS = re.compile(r"[\W_]+")
_WORD = re.compile(r"\w")
# Where web captions' non-ASCII characters mostly lie: Latin letters with marks, combining marks,
# punctuation, symbols, ligatures, fullwidth forms, emoji and tags.
_FOLDED_RANGES = ((0x80, 0x3000), (0xFB00, 0xFB07), (0xFE00, 0x10000), (0x1F000, 0x1FB00), (0xE0000, 0xE0080))


def tokens(text: str) -> list[str]:
    """The normalised tokens of ``text``."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    if not folded.isascii():
        folded = _without_marks(folded)
    return [token for token in _SEPARATORS.split(folded) if token]


def normalize(text: str) -> str:
    """``text`` as normalised tokens joined by single spaces."""
    return " ".join(tokens(text))


def fold_to_ascii(text: str) -> str | None:
    """``text`` with every non-ASCII character replaced by ASCII that tokenises the same
    (``tokens(fold_to_ascii(t)) == tokens(t)``), or None when a character does not fold to ASCII
    (Greek or CJK letters, say). ``str.translate`` runs at C speed, where ``tokens`` costs ~20 µs
    a caption: web captions' curly quotes, dashes, accents and emoji stay on the fast path."""
    folded = text.translate(_ascii_folding())
    return folded if folded.isascii() else None


@functools.cache
def _ascii_folding() -> dict[int, str]:
    """Each character of ``_FOLDED_RANGES`` that normalises, on its own, to ASCII and separators:
    what it becomes, separators written as spaces. Characters compose with their neighbours only
    through combining marks, which normalisation removes, so character by character is the same
    as the whole text (tests check every character in context, letter-mark pairs, and pairs)."""
    table = {}
    for first, stop in _FOLDED_RANGES:
        for point in range(first, stop):
            folded = _without_marks(unicodedata.normalize("NFKC", chr(point)).casefold())
            if all(char.isascii() or not _WORD.match(char) for char in folded):
                table[point] = "".join(char if char.isascii() else " " for char in folded)
    return table


def _without_marks(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize(
        "NFKC", "".join(char for char in decomposed if not unicodedata.combining(char))
    )


_DISAMBIGUATION = re.compile(r"_?\([^)]*\)")


def readable(name: str) -> str:
    """An LVIS-style class name as words: "bow_(weapon)" -> "bow", "ankle_boot" -> "ankle boot"."""
    return _DISAMBIGUATION.sub("", name).replace("_", " ").strip()
