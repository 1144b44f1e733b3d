"""Concept-frequency steps (REAL): mine synonyms per class, count them in a caption corpus, mark the tail."""

from __future__ import annotations

import json
import math
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import NonNegativeInt, PositiveInt, confloat

from rebalance.core.registry import InputPath, ModelRef, step
from rebalance.domain.artifacts import (
    CaptionCorpus,
    ConceptCounts,
    ConceptFrequency,
    EntityStatistics,
    LabeledDataset,
    Synonyms,
)
from rebalance.domain.text import readable
from rebalance.errors import DataError, did_you_mean
from rebalance.io.wordnet import Synset, WordNet
from rebalance.methods.inflection import written_forms


@step("mine_synonyms", role="describes")
def mine_synonyms(
    dataset: LabeledDataset,
    *,
    user_synonyms: InputPath | None = None,
    wordnet: InputPath | None = None,
    wordnet_senses: PositiveInt = 1,
    include_name: bool = True,
) -> Synonyms:
    """Collect each class's synonyms: its name, the dataset's own synonyms (LVIS), WordNet, a user list.

    WordNet (the copy in data/wordnet, or /usr/share/wordnet from Debian's wordnet-base) adds the
    lemmas of the class's synset when the dataset names one (LVIS ``synset``), else of the first
    wordnet_senses noun senses of its name. user_synonyms is a JSON object {class name: [phrases]};
    an unknown class name is an error with a did-you-mean. Names lose LVIS disambiguators
    ("bow_(weapon)" -> "bow"); a phrase that is a written form of one kept before it is dropped
    ("Bananas" after "banana").
    The table also keeps each class's definition (the dataset's, else WordNet's).
    """
    names = dataset.class_names()
    extra: dict[str, list[str]] = {}
    if user_synonyms is not None:
        try:
            extra = json.loads(user_synonyms.read_text())
        except json.JSONDecodeError as error:
            raise DataError(f"{user_synonyms}: malformed JSON at line {error.lineno}: {error.msg}") from None
        if not isinstance(extra, dict) or not all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in extra.values()
        ):
            raise DataError(
                f"{user_synonyms}: expected a JSON object mapping class names to lists of phrases"
            )
        unknown = [k for k in extra if k not in names]
        if unknown:
            raise DataError(
                f"{user_synonyms}: unknown class {unknown[0]!r} ({did_you_mean(unknown[0], names)})"
            )
    lexicon = WordNet.load(wordnet) if wordnet is not None else None
    categories = dataset.categories.to_pylist()
    listed = []
    for category, name in zip(categories, names, strict=True):
        senses = _wordnet_senses(lexicon, category, name, wordnet_senses)
        definition = category["definition"] or (senses[0].definition if senses else None)
        candidates = (
            ([readable(name)] if include_name else [])
            + [readable(s) for s in category["synonyms"] or []]
            + [lemma for sense in senses for lemma in sense.lemmas]
            + extra.get(name, [])
        )
        listed.append((category, name, definition, candidates))
    forms_of = written_forms(phrase for *_, candidates in listed for phrase in candidates)
    rows = []
    for category, name, definition, candidates in listed:
        covered, kept = set(), []
        for phrase in candidates:
            forms = forms_of[phrase]
            if forms and forms[0] not in covered:
                covered.update(forms)
                kept.append(phrase)
        rows.append(
            {
                "category_id": category["category_id"],
                "concept": name,
                "synonyms": kept,
                "definition": definition,
            }
        )
    schema = pa.schema(
        [
            ("category_id", pa.int64()),
            ("concept", pa.string()),
            ("synonyms", pa.list_(pa.string())),
            ("definition", pa.string()),
        ]
    )
    return Synonyms(pa.Table.from_pylist(rows, schema=schema))


def _wordnet_senses(lexicon: WordNet | None, category: dict, name: str, count: int) -> list[Synset]:
    if lexicon is None:
        return []
    if category["synset"]:
        named = lexicon.synset(category["synset"])
        return [named] if named is not None else []
    return lexicon.synsets(readable(name))[:count]


