"""Synthesis steps: new examples for the classes that retrieval could not fill."""

from __future__ import annotations

import dataclasses
import io
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import NonNegativeInt, PositiveInt, confloat

from rebalance.core import worker_cache
from rebalance.core.device import Device
from rebalance.core.registry import ModelRef, step
from rebalance.domain.artifacts import REMOVED_SCHEMA, ConceptFrequency, Embeddings, LabeledDataset
from rebalance.domain.artifacts.vectors import unit_rows
from rebalance.domain.classes import balance_quotas, class_buckets, freeze_buckets
from rebalance.errors import DataError
from rebalance.io.references import open_image
from rebalance.methods.feature_synthesis import calibrated_gaussian, smote
from rebalance.methods.retrieval import Target


@step("synthesize_features", role="adds_rows", bypass="dataset")
def synthesize_features(
    dataset: LabeledDataset,
    embeddings: Embeddings,
    *,
    method: Literal["smote", "gaussian"] = "smote",
    target: Target | PositiveInt = "median",
    max_per_class: PositiveInt | None = None,
    k: PositiveInt = 5,
    borrow: PositiveInt = 2,
    alpha: confloat(ge=0) = 0.1,
    lof_neighbors: PositiveInt | None = 20,
    device: Device = "auto",
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    seed: NonNegativeInt = 0,
) -> LabeledDataset:
    """Add synthetic *feature* rows to the classes still below the balance target.

    Quotas come from the same target as retrieval, over the original counts
    (``rebalance.steps.stats.balance_quotas``), so this makes only what retrieval could not fill.
    ``smote``: x_i + λ(x_nn − x_i) between a class sample and one of its k nearest same-class
    neighbours (``rebalance.methods.feature_synthesis.smote``; neighbours by torch on CUDA when ``device``
    resolves to it, else FAISS). ``gaussian``: samples from a class
    Gaussian whose statistics tail classes borrow from their ``borrow`` nearest frequent classes,
    after LOF outlier removal (RCAL / distribution calibration).

    New rows have no image: ``source: synthetic``, ``file_name`` null, the vector in ``feature``
    (read by ``gather_embeddings`` and so by the trainer), and provenance ``synthesis_method``,
    ``synthesis_parent`` / ``synthesis_neighbor`` (image ids; SMOTE only), ``synthesis_lambda`` and
    ``synthesis_seed``. A class that cannot be synthesised (one sample for SMOTE) keeps its count.
    """
    # One sample per (image, class) pair: an image with several classes is an example of each.
    pair_rows, labels = dataset.label_pairs()
    image_ids = dataset.images["image_id"].to_numpy()[pair_rows]
    features = embeddings.aligned_to(image_ids)
    quotas = balance_quotas(dataset, target, max_per_class=max_per_class)
    if method == "smote":
        made = smote(features, labels, quotas, k=k, seed=seed, device=device)
    else:
        head = np.array(
            [
                b == "frequent"
                for b in class_buckets(
                    dataset, rare_max_images=rare_max_images, common_max_images=common_max_images
                )
            ]
        )
        made = calibrated_gaussian(
            features,
            labels,
            quotas,
            head=head,
            borrow=borrow,
            alpha=alpha,
            lof_neighbors=lof_neighbors,
            seed=seed,
        )
    count = len(made)

    def image_ids_of(rows: np.ndarray) -> pa.Array:
        return pa.array(np.where(rows >= 0, image_ids[np.maximum(rows, 0)], 0), pa.int64(), mask=rows < 0)

    columns = {
        "file_name": pa.nulls(count, pa.string()),
        "source": pa.array(["synthetic"] * count),
        "feature": pa.array(list(made.vectors), pa.list_(pa.float32())),
        "synthesis_method": pa.array([method] * count),
        "synthesis_parent": image_ids_of(made.parents),
        "synthesis_neighbor": image_ids_of(made.neighbors),
        "synthesis_lambda": pa.array(
            made.lambdas.astype(np.float64), pa.float64(), mask=np.isnan(made.lambdas)
        ),
        "synthesis_seed": pa.array([seed] * count, pa.int64()),
    }
    category_ids = dataset.categories["category_id"].to_numpy()[made.labels]
    return freeze_buckets(
        dataset, rare_max_images=rare_max_images, common_max_images=common_max_images
    ).add_images(columns, category_ids)


DEFAULT_PROMPTS = ("a photo of a {}.",)


