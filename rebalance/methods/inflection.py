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
"""

from __future__ import annotations

import functools

from rebalance.domain.text import tokens


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
