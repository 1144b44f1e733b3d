"""The written forms a synonym can take in a caption: itself and the plurals of its head noun.

Captions are matched as written (``rebalance.domain.text``), never singularised: reducing both
sides to a crude stem made "a short dog" mention shorts and "a glass of water" mention glasses.
Instead each synonym is expanded here, once, to the forms that name the same thing:

- the synonym itself, then the plurals of its head noun (its last word): "polar bear" ->
  "polar bears", "mouse" -> "mice", "bus" -> "buses", "person" -> "persons", "people";
- a synonym that is already plural as written ("shorts", "glasses", "scissors", "jeans", or a
  plural the user listed, such as "dogs") matches only itself, so "shorts" never matches "short".

Plurals come from two well-kept libraries, because neither alone has them all: lemminflect's
lexicon (built from corpus data; "cacti", "octopi", "busses") misses some irregular plurals that
inflect's rules have ("people", "oxen"), and inflect alone spells plural-only nouns wrongly
("shortss").

Expanding a thousand classes' synonyms takes seconds, most of it importing the two libraries, and
every process that counts (each dask worker) would pay it again. ``written_forms`` keeps each
synonym set's forms on disk instead, keyed by the set and both libraries' versions, so the
libraries are imported only by the first process that meets a set.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from rebalance.domain.text import tokens

# Bump when surface_forms or the normalisation changes what a synonym's forms are.
FORMS_VERSION = 2


@functools.cache
def _engines():
    import inflect
    import lemminflect

    return inflect.engine(), lemminflect


def is_plural_as_written(noun: str) -> bool:
    """Whether ``noun`` (lower case) is a plural as written: a plural-only noun ("scissors",
    "jeans", "shorts") or the plural of another noun ("dogs"); nouns whose plural is themselves
    ("sheep", "series", "news") count too, since they have no other form to add."""
    engine, lemminflect = _engines()
    lemmas = lemminflect.getAllLemmas(noun, upos="NOUN").get("NOUN")
    if lemmas is None:  # not in lemminflect's lexicon ("café"): inflect's rules decide
        return bool(engine.singular_noun(noun))
    if noun not in lemmas:
        return True  # "dogs", "shorts", "pants": the lemma is another word
    return lemminflect.getAllInflections(noun, upos="NOUN").get("NNS") == (noun,)  # "jeans", "sheep"


def plurals(noun: str) -> list[str]:
    """The plurals of the singular ``noun`` (lower case), regular and irregular, in a fixed order."""
    engine, lemminflect = _engines()
    found = [*lemminflect.getInflection(noun, tag="NNS"), engine.plural_noun(noun) or ""]
    return [form for form in dict.fromkeys(found) if form and form != noun and " " not in form]


@functools.cache  # a pure function of the synonym, asked again for every corpus shard counted
def surface_forms(synonym: str) -> tuple[str, ...]:
    """The normalised phrases (``rebalance.domain.text``) that count as a mention of ``synonym``:
    the synonym first, then the plurals of its last word, or only itself when that word is
    already plural as written. Empty when nothing of the synonym is left after normalisation."""
    words = tokens(synonym)
    if not words:
        return ()
    *modifiers, head = words
    forms = [" ".join(words)]
    if head.isalpha() and not is_plural_as_written(head):
        forms += [" ".join([*modifiers, plural]) for plural in plurals(head)]
    return tuple(forms)


def forms_cache_dir() -> Path:
    """Where synonym sets' forms are kept: ``$REBALANCE_FORMS_CACHE``, else the user's cache
    (``$XDG_CACHE_HOME/rebalance/forms``, ``~/.cache/rebalance/forms``)."""
    if folder := os.environ.get("REBALANCE_FORMS_CACHE"):
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rebalance" / "forms"


def written_forms(synonyms: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``surface_forms`` of every synonym, read from the on-disk cache when this set was expanded
    before (by any process), else computed and stored there. A cache that cannot be read or
    written is skipped: the forms are computed as if it were empty."""
    unique = sorted(set(synonyms))
    versions = [metadata.version("inflect"), metadata.version("lemminflect"), FORMS_VERSION]
    key = hashlib.sha256(json.dumps([versions, unique]).encode()).hexdigest()[:32]
    path = forms_cache_dir() / f"{key}.json"
    try:
        stored = json.loads(path.read_text())
        if sorted(stored) == unique:
            return {synonym: tuple(forms) for synonym, forms in stored.items()}
    except (OSError, ValueError):
        pass
    found = {synonym: surface_forms(synonym) for synonym in unique}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Temp file and rename: a reader never sees half a file, and two writers agree anyway.
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-forms-")
        with os.fdopen(handle, "w") as stream:
            json.dump(found, stream)
        os.replace(temp, path)
    except OSError:
        pass
    return found
