from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from rebalance.errors import DataError
from rebalance.methods.entities import adr_keep_probabilities, check_entities, count_entities

ENTITIES = {"dog": ["dog", "puppy"], "cat": ["cat"], "bird": ["bird"], "bear": ["bear"]}
CAPTIONS = pa.array(
    [
        "a dog and a cat",  # 0
        "two dogs\nA puppy on grass",  # 1: two captions, one image: dog once
        None,  # 2: no caption
        "a polar bear",  # 3
        "cats",  # 4
        "a dog, a cat and a bird",  # 5
        "a cat\ndog",  # 6: "cat dog" spans a line break, but each word is its own mention
    ]
)


def test_entity_frequencies_count_images_and_pairs_by_hand() -> None:
    counts = count_entities(CAPTIONS, ENTITIES)
    assert [m.tolist() for m in counts.mentions] == [[0, 1], [0], [], [3], [1], [0, 1, 2], [0, 1]]
    assert counts.frequency.tolist() == [4, 4, 1, 1]  # dog: images 0 1 5 6; cat: 0 4 5 6
    assert counts.pairs.values.tolist() == [[0, 1, 3], [0, 2, 1], [1, 2, 1]]


def test_a_phrase_never_matches_across_two_captions_of_one_image() -> None:
    counts = count_entities(pa.array(["a polar\nbear", "a polar bear"]), {"polar bear": ["polar bear"]})
    assert [m.tolist() for m in counts.mentions] == [[], [0]]


def test_adr_keep_probabilities_by_hand() -> None:
    counts = count_entities(CAPTIONS, ENTITIES)
    odds = adr_keep_probabilities(counts, tau=2, pair_tau=2)
    # image 0: dog 4 > 2, cat 4 > 2, dog+cat 3 > 2: p = max(2/4, 2/3); image 1: dog only, p = 2/4;
    # image 5 mentions bird (1 ≤ 2): a tail entity, always kept; images 2 (no caption) and 3 too.
    assert odds.keep.tolist() == pytest.approx([2 / 3, 0.5, 1, 1, 0.5, 1, 2 / 3])
    assert odds.why[0] == "dog: 4 images, tau 2; cat: 4 images, tau 2; dog + cat: 3 images, pair tau 2"
    assert set(odds.why) == {0, 1, 4, 6}
    # A rare pair protects the image even when both entities are frequent.
    assert adr_keep_probabilities(counts, tau=2, pair_tau=3).keep[[0, 6]].tolist() == [1, 1]


def test_empty_entities_are_errors_naming_them() -> None:
    with pytest.raises(DataError, match="entity 'dog' has an empty phrase"):
        check_entities({"dog": ["dog", "  "]}, "entities.json")
    with pytest.raises(DataError, match="entity 'cat' lists no phrase"):
        check_entities({"cat": []}, "entities.json")
    assert np.array_equal(count_entities(pa.array(["x"], pa.string()), {"a": ["a"]}).frequency, [0])
