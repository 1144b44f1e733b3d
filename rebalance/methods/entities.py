"""Entity statistics of a captioned dataset, for ADR's data rebalancing ("From Head to Tail", Song
et al., CVPR 2025): which entities each image's own captions mention, how many images mention
each entity, and how many mention each pair of entities together (ADR's co-occurrence entities).

An entity is a named list of phrases (a class and its synonyms, or any noun phrase the user lists),
matched by the same counter as concept frequency (``rebalance.methods.frequency``): whole words, each
phrase with its plural forms. Frequencies count images, not captions: an image whose five captions
all say "dog" mentions "dog" once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rebalance.domain.text import normalize
from rebalance.errors import DataError
from rebalance.methods.counter import match_pairs
from rebalance.methods.frequency import CompiledSynonyms


@dataclasses.dataclass(frozen=True)
class EntityCounts:
    """``mentions``: per image, the positions (in ``entities``) of the entities it mentions,
    sorted; ``frequency``: images per entity; ``pairs``: (first, second, images) for every pair of
    entities mentioned together, first < second, by position."""

    entities: list[str]
    mentions: list[np.ndarray]
    frequency: np.ndarray
    pairs: pd.DataFrame


def check_entities(entities: Mapping[str, Sequence[str]], source: str) -> None:
    """An entity with no phrase, or a phrase with nothing to match, is an error naming it."""
    for entity, phrases in entities.items():
        empty = [phrase for phrase in phrases if not normalize(phrase)]
        if not phrases or empty:
            raise DataError(
                f"{source}: entity {entity!r} has an empty phrase ({empty[0]!r}); every phrase needs a word"
                if empty
                else f"{source}: entity {entity!r} lists no phrase"
            )


def count_entities(captions: pa.Array, entities: Mapping[str, Sequence[str]]) -> EntityCounts:
    """Entity mentions per image, and image counts per entity and per pair of entities.

    Args:
        captions: one string per image (null: no caption). Lines are separate captions (COCO
            gives five an image), so no phrase is matched across a line break.
        entities: entity name -> its phrases.
    """
    compiled = CompiledSynonyms.build(entities)
    names = compiled.classes
    captions = pc.fill_null(captions.cast(pa.large_string()), "")
    lines = pc.split_pattern(captions, "\n")
    line_image = np.repeat(np.arange(len(captions)), np.diff(lines.offsets.to_numpy()))
    found_lines, found = (
        match_pairs(compiled.index, lines.flatten(), compiled.groups)
        if compiled.index is not None
        else (np.zeros(0, np.int64), np.zeros(0, np.int64))
    )
    of_entity = found < len(names)  # the counter's other groups are the phrases themselves
    image_entity = np.unique(
        np.stack([line_image[found_lines[of_entity]], found[of_entity]], axis=1).reshape(-1, 2), axis=0
    )
    images, positions = image_entity[:, 0], image_entity[:, 1]
    starts = np.searchsorted(images, np.arange(len(captions) + 1))
    mentions = [positions[starts[i] : starts[i + 1]] for i in range(len(captions))]
    frequency = np.bincount(positions, minlength=len(names)).astype(np.int64)
    mentioned = pd.DataFrame({"image": images, "entity": positions})
    together = mentioned.merge(mentioned, on="image", suffixes=("_first", "_second"))
    together = together[together["entity_first"] < together["entity_second"]]
    pairs = (
        together.groupby(["entity_first", "entity_second"])
        .size()
        .rename("images")
        .reset_index()
        .rename(columns={"entity_first": "first", "entity_second": "second"})
    )
    return EntityCounts(names, mentions, frequency, pairs.astype(np.int64))


@dataclasses.dataclass(frozen=True)
class ThinningOdds:
    """Per image: ``keep`` (the probability ADR's rule keeps it; 1 for an image it never drops)
    and, for images it may drop, ``why``: their entities and pairs with their frequencies."""

    keep: np.ndarray
    why: dict[int, str]


def adr_keep_probabilities(counts: EntityCounts, tau: float, pair_tau: float) -> ThinningOdds:
    """ADR's data rebalancing on an image's caption entities.

    An image may be dropped only when every entity it mentions is over-represented (N_e > tau)
    and so is every pair of them (N_ef > pair_tau); it is then kept with probability

        p = min(1, max(tau / min_e N_e, pair_tau / min_{e,f} N_ef)),

    so its rarest entity (or pair) sets its odds, as ADR's reverse index maps an entity's
    probability back to the instances that hold it. An image that mentions a tail entity
    (N_e ≤ tau) or a tail pair, or no entity at all, has p = 1: it is always kept.
    """
    pair_images = {
        (int(a), int(b)): int(n)
        for a, b, n in counts.pairs[["first", "second", "images"]].itertuples(index=False)
    }
    keep = np.ones(len(counts.mentions))
    why = {}
    for image, mentioned in enumerate(counts.mentions):
        if not len(mentioned) or counts.frequency[mentioned].min() <= tau:
            continue
        pairs = {
            (int(a), int(b)): pair_images[int(a), int(b)]
            for i, a in enumerate(mentioned)
            for b in mentioned[i + 1 :]
        }
        if pairs and min(pairs.values()) <= pair_tau:
            continue
        odds = tau / counts.frequency[mentioned].min()
        if pairs:
            odds = max(odds, pair_tau / min(pairs.values()))
        keep[image] = min(1.0, odds)
        named = [f"{counts.entities[e]}: {counts.frequency[e]} images, tau {tau:g}" for e in mentioned]
        named += [
            f"{counts.entities[a]} + {counts.entities[b]}: {n} images, pair tau {pair_tau:g}"
            for (a, b), n in pairs.items()
        ]
        why[image] = "; ".join(named)
    return ThinningOdds(keep, why)