@step("caption_corpus", role="reads")
def caption_corpus(*, captions: InputPath, column: str = "caption") -> CaptionCorpus:
    """List a caption corpus (parquet, JSON lines, text, saved HF dataset, or a folder of them) as
    pieces that ``count_captions`` counts shard by shard: parquet row groups, or whole files."""
    from rebalance.io.captions import caption_pieces

    pieces = caption_pieces(captions)
    columns = {name: [piece[i] for piece in pieces] for i, name in enumerate(("file", "row_group", "rows"))}
    schema = pa.schema([("file", pa.string()), ("row_group", pa.int64()), ("rows", pa.int64())])
    return CaptionCorpus(pa.table(columns, schema=schema), column)


@step("count_captions", shardable=True, role="describes")
def count_captions(
    corpus: CaptionCorpus,
    synonyms: Synonyms,
    *,
    per_caption: bool = True,
    batch_rows: PositiveInt = 1_000_000,
) -> ConceptCounts:
    """Count the captions that mention each class by any synonym; runs per corpus shard on the executor.

    The same counter as ``concept_frequency`` (``rebalance.methods.frequency.count_concepts``); shard counts
    add up to the count over the whole corpus. Feed the result to ``concept_frequency`` (``counts``).
    """
    from rebalance.io.captions import iter_piece

    def captions():
        for piece in corpus.pieces.to_pylist():
            yield from iter_piece(piece["file"], piece["row_group"], corpus.column, batch_rows)

    return _count(synonyms, captions(), per_caption)


@step("concept_frequency", role="describes")
def concept_frequency(
    synonyms: Synonyms,
    counts: ConceptCounts | None = None,
    *,
    captions: InputPath | None = None,
    column: str = "caption",
    per_caption: bool = True,
    tail_quantile: confloat(gt=0, lt=1) = 0.2,
    head_quantile: confloat(gt=0, lt=1) = 0.2,
    batch_rows: PositiveInt = 1_000_000,
) -> ConceptFrequency:
    """Count the captions that mention each class (any synonym), REAL-style, and mark the tail.

    Counts come from ``captions`` (read here, streamed in batches of batch_rows) or from
    ``counts`` (``count_captions``, sharded over the executor for large corpora).
    frequency = count / captions read. The tail is the ceil(tail_quantile · C) classes with the
    fewest mentions (REAL uses the bottom 20%); buckets: rare = tail, frequent = the
    ceil(head_quantile · C) most mentioned, common = the rest. top_synonym is each class's most
    frequent written form of a synonym, as the captions spell it (REAL-Prompt's class name, e.g.
    "trousers" for the synonym "trouser"; ties to the first listed).
    """
    from rebalance.io.captions import iter_captions

    if (counts is None) == (captions is None):
        raise DataError(
            "concept_frequency needs exactly one of `captions` (a corpus path) or the `counts` input"
        )
    if counts is None:
        counts = _count(synonyms, iter_captions(captions, column, batch_rows), per_caption)
    if counts.summary["captions"] == 0:
        raise DataError(f"{captions or 'the counted corpus'}: the caption corpus is empty")
    by_form = [json.loads(value) for value in counts.table["form_counts"].to_pylist()]
    table = counts.table.select(["category_id", "concept", "count"]).append_column(
        "top_synonym", pa.array([max(c, key=c.get) if c else None for c in by_form], pa.string())
    )
    for column in ("synonym_counts", "form_counts"):
        table = table.append_column(column, counts.table[column])
    return with_tail(table, "count", counts.summary, tail_quantile, head_quantile)


def _count(synonyms: Synonyms, captions, per_caption: bool) -> ConceptCounts:
    from rebalance.methods.frequency import count_concepts

    names = synonyms.table["concept"].to_pylist()
    mapping = synonyms.mapping()
    counted = count_concepts(captions, mapping, per_caption=per_caption)
    table = pa.table(
        {
            "category_id": synonyms.table["category_id"],
            "concept": names,
            "count": pa.array(counted["count"].to_numpy(), pa.int64()),
            "synonym_counts": [json.dumps(c) for c in counted["synonym_counts"]],
            "form_counts": [json.dumps(c) for c in counted["form_counts"]],
        }
    )
    summary = {
        "ambiguous_synonyms": counted.attrs["ambiguous"],
        "classes_without_synonyms": counted.attrs["empty"],
        "per_caption": per_caption,
    }
    return ConceptCounts(table, {"captions": int(counted.attrs["captions"]), **summary})