@step("synthesize_images", role="adds_rows", bypass="dataset")
def synthesize_images(
    dataset: LabeledDataset,
    embeddings: Embeddings,
    frequency: ConceptFrequency | None = None,
    *,
    model: ModelRef,
    mode: Literal["text2img", "img2img"] = "text2img",
    templates: tuple[str, ...] = DEFAULT_PROMPTS,
    target: Target | PositiveInt = "median",
    max_per_class: PositiveInt | None = None,
    oversample: confloat(ge=1) = 1.5,
    strength: confloat(gt=0, le=1) = 0.6,
    image_size: PositiveInt = 512,
    steps: PositiveInt = 30,
    guidance: confloat(ge=0) = 7.5,
    batch_size: PositiveInt = 4,
    min_clip_score: confloat(ge=-1, le=1) | None = 0.2,
    real_similarity: tuple[confloat(ge=-1, le=1), confloat(ge=-1, le=1)] | None = (0.5, 0.95),
    device: Device = "auto",
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    seed: NonNegativeInt = 0,
) -> LabeledDataset:
    """Generate images for the classes still below the balance target, and keep the good ones (Gen2Det, ADR).

    Quota per class from the same target as retrieval (``balance_quotas``); ceil(quota × oversample)
    candidates are generated with ``model`` (any diffusers pipeline, by name or local path):
    ``text2img`` from ``templates`` filled with the class's most frequent caption synonym
    (``frequency``) or its name; ``img2img`` from the class's real images (round-robin, noised by
    ``strength``), ADR's head-to-tail variation. Image i of class c is drawn from its own seed,
    derived from (``seed``, c, i) and recorded, so any image can be regenerated alone.

    Filter, with the encoder that made ``embeddings`` (a CLIP-style model, which also embeds the
    kept images for training): drop a candidate whose CLIP score against its prompt is below
    ``min_clip_score`` (off-prompt), or whose cosine to the nearest real image of its class is
    outside ``real_similarity`` = (low, high) (off-class below, near copy above); keep the best
    ``quota`` of the rest by CLIP score. Every dropped candidate is a ``removed`` row with its rule.
    Kept rows: ``source: synthetic``, the image stored in this step's output, ``feature`` (its
    embedding), ``synthesis_method``, ``synthesis_prompt``, ``synthesis_seed``, ``synthesis_model``,
    ``synthesis_parent`` (img2img), ``clip_score``, ``real_similarity``.
    """
    from rebalance.domain.prompts import class_prompt_names
    from rebalance.models.diffusion import DiffusionGenerator
    from rebalance.models.encoders import EncoderSpec, load_encoder

    spec = EncoderSpec.parse(embeddings.encoder)
    if spec.kind not in ("open_clip", "transformers"):
        raise DataError(
            f"synthesize_images filters and embeds generated images with the encoder of `embeddings`, which is "
            f"{embeddings.encoder!r}; embed the dataset with embed_images (open_clip or transformers)"
        )
    encoder = load_encoder(spec, device=device, batch_size=batch_size * 4)
    generator = worker_cache.kept(
        ("diffusion", model, device, steps, guidance, batch_size),
        lambda: DiffusionGenerator(
            model, device=device, steps=steps, guidance=guidance, batch_size=batch_size
        ),
    )
    pair_rows, labels = dataset.label_pairs()
    real = embeddings.aligned_to(dataset.images["image_id"].to_numpy())
    names = class_prompt_names(dataset, frequency)
    quotas = balance_quotas(dataset, target, max_per_class=max_per_class)
    category_ids = dataset.categories["category_id"].to_numpy()
    kept_rows: list[dict] = []
    dropped_rows: list[dict] = []
    files: dict[str, bytes] = {}
    for cls in np.flatnonzero(quotas > 0):
        members = pair_rows[labels == cls]
        count = int(np.ceil(quotas[cls] * oversample))
        seeds = [
            int(np.random.SeedSequence([seed, int(category_ids[cls]), i]).generate_state(1)[0])
            for i in range(count)
        ]
        prompts = [templates[i % len(templates)].format(names[cls]) for i in range(count)]
        candidates = [
            {
                "index": i,
                "prompt": prompts[i],
                "seed": seeds[i],
                "parent": None,
                "category_id": int(category_ids[cls]),
            }
            for i in range(count)
        ]
        if mode == "img2img":
            candidates, unreadable = _with_parents(dataset, candidates, members)
            dropped_rows += unreadable
        if not candidates:
            continue
        if mode == "img2img":
            made = generator.image_to_image(
                [c["prompt"] for c in candidates],
                [c.pop("image") for c in candidates],
                [c["seed"] for c in candidates],
                strength,
                image_size,
            )
        else:
            made = generator.text_to_image(
                [c["prompt"] for c in candidates], [c["seed"] for c in candidates], image_size
            )
        pngs = [_png(image) for image in made]
        for candidate, png, vector in zip(
            candidates, pngs, encoder.encode_images([io.BytesIO(p) for p in pngs]), strict=True
        ):
            candidate |= {"png": png, "vector": vector}
        prompt_vectors = encoder.encode_texts([c["prompt"] for c in candidates])
        kept, dropped = _filtered(
            candidates,
            prompt_vectors,
            unit_rows(real[members]),
            int(quotas[cls]),
            min_clip_score,
            real_similarity,
        )
        dropped_rows += dropped
        for candidate in kept:
            name = f"{int(category_ids[cls])}_{candidate['index']:05d}_{candidate['seed']}.png"
            files[name] = candidate["png"]
            kept_rows.append({**candidate, "artifact_file": name})
    grown = freeze_buckets(
        dataset, rare_max_images=rare_max_images, common_max_images=common_max_images
    ).add_images(
        _generated_columns(kept_rows, mode, model, image_size),
        np.array([r["category_id"] for r in kept_rows], dtype=np.int64),
    )
    # Dropped candidates get ids after the kept ones, so every generated image is accounted for once.
    first_id = 1 + max(
        (pc.max(table["image_id"]).as_py() for table in (grown.images, grown.removed) if table.num_rows),
        default=-1,
    )
    removed = _dropped_table(dropped_rows, first_id)
    return dataclasses.replace(grown, removed=pa.concat_tables([grown.removed, removed]), files=files)


