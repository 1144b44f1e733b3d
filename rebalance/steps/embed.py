"""Embedding steps: one vector per image, from a model, from its caption, or from its pixels."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import NonNegativeInt, PositiveInt

from rebalance.core.device import Device
from rebalance.core.registry import InputPath, ModelRef, step
from rebalance.domain.artifacts import Embeddings, LabeledDataset
from rebalance.errors import DataError
from rebalance.io.images import load_pixels
from rebalance.io.memmaps import CHUNK_ROWS, release_mapped_pages
from rebalance.models.encoders import MINILM, EncoderSpec, load_encoder
from rebalance.models.pixels import pca_project

StoredDtype = Literal["float32", "float16"]


@step("embed_images", shardable=True, role="embeds", gpu=True)
def embed_images(
    dataset: LabeledDataset,
    *,
    encoder: Literal["open_clip", "transformers"],
    model: ModelRef,
    pretrained: ModelRef | None = None,
    batch_size: PositiveInt = 64,
    device: Device = "auto",
    dtype: StoredDtype = "float32",
    loader_workers: NonNegativeInt | None = None,
) -> Embeddings:
    """Embed every image with a CLIP-style model: L2-normalised float32 rows, one per image id.

    ``encoder: open_clip`` takes an architecture name or a model-config JSON as ``model`` and a tag
    or checkpoint file as ``pretrained``; ``encoder: transformers`` takes a hub name or local
    folder as ``model``. On CUDA (``device: auto`` when there is a GPU) the model runs in float16.
    Runs per shard: each finished shard is cached on its own. ``dtype: float16`` halves the
    stored size (normalised vectors lose ~3 decimal digits); consumers compute in float32.
    ``loader_workers`` DataLoader processes decode and preprocess the next batches while the model
    runs (default: 4 on CUDA, 0 on the CPU); a CUDA out-of-memory error halves the batch. On a GPU
    node each GPU worker keeps its model for every shard it runs.
    """
    spec = EncoderSpec(encoder, model, pretrained)
    encoder_ = load_encoder(spec, device=device, batch_size=batch_size, loader_workers=loader_workers)
    vectors = encoder_.encode_images(_refs(dataset))
    return _checked(dataset, vectors, str(spec), dtype)


@step("embed_texts", shardable=True, role="embeds", gpu=True)
def embed_texts(
    dataset: LabeledDataset,
    *,
    column: str = "caption",
    encoder: Literal["sentence", "open_clip", "transformers"] = "sentence",
    model: ModelRef = MINILM,
    pretrained: ModelRef | None = None,
    batch_size: PositiveInt = 256,
    device: Device = "auto",
    dtype: StoredDtype = "float32",
) -> Embeddings:
    """Embed each image's text (its caption, by default) with a text encoder; one row per image id.

    REAL-Linear ranks pool images by how close their *caption* is to the class prompts; the
    default ``sentence`` encoder ``all-MiniLM-L6-v2`` runs offline from the package that ships it.
    A CLIP encoder here puts captions in the same space as its image embeddings.
    """
    if column not in dataset.images.column_names:
        raise DataError(
            f"the dataset has no {column!r} column (columns: {dataset.images.column_names}); "
            "ingest the pool with captions"
        )
    texts = dataset.images[column].to_pylist()
    missing = [i for i, text in zip(dataset.images["image_id"].to_pylist(), texts, strict=True) if not text]
    if missing:
        raise DataError(f"{len(missing)} image(s) have no {column!r} text (first ids: {missing[:5]})")
    spec = EncoderSpec(encoder, model, pretrained)
    vectors = load_encoder(spec, device=device, batch_size=batch_size).encode_texts(texts)
    return _checked(dataset, vectors, str(spec), dtype)


@step("embed_pixels_pca", role="embeds")
def embed_pixels_pca(
    dataset: LabeledDataset,
    fit: LabeledDataset | None = None,
    *,
    dim: PositiveInt = 64,
    image_size: PositiveInt = 28,
) -> Embeddings:
    """Embed every image as grey pixels resized to image_size², projected on their top-dim PCA axes.

    The PCA axes are fitted on ``fit`` when given (embed a test split or a retrieval pool with the
    training split's axes), else on ``dataset``. pixels_pca is an offline baseline, not a semantic
    encoder (see rebalance.models.pixels); it embeds no text, so retrieval over it queries by image.
    """
    pixels = load_pixels(_refs(dataset), image_size)
    reference = pixels if fit is None else load_pixels(_refs(fit), image_size)
    return _checked(dataset, pca_project(pixels, dim, fit_on=reference), "pixels_pca")


@step("gather_embeddings", role="embeds")
def gather_embeddings(
    dataset: LabeledDataset, embeddings: Embeddings, pool_embeddings: Embeddings | None = None
) -> Embeddings:
    """The embeddings of ``dataset``'s rows, taken from what was already computed, no model run.

    Rows of the original data come from ``embeddings`` by image id; retrieved rows come from
    ``pool_embeddings`` by their ``pool_image_id``; synthetic feature rows carry their vector in
    their ``feature`` column. All must come from the same encoder.
    """
    images = dataset.images
    ids = images["image_id"].to_numpy()
    vectors = np.zeros((len(ids), embeddings.vectors.shape[1]), dtype=np.float32)
    from_pool = _present(images, "pool_image_id")
    from_feature = _present(images, "feature")
    if from_pool.any():
        if pool_embeddings is None:
            raise DataError(
                f"{int(from_pool.sum())} row(s) were retrieved from a pool; wire pool_embeddings too"
            )
        if pool_embeddings.encoder != embeddings.encoder:
            raise DataError(
                f"the pool was embedded by {pool_embeddings.encoder!r}, the dataset by {embeddings.encoder!r}"
            )
        pool_ids = images["pool_image_id"].to_numpy(zero_copy_only=False)[from_pool].astype(np.int64)
        vectors[from_pool] = pool_embeddings.aligned_to(pool_ids)
    if from_feature.any():
        vectors[from_feature] = np.stack(
            images["feature"].filter(pa.array(from_feature)).to_numpy(zero_copy_only=False)
        )
    own = ~from_pool & ~from_feature
    vectors[own] = embeddings.aligned_to(ids[own])
    return Embeddings(ids, vectors, embeddings.encoder)


def _present(images: pa.Table, column: str) -> np.ndarray:
    if column not in images.column_names:
        return np.zeros(images.num_rows, dtype=bool)
    return images[column].is_valid().to_numpy(zero_copy_only=False)


def _checked(
    dataset: LabeledDataset, vectors: np.ndarray, encoder: str, dtype: str = "float32"
) -> Embeddings:
    ids = dataset.images["image_id"].to_numpy()
    bad = ~np.isfinite(vectors).all(axis=1) if len(vectors) else np.zeros(0, dtype=bool)
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} embedding(s) are NaN or infinite (first image ids: {ids[bad][:5].tolist()})"
        )
    return Embeddings(ids, vectors.astype(dtype, copy=False), encoder)


def _refs(dataset: LabeledDataset) -> list:
    return [dataset.image_ref(name) for name in dataset.images["file_name"].to_pylist()]


@step("precomputed_embeddings", role="embeds")
def precomputed_embeddings(
    pool: LabeledDataset,
    *,
    root: InputPath,
    encoder: str,
    kind: Literal["img", "text"] = "img",
    dtype: StoredDtype = "float16",
) -> Embeddings:
    """The pool's precomputed vectors, as LAION and clip-retrieval publish them: nothing is embedded.

    ``root`` holds ``img_emb/img_emb_<i>.npy`` (``kind: text``: ``text_emb/...``) and
    ``metadata/metadata_<i>.parquet`` with the same rows; each vector joins the pool image whose
    ``key`` (from ``ingest_webdataset``) its metadata row names, and rows for samples that are not
    in the pool are skipped. ``encoder`` names the model that made them (``open_clip:ViT-B-32@
    laion2b_s34b_b79k``): text queries are embedded by it, and their dimension is checked against
    these vectors. Shards are memory-mapped: the vectors are copied into the cache a chunk at a
    time, never held in memory whole.
    """
    from rebalance.io.embedding_folders import GatheredRows, iter_embedding_shards

    if "key" not in pool.images.column_names:
        raise DataError(
            "precomputed embeddings join the pool by `key`: ingest the pool with ingest_webdataset"
        )
    keys = pool.images["key"].cast(pa.string())
    # Per pool row: which shard holds its vector, and where. Arrow joins the keys (a hash table over
    # one shard's keys at a time); no Python object is made per row.
    shard_of_row = np.full(len(keys), -1, dtype=np.int32)
    row_in_shard = np.zeros(len(keys), dtype=np.int64)
    shards: list[np.ndarray] = []
    for path, shard_vectors, shard_keys in iter_embedding_shards(root, kind):
        if shards and shard_vectors.shape[1] != shards[0].shape[1]:
            raise DataError(
                f"{path}: {shard_vectors.shape[1]} dimensions, but the shards before it have "
                f"{shards[0].shape[1]}; every shard must come from the same model"
            )
        found = pc.index_in(keys, value_set=shard_keys)
        in_shard = found.is_valid().to_numpy(zero_copy_only=False)
        shard_of_row[in_shard] = len(shards)
        row_in_shard[in_shard] = found.drop_null().to_numpy()
        _check_finite(shard_vectors, np.sort(row_in_shard[in_shard]), path)
        shards.append(shard_vectors)
    missing = np.nonzero(shard_of_row < 0)[0]
    if len(missing):
        raise DataError(
            f"{root}: {len(missing):,} pool image(s) have no precomputed embedding (first keys: "
            f"{keys.take(missing[:3]).to_pylist()}); the embeddings must cover the pool's shards"
        )
    ids = pool.images["image_id"].to_numpy()
    return Embeddings(ids, GatheredRows(shards, shard_of_row, row_in_shard, dtype), encoder)


def _check_finite(vectors: np.ndarray, rows: np.ndarray, path) -> None:
    """NaN or infinite rows among ``rows`` of a memory-mapped shard are an error naming them."""
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start : start + CHUNK_ROWS]
        bad = ~np.isfinite(vectors[chunk]).all(axis=1)
        release_mapped_pages(vectors)
        if bad.any():
            raise DataError(
                f"{path}: {int(bad.sum())} row(s) are NaN or infinite (first rows: {chunk[bad][:5].tolist()}); "
                "re-export the embeddings"
            )
