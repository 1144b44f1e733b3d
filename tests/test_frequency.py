from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from rebalance.errors import DataError
from rebalance.frequency import count_concepts, sample_matching_captions
from rebalance.text.normalize import normalize, singular, tokens

SYNONYMS = {
    "cat": ["cat", "house cat"],
    "category": ["categories"],
    "t-shirt": ["T-shirt", "tee shirt"],
    "glass": ["glass", "drinking glass"],
    "bus": ["bus", "autobus"],
    "ice cream": ["ice cream"],
    "cream": ["cream"],
    "café": ["Café"],
    "box": ["box"],
    "empty": ["!!"],
}
TRICKY = [
    "A cat sat on the category of cats.",
    "concatenate catalog CAT-egory",
    "Two T-Shirts, one tee-shirt and a TEE SHIRT",
    "glasses of water; a drinking-glass",
    "buses and a bus; the Autobuses",
    "ice cream with cream and ice-creams",
    "CAFÉ au lait at the cafés",
    "ｃａｔ in full-width letters",  # NFKC folds these to "cat"
    "boxes, box, boxing",
    "house cat house cat house",
    "",
]


def naive_counts(captions: list[str], synonyms: dict[str, list[str]], per_caption: bool) -> dict[str, int]:
    """The reference: one regex per synonym over each normalised caption."""
    patterns = {
        c: [re.compile(rf"(?<!\S)(?=({re.escape(normalize(s))})(?!\S))") for s in syns if normalize(s)]
        for c, syns in synonyms.items()
    }
    totals = {}
    for concept, compiled in patterns.items():
        total = 0
        for caption in captions:
            text = normalize(caption)
            hits = sum(len(p.findall(text)) for p in compiled)
            total += min(hits, 1) if per_caption else hits
        totals[concept] = total
    return totals


def test_singular_rules() -> None:
    pairs = {
        "categories": "category",
        "boxes": "box",
        "churches": "church",
        "dishes": "dish",
        "classes": "class",
        "dogs": "dog",
        "glass": "glass",
        "bus": "bus",
        "analysis": "analysis",
        "cat": "cat",
        "is": "is",
    }
    assert {word: singular(word) for word in pairs} == pairs
    assert all(
        singular(singular(w)) == singular(w) for w in ["buses", "series", "pies", "kisses", "abs", "yes"]
    )
    assert tokens("Ｔ-Shirt's") == ["t", "shirt", "s"]


@pytest.mark.parametrize("per_caption", [True, False])
def test_counts_equal_the_naive_regex_method_on_tricky_captions(per_caption: bool) -> None:
    table = count_concepts(TRICKY, SYNONYMS, per_caption=per_caption)
    assert dict(zip(table["concept"], table["count"], strict=True)) == naive_counts(
        TRICKY, SYNONYMS, per_caption
    )


def test_hand_checked_counts_and_report() -> None:
    table = count_concepts(TRICKY, SYNONYMS).set_index("concept")
    # captions 1, 8, 10 and 2, where "CAT-egory" splits at the hyphen; never inside "category"/"concatenate"
    assert table.loc["cat", "count"] == 4
    assert table.loc["category", "count"] == 1
    assert table.loc["t-shirt", "synonym_counts"] == {"T-shirt": 1, "tee shirt": 1}
    assert table.loc["glass", "count"] == 1 and table.loc["bus", "top_synonym"] == "bus"
    assert table.loc["cream", "count"] == 1 and table.loc["ice cream", "count"] == 1
    assert table.loc["café", "count"] == 1 and table.loc["empty", "count"] == 0
    assert table.attrs == {"captions": len(TRICKY), "ambiguous": {}, "empty": ["empty"]}
    shared = count_concepts(["a cup"], {"cup": ["cup"], "mug": ["mug", "cups"]})
    assert shared.attrs["ambiguous"] == {"cup": ["cup", "mug"]} and shared["count"].tolist() == [1, 1]


def test_random_corpus_matches_naive_and_batching_does_not_matter() -> None:
    rng = np.random.default_rng(0)
    words = [
        "cat",
        "cats",
        "house",
        "glass",
        "glasses",
        "drinking",
        "ice",
        "cream",
        "box",
        "boxes",
        "the",
        "a",
        "shirt",
        "tee",
        "t",
    ]
    captions = [" ".join(rng.choice(words, size=rng.integers(0, 12))) for _ in range(3000)]
    whole = count_concepts(captions, SYNONYMS)
    assert dict(zip(whole["concept"], whole["count"], strict=True)) == naive_counts(captions, SYNONYMS, True)
    streamed = count_concepts(iter(captions), SYNONYMS, batch_size=7)
    assert whole["count"].tolist() == streamed["count"].tolist()
    arrow = count_concepts(pa.chunked_array([captions[:1000], captions[1000:]]), SYNONYMS)
    assert whole["count"].tolist() == arrow["count"].tolist()