def _with_parents(
    dataset: LabeledDataset, candidates: list[dict], members: np.ndarray
) -> tuple[list[dict], list[dict]]:
    """Attach a real parent image (round-robin over the class) to each candidate; unreadable parents are skipped."""
    file_names = dataset.images["file_name"].to_pylist()
    image_ids = dataset.images["image_id"].to_numpy()
    usable, unreadable = [], []
    for candidate in candidates:
        row = members[candidate["index"] % len(members)]
        ref = dataset.image_ref(file_names[row]) if file_names[row] else None
        candidate["parent"] = int(image_ids[row])
        try:
            if ref is None:
                raise OSError("it has no image file (a synthetic feature row)")
            with open_image(ref) as image:
                candidate["image"] = image.convert("RGB")
        except (OSError, ValueError) as error:
            unreadable.append(
                {
                    **candidate,
                    "reason": f"parent image {ref or int(image_ids[row])} unreadable: {error}; skipped",
                }
            )
            continue
        usable.append(candidate)
    return usable, unreadable


def _filtered(
    candidates: list[dict],
    prompt_vectors: np.ndarray,
    real: np.ndarray,
    quota: int,
    min_clip_score: float | None,
    band: tuple[float, float] | None,
) -> tuple[list[dict], list[dict]]:
    """Score candidates (CLIP score, cosine to the nearest real image), apply the rules, keep the best ``quota``."""
    vectors = np.stack([c["vector"] for c in candidates])
    clip_scores = np.sum(vectors * prompt_vectors, axis=1)
    nearest = (vectors @ real.T).max(axis=1) if len(real) else np.full(len(vectors), np.nan)
    passing, dropped = [], []
    for candidate, score, closest in zip(candidates, clip_scores, nearest, strict=True):
        candidate |= {"clip_score": float(score), "real_similarity": float(closest)}
        rule = _rejection(float(score), float(closest), min_clip_score, band)
        if rule:
            dropped.append({**candidate, "reason": rule})
        else:
            passing.append(candidate)
    passing.sort(key=lambda c: (-c["clip_score"], c["index"]))
    dropped += [
        {**c, "reason": f"quota of {quota} already met by higher CLIP scores"} for c in passing[quota:]
    ]
    return sorted(passing[:quota], key=lambda c: c["index"]), dropped


def _rejection(
    score: float, closest: float, min_clip_score: float | None, band: tuple[float, float] | None
) -> str | None:
    if min_clip_score is not None and score < min_clip_score:
        return f"off-prompt: CLIP score {score:.3f} < {min_clip_score}"
    if band is not None and not np.isnan(closest):
        low, high = band
        if closest < low:
            return f"off-class: cosine to the nearest real image {closest:.3f} < {low}"
        if closest > high:
            return f"near copy: cosine to the nearest real image {closest:.3f} > {high}"
    return None


def _generated_columns(rows: list[dict], mode: str, model: str, size: int) -> dict[str, pa.Array]:
    count = len(rows)
    return {
        "file_name": pa.nulls(count, pa.string()),
        "artifact_file": pa.array([r["artifact_file"] for r in rows], pa.string()),
        "width": pa.array([size] * count, pa.int32()),
        "height": pa.array([size] * count, pa.int32()),
        "source": pa.array(["synthetic"] * count),
        "feature": pa.array([r["vector"] for r in rows], pa.list_(pa.float32())),
        "synthesis_method": pa.array([mode] * count),
        "synthesis_prompt": pa.array([r["prompt"] for r in rows], pa.string()),
        "synthesis_seed": pa.array([r["seed"] for r in rows], pa.int64()),
        "synthesis_model": pa.array([model] * count),
        "synthesis_parent": pa.array([r["parent"] for r in rows], pa.int64()),
        "clip_score": pa.array([r["clip_score"] for r in rows], pa.float64()),
        "real_similarity": pa.array([r["real_similarity"] for r in rows], pa.float64()),
    }


def _dropped_table(rows: list[dict], first_id: int) -> pa.Table:
    return pa.table(
        {
            "image_id": pa.array(range(first_id, first_id + len(rows)), pa.int64()),
            "file_name": [f"generated: {r['prompt']} (seed {r['seed']})" for r in rows],
            "source": ["synthetic"] * len(rows),
            "category_ids": [[r["category_id"]] for r in rows],
            "step": ["synthesize_images"] * len(rows),
            "reason": [r["reason"] for r in rows],
            "kept_image_id": pa.nulls(len(rows), pa.int64()),
        },
        schema=REMOVED_SCHEMA,
    )


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