def with_tail(
    table: pa.Table, count_column: str, summary: dict, tail_quantile: float, head_quantile: float
) -> ConceptFrequency:
    """Add frequency, tail and bucket columns from ``count_column``, and the rank plot."""
    from rebalance.report.plots import concept_frequency as plot

    names = table["concept"].to_pylist()
    counts = table[count_column].to_numpy()
    order = np.argsort(counts, kind="stable")
    tail = np.zeros(len(counts), dtype=bool)
    tail[order[: math.ceil(tail_quantile * len(counts))]] = True
    head = np.zeros(len(counts), dtype=bool)
    head[order[len(counts) - math.ceil(head_quantile * len(counts)) :]] = True
    head &= ~tail
    buckets = ["rare" if t else "frequent" if h else "common" for t, h in zip(tail, head, strict=True)]
    for name, values in (
        ("frequency", pa.array(counts / summary["captions"], pa.float64())),
        ("tail", pa.array(tail)),
        ("bucket", pa.array(buckets)),
    ):
        table = (
            table.set_column(table.schema.get_field_index(name), name, values)
            if name in table.column_names
            else table.append_column(name, values)
        )
    summary = {
        **summary,
        "classes_never_mentioned": [n for n, c in zip(names, counts, strict=True) if c == 0],
        "tail": [n for n, t in zip(names, tail, strict=True) if t],
    }
    return ConceptFrequency(table, summary, plot(names, counts, tail))


@step("llm_filter", role="describes")
def llm_filter(
    frequency: ConceptFrequency,
    synonyms: Synonyms,
    *,
    captions: InputPath,
    model: ModelRef,
    column: str = "caption",
    max_checked: PositiveInt = 1000,
    enough_positives: PositiveInt | None = None,
    threshold: confloat(gt=0, lt=1) = 0.5,
    tail_quantile: confloat(gt=0, lt=1) = 0.2,
    head_quantile: confloat(gt=0, lt=1) = 0.2,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    batch_rows: PositiveInt = 1_000_000,
    seed: NonNegativeInt = 0,
) -> ConceptFrequency:
    """REAL's LLM filter: ask a causal LM whether sampled matching captions really mean the class.

    For each class, up to max_checked captions that match its synonyms are drawn uniformly
    (seeded); the model (transformers, by hub name or local path) answers Yes/No given the class
    name and definition; judging a class stops early once enough_positives answers were Yes (REAL
    checks ≥ 1000 or stops at enough positives). estimated_count = count × yes_ratio over the
    captions checked, and the tail and buckets are recomputed on it. Classes with no match keep 0.
    """
    from rebalance.io.captions import iter_captions
    from rebalance.methods.frequency import sample_matching_captions
    from rebalance.models.judge import PROMPT, load_judge

    names = synonyms.table["concept"].to_pylist()
    if frequency.table["concept"].to_pylist() != names:
        raise DataError(
            "the frequency table and the synonyms list different classes; wire both from the same mine_synonyms step"
        )
    mapping = synonyms.mapping()
    definitions = dict(zip(names, synonyms.table["definition"].to_pylist(), strict=True))
    samples = sample_matching_captions(
        iter_captions(captions, column, batch_rows), mapping, per_concept=max_checked, seed=seed
    )
    judge = load_judge(model, device)
    checked, ratios = [], []
    for name in names:
        prompts = [
            PROMPT.format(concept=readable(name), definition=definitions[name] or readable(name), caption=c)
            for c in samples[name]
        ]
        answers: list[bool] = []
        for start in range(0, len(prompts), judge.batch_size):
            answers += (judge.yes_probability(prompts[start : start + judge.batch_size]) > threshold).tolist()
            if enough_positives is not None and sum(answers) >= enough_positives:
                break
        checked.append(len(answers))
        ratios.append(sum(answers) / len(answers) if answers else 1.0)
    counts = frequency.table["count"].to_numpy()
    estimated = np.round(counts * np.array(ratios)).astype(np.int64)
    table = frequency.table.select(
        ["category_id", "concept", "count", "top_synonym", "synonym_counts", "form_counts"]
    )
    table = table.append_column("checked", pa.array(checked, pa.int64()))
    table = table.append_column("yes_ratio", pa.array(ratios, pa.float64()))
    table = table.append_column("estimated_count", pa.array(estimated, pa.int64()))
    summary = {
        **frequency.summary,
        "llm": {
            "model": model,
            "max_checked": max_checked,
            "enough_positives": enough_positives,
            "threshold": threshold,
        },
    }
    return with_tail(table, "estimated_count", summary, tail_quantile, head_quantile)


