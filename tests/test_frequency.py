from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rebalance.domain.text import fold_to_ascii, tokens
from rebalance.errors import DataError
from rebalance.io.wordnet import WordNet
from rebalance.methods.frequency import count_concepts, sample_matching_captions
from rebalance.methods.inflection import surface_forms

HAND_LABELLED = json.loads((Path(__file__).parent / "data" / "hand_labelled_captions.json").read_text())

SYNONYMS = {
    "cat": ["cat", "house cat"],
    "category": ["categories"],
    "t-shirt": ["T-shirt", "tee shirt"],
    "glass": ["glass", "drinking glass"],
    "bus": ["bus"],
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


def fold(text: str) -> str:
    """NFKC and case folding, then every combining mark dropped, as FTS5's ``remove_diacritics``."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    return unicodedata.normalize("NFKC", "".join(c for c in decomposed if unicodedata.category(c) != "Mn"))


def reference_counts(
    captions: list[str], synonyms: dict[str, list[str]], per_caption: bool
) -> dict[str, int]:
    """The obviously-correct reference: a regex per written form of each synonym, found at every
    place it occurs in the captions (after NFKC, case folding and removing marks) and kept where it is a whole
    word on both sides. Words are runs of letters and digits; a form's words may be separated by
    any run of other characters. The captions are searched as one text, one per line, so that each
    regex runs once in C over the corpus."""
    folded = [fold(caption).replace("\n", " ") for caption in captions]
    text = "\n".join(folded)
    starts = np.cumsum([0] + [len(caption) + 1 for caption in folded[:-1]])
    separator = r"(?:[^\w\n]|_)+"  # any non-word run within one line (caption)
    word_character = re.compile(r"[^\W_]")
    totals = {}
    for concept, listed in synonyms.items():
        mentions = []  # the caption of each mention
        for form in dict.fromkeys(form for synonym in listed for form in surface_forms(synonym)):
            pattern = re.compile(separator.join(map(re.escape, form.split(" "))) + r"(?![^\W_])")
            found = pattern.search(text)
            while found:
                if found.start() == 0 or not word_character.match(text, found.start() - 1):
                    mentions.append(int(np.searchsorted(starts, found.start(), side="right")))
                found = pattern.search(text, found.start() + 1)  # overlapping mentions too
        totals[concept] = len(set(mentions)) if per_caption else len(mentions)
    return totals


def counted(captions, synonyms: dict[str, list[str]], per_caption: bool = True) -> dict[str, int]:
    table = count_concepts(captions, synonyms, per_caption=per_caption)
    return dict(zip(table["concept"], table["count"], strict=True))


def test_the_issue_table_counts_as_it_should() -> None:
    table = {
        "a short dog": ("shorts", ["shorts"], 0),
        "a glass of water": ("eyeglasses", ["glasses"], 0),
        "a new car": ("news", ["news"], 0),
        "two buses": ("bus", ["bus"], 1),
    }
    for caption, (concept, synonyms, expected) in table.items():
        assert counted([caption], {concept: synonyms}) == {concept: expected}, caption
    assert counted(["two mice", "a mouse"], {"mouse": ["mouse"]}) == {"mouse": 2}


def test_synonyms_expand_to_their_plurals_and_plural_only_nouns_to_themselves() -> None:
    assert surface_forms("mouse") == ("mouse", "mice")
    assert surface_forms("Polar-Bear") == ("polar bear", "polar bears")
    assert surface_forms("person") == ("person", "persons", "people")
    assert surface_forms("knife")[1:] == ("knives",) and "geese" in surface_forms("goose")
    assert surface_forms("bus")[:2] == ("bus", "buses") and surface_forms("box") == ("box", "boxes")
    plural_only = ["shorts", "trousers", "jeans", "glasses", "sunglasses", "goggles", "scissors", "tongs"]
    plural_only += ["pliers", "binoculars", "pajamas", "suspenders", "overalls", "news", "dogs"]
    assert {word: surface_forms(word) for word in plural_only} == {word: (word,) for word in plural_only}
    assert surface_forms("!!") == () and surface_forms("café") == ("cafe", "cafes")
    assert tokens("Ｔ-Shirt's") == ["t", "shirt", "s"]


def test_hand_labelled_corpus_counts_as_labelled_and_equals_the_reference() -> None:
    synonyms = HAND_LABELLED["synonyms"]
    captions = [row["caption"] for row in HAND_LABELLED["captions"]]
    assert len(captions) >= 60
    for row in HAND_LABELLED["captions"]:
        expected = {concept: int(concept in row["mentions"]) for concept in synonyms}
        assert counted([row["caption"]], synonyms) == expected, row["caption"]
        assert reference_counts([row["caption"]], synonyms, True) == expected, row["caption"]
    for per_caption in (True, False):
        assert counted(captions, synonyms, per_caption) == reference_counts(captions, synonyms, per_caption)


@pytest.mark.slow
def test_counts_equal_the_reference_on_100k_real_sentences() -> None:
    data = Path(__file__).parent.parent / "data"
    cupl = pq.read_table(data / "captions" / "cupl_imagenet.parquet")
    glosses = pq.read_table(data / "wordnet" / "synsets.parquet", columns=["definition", "examples"])
    sentences = [
        *cupl["caption"].to_pylist(),
        *glosses["definition"].to_pylist(),
        *(example for examples in glosses["examples"].to_pylist() for example in examples),
    ]
    rows = np.sort(np.random.default_rng(0).choice(len(sentences), size=100_000, replace=False))
    sample = [sentences[row] for row in rows]
    wordnet = WordNet.load(data / "wordnet")
    synonyms = {  # the ImageNet classes and up to two more WordNet lemmas each
        name: list(
            dict.fromkeys([name, *(lemma for sense in wordnet.synsets(name)[:1] for lemma in sense.lemmas)])
        )[:3]
        for name in dict.fromkeys(cupl["imagenet_class"].to_pylist())
    }
    ours = counted(sample, synonyms)
    assert sum(ours.values()) > 50_000
    assert ours == reference_counts(sample, synonyms, per_caption=True)


def test_the_readme_example_prints_what_the_readme_shows() -> None:
    table = count_concepts(
        ["Two dogs and a cat", "a Puppy", "category", "a man in shorts", "a short dog"],
        {"dog": ["dog", "puppy"], "cat": ["cat"], "shorts": ["shorts"]},
    )
    assert table[["concept", "count", "top_synonym"]].values.tolist() == [
        ["dog", 3, "dog"],
        ["cat", 1, "cat"],
        ["shorts", 1, "shorts"],
    ]
    assert table["form_counts"].tolist() == [
        {"dog": 1, "dogs": 1, "puppy": 1, "puppies": 0},
        {"cat": 1, "cats": 0},
        {"shorts": 1},
    ]


def test_the_counter_reports_which_form_matched() -> None:
    row = count_concepts(["two mice", "a mouse", "mice and a mouse"], {"mouse": ["mouse", "rodent"]}).iloc[0]
    assert row["count"] == 3 and row["synonym_counts"] == {"mouse": 3, "rodent": 0}
    assert row["form_counts"] == {"mouse": 2, "mice": 2, "rodent": 0, "rodents": 0}
    assert row["top_synonym"] == "mouse"  # a tie goes to the first listed
    trousers = count_concepts(["his pants", "pants on a line"], {"trouser": ["trouser", "pant"]}).iloc[0]
    assert trousers["top_synonym"] == "pants"  # the form as the captions write it


@pytest.mark.parametrize("per_caption", [True, False])
def test_counts_equal_the_reference_on_tricky_captions(per_caption: bool) -> None:
    assert counted(TRICKY, SYNONYMS, per_caption) == reference_counts(TRICKY, SYNONYMS, per_caption)


def test_hand_checked_counts_and_report() -> None:
    table = count_concepts(TRICKY, SYNONYMS).set_index("concept")
    # captions 1, 8, 10 and 2, where "CAT-egory" splits at the hyphen; never inside "category"/"concatenate"
    assert table.loc["cat", "count"] == 4
    assert table.loc["category", "count"] == 0  # a plural synonym matches as written: "categories"
    assert table.loc["t-shirt", "synonym_counts"] == {"T-shirt": 1, "tee shirt": 1}
    assert table.loc["glass", "count"] == 1 and table.loc["bus", "top_synonym"] == "bus"
    assert table.loc["cream", "count"] == 1 and table.loc["ice cream", "count"] == 1
    assert table.loc["café", "count"] == 1 and table.loc["empty", "count"] == 0
    assert table.attrs == {"captions": len(TRICKY), "ambiguous": {}, "empty": ["empty"]}
    shared = count_concepts(["a cup", "two cups"], {"cup": ["cup"], "mug": ["mug", "cups"]})
    assert shared.attrs["ambiguous"] == {"cups": ["cup", "mug"]} and shared["count"].tolist() == [2, 1]


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
    assert dict(zip(whole["concept"], whole["count"], strict=True)) == reference_counts(
        captions, SYNONYMS, True
    )
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
    expected = reference_counts(texts, synonyms, per_caption)

    assert counted(texts, synonyms, per_caption) == expected
    whole = pa.array(["padding before", *texts, "padding after"], pa.string())
    # an offset into a shared buffer
    assert counted(whole.slice(1, len(texts)), synonyms, per_caption) == expected
    for text in texts[:200]:  # buffers shorter than one 8-byte read
        assert counted([text], synonyms, per_caption) == reference_counts([text], synonyms, per_caption)


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


def test_match_pairs_are_the_reference_pairs_even_when_captions_name_many_classes() -> None:
    from rebalance.methods.counter import match_pairs
    from rebalance.methods.frequency import CompiledSynonyms

    # Ten classes; each caption names up to eight of them, more than the two pairs a caption the
    # first pass makes room for, so chunks overflow and run again. Some captions are not ASCII.
    rng = np.random.default_rng(3)
    names = [f"thing{i}" for i in range(10)]
    synonyms = {name: [name, f"{name} box"] for name in names}
    captions = []
    for row in range(5_000):
        named = rng.choice(10, size=rng.integers(0, 9), replace=False)
        words = [f"Thing{n}" if n % 3 else f"a thing{n} box" for n in named] + ["café"] * (row % 7 == 0)
        captions.append(" and ".join(words) or "nothing here")
    compiled = CompiledSynonyms.of(synonyms)
    rows, classes = match_pairs(compiled.index, pa.array(captions, pa.large_string()), compiled.groups, 10)
    expected = {
        (row, c)
        for row, caption in enumerate(captions)
        for c, name in enumerate(names)
        if name in caption.lower().split(" ")
    }
    assert set(zip(rows.tolist(), classes.tolist(), strict=True)) == expected
    assert len(rows) == len(expected) and (classes < 10).all()


def test_diacritics_fold_as_in_fts5_so_accented_and_plain_spellings_match_each_other() -> None:
    captions = ["a bowl of consommé", "CONSOMMÉ, hot", "consomme soup", "a cafe", "Café del Mar", "naïve art"]
    table = count_concepts(captions, {"consomme": ["consomme"], "cafe": ["café"], "naive": ["naive"]})
    assert table.set_index("concept")["count"].to_dict() == {"consomme": 3, "cafe": 2, "naive": 1}
    assert tokens("Crème BRÛLÉE ｆｕｌｌ") == ["creme", "brulee", "full"]
    # Letters that are not a base letter plus a mark stay as they are.
    assert tokens("Øresund straße") == ["øresund", "strasse"]


def test_characters_that_fold_to_ascii_one_at_a_time_tokenise_as_the_whole_text_does() -> None:
    # Web captions' curly quotes, dashes, accents, ligatures, fullwidth letters and emoji.
    text = "The dog’s CAFÉ — ﬁne ｃａｔｓ 😀 naïve"
    assert fold_to_ascii(text) == "The dog s CAFe   fine cats   naive"  # folded letters are lower case
    assert tokens(fold_to_ascii(text)) == tokens(text) == ["the", "dog", "s", "cafe", "fine", "cats", "naive"]
    assert (
        fold_to_ascii("Ελλάδα") is None and fold_to_ascii("東京の猫") is None
    )  # not ASCII: normalised in full
    folding = {chr(point) for point in range(0x80, 0x20000) if fold_to_ascii(chr(point)) is not None}
    assert len(folding) > 9_000
    # Every such character between letters, digits and separators; every letter followed by a
    # combining mark (marks compose with what precedes them); and random mixtures.
    for char in sorted(folding):
        for text in (f"a{char}b", f"Z{char}9", f" {char}_", f"I{char}"):
            assert tokens(fold_to_ascii(text)) == tokens(text), ascii(text)
    marks = [char for char in folding if unicodedata.combining(char)]
    for letter in "aeiouAEIOUcnsIKzZ9":
        for mark in marks:
            text = f"{letter}{mark}x{mark}\u0338"
            assert tokens(fold_to_ascii(text)) == tokens(text), ascii(text)
    rng = np.random.default_rng(0)
    pool = np.array(sorted(folding) + list("abeiIKsStz 9_"))
    for _ in range(20_000):
        text = "".join(rng.choice(pool, size=rng.integers(1, 7)))
        assert tokens(fold_to_ascii(text)) == tokens(text), ascii(text)


@pytest.mark.slow  # three fresh interpreters
def test_written_forms_are_kept_on_disk_so_a_second_process_never_imports_inflect(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    script = (
        "import sys; from rebalance.methods.frequency import count_concepts; "
        "table = count_concepts(['two mice', 'a mouse', 'sheep'], {'mouse': ['mouse'], 'sheep': ['sheep']}); "
        "print(table['count'].tolist(), 'inflect' in sys.modules, 'lemminflect' in sys.modules)"
    )
    env = {**os.environ, "REBALANCE_FORMS_CACHE": str(tmp_path / "forms")}

    def run() -> str:
        return subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        ).stdout

    assert run().split() == ["[2,", "1]", "True", "True"]  # the first process expands and stores
    [stored] = (tmp_path / "forms").glob("*.json")
    assert json.loads(stored.read_text()) == {"mouse": ["mouse", "mice"], "sheep": ["sheep"]}
    assert run().split() == ["[2,", "1]", "False", "False"]  # the next one reads them
    stored.write_text("{not json")  # a damaged cache is recomputed and rewritten
    assert run().split() == ["[2,", "1]", "True", "True"]
    assert json.loads(stored.read_text())["mouse"] == ["mouse", "mice"]