def test_bad_input_is_an_error_not_a_wrong_count() -> None:
    with pytest.raises(DataError, match="caption 2 is a int"):
        count_concepts(["a cat", "a dog", 7], SYNONYMS)
    with pytest.raises(DataError, match="null"):
        count_concepts(pa.array(["a cat", None]), SYNONYMS)
    empty = count_concepts([], SYNONYMS)
    assert empty["count"].sum() == 0 and empty.attrs["captions"] == 0


def _adversarial_corpus(rng: np.random.Generator, captions: int) -> tuple[list[str], dict[str, list[str]]]:
    """Tokens of 1 to 70 bytes (one 8-byte read, several, past the 56-bit window), long plurals,
    separator runs longer than the window, upper case, non-ASCII text and three-word phrases."""
    letters = np.array(list("abcdefghiy"))
    stems = ["".join(rng.choice(letters, size=int(n))) for n in rng.integers(1, 70, size=60)]
    forms = [*stems, *(s + "s" for s in stems[:20]), *(s + "ies" for s in stems[20:30])]
    forms += [s.upper() for s in stems[30:40]] + ["café", "naïveté", "xes", "boxes", "puppies", "Ponies"]
    synonyms = {
        f"c{i}": [stems[i], f"{stems[i + 1]} {stems[i + 2]}", f"{stems[i]} {stems[i + 3]} {stems[i + 4]}"]
        for i in range(0, 50, 5)
    }
    synonyms["shared"] = [stems[0], "café"]  # ambiguous with c0, and non-ASCII
    synonyms["plural"] = [s + "ies" for s in stems[20:30]] + [s.upper() + "S" for s in stems[:5]]
    synonyms["young"] = ["puppy", "ponies", "box"]
    separators = [" ", "  ", ", ", "-", "_", " " * 60, "!" * 90, "\t"]
    texts = []
    for _ in range(captions):
        words = rng.choice(forms, size=rng.integers(0, 9))
        text = ""
        for word in words:
            text += str(rng.choice(separators)) + word
        texts.append(text + str(rng.choice(separators)) if rng.random() < 0.3 else text)
    return texts, synonyms


@pytest.mark.parametrize("per_caption", [True, False])
def test_adversarial_tokens_match_naive_in_slices_and_tiny_buffers(per_caption: bool) -> None:
    texts, synonyms = _adversarial_corpus(np.random.default_rng(1), 1500)
    expected = naive_counts(texts, synonyms, per_caption)

    def counted(captions: object) -> dict[str, int]:
        table = count_concepts(captions, synonyms, per_caption=per_caption)
        return dict(zip(table["concept"], table["count"], strict=True))

    assert counted(texts) == expected
    whole = pa.array(["padding before", *texts, "padding after"], pa.string())
    assert counted(whole.slice(1, len(texts))) == expected  # an offset into a shared buffer
    for text in texts[:200]:  # buffers shorter than one 8-byte read
        assert counted([text]) == naive_counts([text], synonyms, per_caption)


def test_nested_phrases_in_a_very_long_caption_are_all_counted() -> None:
    # Every token starts four phrases: matches far outnumber the caption's tokens.
    caption = " ".join(["a"] * 40_000)
    synonyms = {"run": ["a", "a a", "a a a", "a a a a"]}
    every = count_concepts([caption], synonyms, per_caption=False).iloc[0]
    assert every["count"] == 40_000 + 39_999 + 39_998 + 39_997
    assert every["synonym_counts"] == {"a": 40_000, "a a": 39_999, "a a a": 39_998, "a a a a": 39_997}
    assert count_concepts([caption], synonyms)["count"].tolist() == [1]


def test_sampled_matching_captions_include_unicode_ones_and_only_matches() -> None:
    captions = ["a cat", "a dog", "Café cats", "naïve dog", "catalog", "the CAT's café"]
    synonyms = {"cat": ["cat"], "dog": ["dog"], "cafe": ["café"], "bird": ["bird"]}
    sampled = sample_matching_captions(captions, synonyms, per_concept=10)
    assert {concept: sorted(texts) for concept, texts in sampled.items()} == {
        "cat": ["Café cats", "a cat", "the CAT's café"],
        "dog": ["a dog", "naïve dog"],
        "cafe": ["Café cats", "the CAT's café"],
        "bird": [],
    }
    assert len(sample_matching_captions(captions, synonyms, per_concept=1)["cat"]) == 1