@step("entity_statistics", role="describes")
def entity_statistics(
    dataset: LabeledDataset,
    synonyms: Synonyms | None = None,
    *,
    entities: InputPath | None = None,
    caption_column: str = "caption",
) -> EntityStatistics:
    """ADR's entity statistics from the dataset's own captions: which entities each image's captions
    mention, how many images mention each entity, and each pair of entities together.

    Entities are the classes with their synonyms (the ``synonyms`` input), or the phrases in
    ``entities``: a JSON list of noun phrases (each its own entity) or an object {entity:
    [phrases]}. Phrases match as in ``concept_frequency`` (whole words, with their plurals).
    Captions come from ``caption_column`` (see the ingest steps' ``captions``); an image's lines
    are separate captions. Feed the result to ``entity_thinning`` (input ``statistics``).
    """
    from rebalance.methods.entities import check_entities, count_entities

    if (synonyms is None) == (entities is None):
        raise DataError("entity_statistics needs exactly one of the `synonyms` input or an `entities` file")
    listed = _entity_file(entities) if entities is not None else synonyms.mapping()
    check_entities(listed, str(entities or "the synonyms input"))
    if caption_column not in dataset.images.column_names:
        raise DataError(
            f"the dataset has no {caption_column!r} column: ingest it with `captions` (a captions "
            "file for an image folder, COCO captions JSON for ingest_coco), or name the column"
        )
    counts = count_entities(dataset.images[caption_column].combine_chunks(), listed)
    names = pa.array(counts.entities, pa.string())
    mentions = pa.ListArray.from_arrays(
        np.cumsum([0] + [len(m) for m in counts.mentions]),
        names.take(pa.array(np.concatenate([np.zeros(0, np.int64), *counts.mentions]))),
    )
    captioned = int(pc.sum(pc.invert(pc.is_null(dataset.images[caption_column]))).as_py() or 0)
    return EntityStatistics(
        entities=pa.table(
            {
                "entity": names,
                "phrases": pa.array([list(listed[name]) for name in counts.entities], pa.list_(pa.string())),
                "images": pa.array(counts.frequency, pa.int64()),
            }
        ),
        pairs=pa.table(
            {
                "first": names.take(pa.array(counts.pairs["first"].to_numpy())),
                "second": names.take(pa.array(counts.pairs["second"].to_numpy())),
                "images": pa.array(counts.pairs["images"].to_numpy(), pa.int64()),
            }
        ),
        mentions=pa.table({"image_id": dataset.images["image_id"], "entities": mentions}),
        summary={"images": dataset.num_rows, "captioned_images": captioned},
    )


def _entity_file(path) -> dict[str, list[str]]:
    try:
        listed = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: malformed JSON at line {error.lineno}: {error.msg}") from None
    if isinstance(listed, list) and all(isinstance(phrase, str) for phrase in listed):
        return {phrase: [phrase] for phrase in listed}
    if isinstance(listed, dict) and all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in listed.values()
    ):
        return listed
    raise DataError(
        f"{path}: expected a JSON list of phrases or an object mapping entities to lists of phrases"
    )
