"""Retrieval by caption, as REAL retrieves (see ``rebalance.methods.caption_retrieval``): list the
pool's captions in place, sample the captions that name each class below its target, rank and
filter them, then join the chosen rows' images back by key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import NonNegativeInt, PositiveInt, confloat

from rebalance.core.device import Device
from rebalance.core.registry import InputPath, ModelRef, step
from rebalance.domain.artifacts import ConceptFrequency, LabeledDataset, Synonyms
from rebalance.domain.artifacts.captions import (
    CANDIDATE_SCHEMA,
    OWN_TABLE,
    CaptionCandidates,
    CaptionPool,
    CaptionRetrieval,
    bottom_k,
    file_codes,
    filter_rows,
)
from rebalance.domain.artifacts.vectors import unit_rows
from rebalance.domain.classes import Target, balance_quotas, concept_tail, freeze_buckets
from rebalance.domain.prompts import DEFAULT_TEMPLATES, class_prompt_names
from rebalance.errors import DataError
from rebalance.io.caption_pool import (
    PIECE_SCHEMA,
    iter_piece_captions,
    metadata_pieces,
    read_ahead,
    read_rows,
    read_units,
    read_vectors,
)
from rebalance.methods.caption_retrieval import (
    MultiClass,
    batch_candidates,
    choose,
    matched_form,
    sample_thresholds,
)
from rebalance.methods.frequency import CompiledSynonyms
from rebalance.models.encoders import MINILM, EncoderSpec, load_encoder, prompt_ensemble, text_queries

OWN_PIECE_ROWS = 100_000
# REAL keeps 500 images a class; LAION's own CLIP-score filter keeps pairs at or above 0.25.
REAL_PER_CLASS = 500
LAION_MIN_T2I = 0.25


@step("caption_pool", role="reads")
def caption_pool(
    pool: LabeledDataset | None = None,
    *,
    root: InputPath | None = None,
    caption_column: str = "caption",
    key_column: str = "key",
    url_column: str | None = "url",
    vectors: bool = False,
    encoder: str | None = None,
) -> CaptionPool:
    """A pool's captions for ``caption_candidates``: metadata files read in place, or an ingested pool.

    ``root``: parquet metadata (LAION's ``metadata/*.parquet`` with ``url``, ``caption``, ``key``,
    or any folder of parquet files); with ``vectors``, ``root`` is in the clip-retrieval layout and
    ``img_emb/img_emb_<i>.npy`` holds each metadata file's image vectors, row for row, made by
    ``encoder`` (e.g. ``open_clip:ViT-B-32@laion2b_s34b_b79k``): ``rank_captions`` filters by
    prompt-to-image similarity with them. Only the list of row groups is stored: captions and
    vectors are read where they lie, and a changed file reruns every step that read it.
    ``pool``: an ingested pool (e.g. ``ingest_webdataset``); its ``key`` (else ``image_id``),
    ``caption`` and ``url`` are kept.
    """
    if (pool is None) == (root is None):
        raise DataError("caption_pool needs exactly one of the `pool` input or a `root` folder of metadata")
    if vectors and not encoder:
        raise DataError(
            "vectors: true needs `encoder`, the model that made img_emb (e.g. open_clip:ViT-B-32@laion2b_s34b_b79k)"
        )
    if root is not None:
        columns = {"caption": caption_column, "key": key_column, "url": url_column}
        return CaptionPool(
            metadata_pieces(root, [name for name in columns.values() if name], vectors),
            columns,
            encoder if vectors else None,
        )
    images = pool.images
    if caption_column not in images.column_names:
        raise DataError(
            f"the pool has no {caption_column!r} column (columns: {images.column_names}); ingest it with captions"
        )
    table = pa.table(
        {
            "key": (images[key_column] if key_column in images.column_names else images["image_id"]).cast(
                pa.string()
            ),
            "caption": images[caption_column].cast(pa.large_string()).fill_null(""),
            "url": images[url_column]
            if url_column in images.column_names
            else pa.nulls(pool.num_rows, pa.string()),
        }
    )
    starts = np.arange(0, pool.num_rows, OWN_PIECE_ROWS)
    pieces = pa.table(
        {
            "file": [OWN_TABLE] * len(starts),
            "row_group": np.arange(len(starts)),
            "first_row": starts,
            "rows": np.minimum(OWN_PIECE_ROWS, pool.num_rows - starts),
            "vectors": pa.nulls(len(starts), pa.string()),
        },
        schema=PIECE_SCHEMA,
    )
    return CaptionPool(pieces, {"caption": "caption", "key": "key", "url": "url"}, None, table)


@step("caption_candidates", shardable=True, role="describes")
def caption_candidates(
    captions: CaptionPool,
    dataset: LabeledDataset,
    synonyms: Synonyms,
    frequency: ConceptFrequency | None = None,
    *,
    target: Target | PositiveInt = "median",
    per_class: PositiveInt = REAL_PER_CLASS,
    max_candidates: PositiveInt | None = None,
    tail_only: bool = False,
    seed: NonNegativeInt = 0,
    batch_rows: PositiveInt = 1_000_000,
) -> CaptionCandidates:
    """The pool captions that name each class below its target, by any written form of its synonyms.

    The matcher and the ``synonyms`` are ``concept_frequency``'s, so a candidate is exactly a
    caption counted as a mention. Quota per class: min(per_class, T − n_c) as in ``retrieve``
    (REAL keeps 500 a class); ``tail_only`` with ``frequency`` limits it to REAL's concept tail.
    Only classes with a quota keep candidates: a seeded uniform sample of at most
    ``max_candidates`` (default 20 × per_class) a class, since a head class may match millions
    of captions; every class's full match count is kept. Runs per pool shard on the executor;
    shard samples merge exactly, so the result does not depend on the sharding.
    """
    names = dataset.class_names()
    listed = synonyms.table["concept"].to_pylist()
    if listed != names:
        raise DataError(
            "the synonyms list different classes from the dataset; mine them from this dataset (mine_synonyms)"
        )
    if tail_only and frequency is None:
        raise DataError("tail_only needs the concept frequency table; wire `frequency`")
    eligible = concept_tail(dataset, frequency) if tail_only else None
    quotas = balance_quotas(dataset, target, max_per_class=per_class, eligible=eligible)
    k = max_candidates or 20 * per_class
    compiled = CompiledSynonyms.of(synonyms.mapping())
    wanted = quotas > 0
    kept, matched, read = CANDIDATE_SCHEMA.empty_table(), np.zeros(len(names), np.int64), 0
    below, pending, pending_rows = sample_thresholds(kept, wanted, k), [], 0
    # Held rows stay within about twice the samples' size: k a wanted class.
    merge_rows = k * max(int(wanted.sum()), 1) // 4
    units = read_ahead(
        read_units(captions.pieces.to_pylist(), batch_rows),
        lambda unit: list(_unit_captions(captions, unit, batch_rows)),
    )
    for unit, batches in units:
        first = unit[0]["first_row"]
        for batch in batches:
            found, counts = batch_candidates(compiled, batch, unit[0]["file"], first, below, seed)
            pending.append(found)
            pending_rows += found.num_rows
            matched += counts
            first += len(batch)
            read += len(batch)
            if pending_rows > max(kept.num_rows, merge_rows):
                # New thresholds keep later batches' rows out; rows already held above them are
                # dropped once they are a quarter of what is held (dropping copies the text).
                kept = pa.concat_tables([kept, *pending])
                below, pending, pending_rows = sample_thresholds(kept, wanted, k), [], 0
                surplus = kept["sample_key"].to_numpy() > below[kept["class_index"].to_numpy()]
                if surplus.sum() * 4 > kept.num_rows:
                    kept = filter_rows(kept, ~surplus)
    table = bottom_k(pa.concat_tables([kept, *pending]), k)
    summary = {
        "matched": matched.tolist(),
        "quota": quotas.tolist(),
        "max_candidates": k,
        "seed": seed,
        "captions": read,
    }
    return CaptionCandidates(table, summary)


def _unit_captions(pool: CaptionPool, unit: list[dict], batch_rows: int):
    """The captions of consecutive pieces of one file (``read_units``), in batches."""
    file = unit[0]["file"]
    if file != OWN_TABLE:
        groups = [piece["row_group"] for piece in unit]
        yield from iter_piece_captions(file, groups, pool.columns["caption"], batch_rows)
        return
    begin, end = unit[0]["first_row"], unit[-1]["first_row"] + unit[-1]["rows"]
    for start in range(begin, end, batch_rows):
        yield pool.table["caption"].slice(start, min(batch_rows, end - start)).combine_chunks()


@step("rank_captions", role="describes", gpu=True)
def rank_captions(
    candidates: CaptionCandidates,
    captions: CaptionPool,
    dataset: LabeledDataset,
    synonyms: Synonyms,
    frequency: ConceptFrequency | None = None,
    *,
    rank: bool = True,
    encoder: Literal["sentence", "open_clip", "transformers"] = "sentence",
    model: ModelRef = MINILM,
    pretrained: ModelRef | None = None,
    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
    min_t2i: confloat(ge=-1, le=1) | None = LAION_MIN_T2I,
    multi_class: MultiClass = "best",
    batch_size: PositiveInt = 256,
    device: Device = "auto",
) -> CaptionRetrieval:
    """Rank each class's caption candidates by T2T, drop those below ``min_t2i``, keep its quota.

    T2T: the cosine between the class's prompt ensemble (``templates`` filled with its most
    frequent caption synonym from ``frequency``, else its name) and the caption, both embedded by
    the text encoder (``sentence`` all-MiniLM-L6-v2 offline; a CLIP text tower on GPU nodes);
    ``rank: false`` keeps the sample's random order (REAL without ranking). T2I: the cosine between
    the prompts embedded by the pool's CLIP (``caption_pool``'s ``encoder``) and the row's image
    vector, when the pool has vectors; null turns the filter off. A caption naming two classes:
    ``multi_class: best`` gives the row to the class it ranks best for (one row, one class);
    ``drop`` skips any caption naming two or more of the dataset's classes.
    Output: the chosen rows (class, key, url, caption, matched form, t2t, t2i, rank), the
    per-class funnel (quota, matched, ranked, passed T2I, kept) and ``img2dataset.parquet``,
    the download list of just the chosen rows.
    """
    names = dataset.class_names()
    table = candidates.table
    classes = table["class_index"].to_numpy().astype(np.int64)
    count = table.num_rows
    prompt_names = class_prompt_names(dataset, frequency)
    # Candidates say where their captions lie; the text is read back for the ranked sample alone.
    texts = _pool_values(captions, table, ["caption"])["caption"] if rank and count else None
    if texts is not None:
        text_encoder = load_encoder(
            EncoderSpec(encoder, model, pretrained), device=device, batch_size=batch_size
        )
        prompts = _class_prompts(
            lambda chosen: prompt_ensemble(text_encoder, chosen, templates), prompt_names, classes
        )
        caption_vectors = text_encoder.encode_texts(texts)
        t2t = np.einsum("ij,ij->i", caption_vectors, prompts[classes])
    else:
        t2t = np.full(count, np.nan)
    t2i = None
    if captions.has_vectors and min_t2i is not None and count:
        t2i = _t2i(captions, table, classes, prompt_names, templates, device)
    # Without ranking, the sample's own order (its random key) decides.
    order_scores = t2t if rank else -table["sample_key"].to_numpy().astype(np.float64)
    item = _item_ids(table)
    quotas = np.array(candidates.summary["quota"], np.int64)
    choice = choose(
        classes, order_scores, t2i, min_t2i, table["classes_named"].to_numpy(), item, quotas, multi_class
    )
    compiled = CompiledSynonyms.of(synonyms.mapping())
    kept = table.take(pa.array(choice.rows, pa.int64()))
    kept_classes = classes[choice.rows]
    # The ranked sample's captions are in hand; otherwise the kept rows' are read with their keys.
    identity = _pool_values(captions, kept, ["key", "url"] + (["caption"] if texts is None else []))
    if texts is not None:
        identity["caption"] = [texts[row] for row in choice.rows]
    category_ids = dataset.categories["category_id"].to_numpy()
    chosen = pa.table(
        {
            "category_id": pa.array(category_ids[kept_classes], pa.int64()),
            "concept": pa.array([names[c] for c in kept_classes], pa.string()),
            "key": pa.array(identity["key"], pa.string()),
            "url": pa.array(identity["url"], pa.string()),
            "caption": pa.array(identity["caption"], pa.string()),
            "matched_form": pa.array(
                [
                    matched_form(text, compiled.class_forms[c])
                    for text, c in zip(identity["caption"], kept_classes, strict=True)
                ],
                pa.string(),
            ),
            "t2t": _floats(t2t[choice.rows] if rank else None, len(choice.rows)),
            "t2i": _floats(None if t2i is None else t2i[choice.rows], len(choice.rows)),
            "rank": pa.array(choice.ranks, pa.int64()),
            "classes_named": kept["classes_named"],
            "file": kept["file"].cast(pa.string()),
            "row": kept["row"],
        }
    )
    per_class = pa.table(
        {
            "category_id": dataset.categories["category_id"],
            "concept": names,
            "quota": pa.array(quotas, pa.int64()),
            "matched": pa.array(candidates.summary["matched"], pa.int64()),
            "ranked": pa.array(choice.ranked, pa.int64()),
            "passed_t2i": pa.array(choice.passed_t2i if t2i is not None else [None] * len(names), pa.int64()),
            "kept": pa.array(choice.kept, pa.int64()),
        }
    )
    summary = {
        "captions": candidates.summary["captions"],
        "ranked_by": str(EncoderSpec(encoder, model, pretrained)) if rank else None,
        "t2i_by": captions.encoder if t2i is not None else None,
        "min_t2i": min_t2i if t2i is not None else None,
        "multi_class": multi_class,
        "kept": int(choice.kept.sum()),
    }
    return CaptionRetrieval(chosen, per_class, summary)


def _t2i(
    captions: CaptionPool, table: pa.Table, classes: np.ndarray, names: list[str], templates, device
) -> np.ndarray:
    prompts = _class_prompts(
        lambda chosen: text_queries(chosen, templates, captions.encoder, device), names, classes
    )
    vector_file = dict(
        zip(captions.pieces["file"].to_pylist(), captions.pieces["vectors"].to_pylist(), strict=True)
    )
    codes, files = file_codes(table)
    rows = table["row"].to_numpy()
    scores = np.empty(len(codes), np.float64)
    for code, file in enumerate(files):
        here = np.nonzero(codes == code)[0]
        if not len(here):
            continue
        vectors = read_vectors(vector_file[file], rows[here])
        if vectors.shape[1] != prompts.shape[1]:
            raise DataError(
                f"{vector_file[file]}: {vectors.shape[1]}-d vectors, but {captions.encoder} embeds prompts in "
                f"{prompts.shape[1]} dimensions; name the encoder that made img_emb"
            )
        scores[here] = np.einsum("ij,ij->i", unit_rows(vectors), prompts[classes[here]])
    return scores


def _class_prompts(
    embed: Callable[[list[str]], np.ndarray], names: list[str], classes: np.ndarray
) -> np.ndarray:
    """A prompt vector for each class that has candidates (``embed`` of their names; the other
    rows stay zero): a few hundred tail classes of a thousand need embedding, not all."""
    present = np.unique(classes)
    vectors = embed([names[c] for c in present])
    prompts = np.zeros((len(names), vectors.shape[1]), vectors.dtype)
    prompts[present] = vectors
    return prompts


def _item_ids(table: pa.Table) -> np.ndarray:
    """One integer per pool row (file, row), for telling which candidacies share a row."""
    return file_codes(table)[0] * (1 << 40) + table["row"].to_numpy()


def _pool_values(pool: CaptionPool, rows_of: pa.Table, names: list[str]) -> dict[str, list]:
    """The pool's ``names`` columns (``caption``, ``key``, ``url``) for each row of ``rows_of``
    (its ``file`` and ``row``), read where they lie: only the row groups that hold them. A column
    the pool does not have (no ``url``) reads as nulls; a null caption as empty text."""
    values = {name: np.full(rows_of.num_rows, None, dtype=object) for name in names}
    codes, files = file_codes(rows_of)
    rows = rows_of["row"].to_numpy()
    for code, file in enumerate(files):
        here = np.nonzero(codes == code)[0]
        if not len(here):
            continue
        if file == OWN_TABLE:
            found = pool.table.select(names).take(pa.array(rows[here], pa.int64()))
            columns = dict(zip(names, names, strict=True))
        else:
            columns = {name: pool.columns[name] for name in names if pool.columns[name]}
            found = read_rows(file, rows[here], list(columns.values()))
        for name, column in columns.items():
            values[name][here] = found[column].cast(pa.large_string()).to_pylist()
    if "caption" in values:
        values["caption"][values["caption"] == None] = ""  # noqa: E711 - elementwise on objects
    return {name: column.tolist() for name, column in values.items()}


def _floats(values: np.ndarray | None, count: int) -> pa.Array:
    if values is None:
        return pa.nulls(count, pa.float64())
    return pa.array(np.round(values.astype(np.float64), 6), pa.float64())


@step("add_caption_retrievals", role="adds_rows", bypass="dataset")
def add_caption_retrievals(
    dataset: LabeledDataset,
    retrieval: CaptionRetrieval,
    pool: LabeledDataset,
    *,
    pool_key: str = "key",
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
) -> LabeledDataset:
    """Add the rows ``rank_captions`` chose, joined to their images in ``pool`` by key.

    ``pool``: the pool itself when it holds images (a WebDataset pool), or the shards img2dataset
    downloaded from ``img2dataset.parquet`` (ingested with ``ingest_webdataset`` and
    ``metadata_columns: [retrieval_key]``, joined with ``pool_key: retrieval_key``). A chosen row
    whose image is missing (a failed download) is counted per class in ``caption_missing``; one
    whose image the dataset already holds is skipped. Added rows have ``source = retrieved`` and
    provenance ``retrieval_query`` (the matched form), ``retrieval_score`` (T2T), ``matched_form``,
    ``t2t``, ``t2i``, ``caption_rank``, ``pool_key``, ``pool_file_name`` and ``caption``. The
    categories table gains the funnel: ``caption_matched``, ``caption_ranked``,
    ``caption_passed_t2i``, ``caption_kept``, ``caption_missing``.
    """
    if pool_key not in pool.images.column_names:
        raise DataError(
            f"the pool has no {pool_key!r} column (columns: {pool.images.column_names}); set pool_key"
        )
    names = dataset.class_names()
    if retrieval.per_class["concept"].to_pylist() != names:
        raise DataError("the caption retrieval was made for other classes; rank captions for this dataset")
    pool_keys = pool.images[pool_key].cast(pa.string())
    position = pc.index_in(retrieval.chosen["key"], value_set=pool_keys)
    found = position.is_valid().to_numpy(zero_copy_only=False)
    own_files = {
        dataset.image_ref(name).identity() for name in dataset.images["file_name"].to_pylist() if name
    }
    rows = position.to_numpy(zero_copy_only=False)
    chosen_index = np.nonzero(found)[0]
    taken = pool.images.take(pa.array(rows[chosen_index].astype(np.int64)))
    fresh = np.array(
        [pool.image_ref(name).identity() not in own_files for name in taken["file_name"].to_pylist()], bool
    )
    chosen_index, taken = chosen_index[fresh], taken.filter(pa.array(fresh))
    chosen = retrieval.chosen.take(pa.array(chosen_index, pa.int64()))
    class_of = {cid: i for i, cid in enumerate(dataset.categories["category_id"].to_pylist())}
    missing = np.bincount(
        [class_of[c] for c in retrieval.chosen["category_id"].to_numpy()[~found]], minlength=len(names)
    )
    frozen = freeze_buckets(
        dataset, rare_max_images=rare_max_images, common_max_images=common_max_images
    ).with_category_columns(
        {
            "caption_matched": retrieval.per_class["matched"],
            "caption_ranked": retrieval.per_class["ranked"],
            "caption_passed_t2i": retrieval.per_class["passed_t2i"],
            "caption_kept": retrieval.per_class["kept"],
            "caption_missing": pa.array(missing, pa.int64()),
        }
    )
    columns = {
        "file_name": pa.array(
            [pool.image_ref(n).text(dataset.image_root) for n in taken["file_name"].to_pylist()], pa.string()
        ),
        "width": taken["width"],
        "height": taken["height"],
        "source": pa.array(["retrieved"] * chosen.num_rows),
        "retrieval_query": pa.array([f"caption: {form}" for form in chosen["matched_form"].to_pylist()]),
        "retrieval_score": chosen["t2t"],
        "matched_form": chosen["matched_form"],
        "t2t": chosen["t2t"],
        "t2i": chosen["t2i"],
        "caption_rank": chosen["rank"],
        "pool_key": chosen["key"],
        "pool_file_name": taken["file_name"],
        "caption": chosen["caption"],
    }
    if "reference_label" in taken.column_names:
        columns["reference_label"] = taken["reference_label"]
    return frozen.add_images(columns, chosen["category_id"].to_numpy())
