"""Export a ``LabeledDataset`` as a Hugging Face dataset with a dataset card."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from pydantic import PositiveInt

from rebalance.core.registry import step
from rebalance.domain.artifacts import (
    Embeddings,
    HFDatasetExport,
    LabeledDataset,
    markdown_table,
    markdown_text,
)
from rebalance.domain.classes import (
    class_buckets,
    class_counts,
    compute_class_stats,
    expected_draws_per_epoch,
)
from rebalance.domain.ledger import (
    CAPTION_FUNNEL_TEXT,
    CAPTION_HEADER,
    RETRIEVAL_HEADER,
    caption_funnel,
    retrieval_by_class,
    retrieval_summary,
    retrieval_table_rows,
    stage_changes,
)
from rebalance.errors import DataError
from rebalance.io.references import in_container

Task = Literal["auto", "classification", "detection"]


@step("export_hf", role="exports")
def export_hf(
    dataset: LabeledDataset,
    original: LabeledDataset | None = None,
    test: LabeledDataset | None = None,
    embeddings: Embeddings | None = None,
    test_embeddings: Embeddings | None = None,
    *,
    task: Task = "auto",
    embed_images: bool = True,
    num_shards: PositiveInt = 1,
    title: str = "Rebalanced dataset",
    rare_max_images: PositiveInt = 10,
    common_max_images: PositiveInt = 100,
    lineage: dict[str, Any] | None = None,
) -> HFDatasetExport:
    """Write a datasets.DatasetDict (train, and test when given) plus a dataset card.

    Classification data gets ``label: ClassLabel``; detection data gets ``objects`` (bbox in COCO
    xywh pixels, category as ClassLabel, area, id; ``iscrowd`` and ``segmentation`` when the data has
    them, the mask as COCO JSON text: polygons or RLE). ``embed_images`` stores image bytes in the
    dataset (self-contained); otherwise the ``image`` column holds absolute paths. Every other
    image column (``source``, provenance, ...) is kept, and ``embeddings`` add an ``embedding``
    column (float32). The card (README.md) compares ``dataset`` with ``original`` (the data before
    rebalancing) per class and per stage, with a plot, and prints the exact pipeline config that
    produced the data (``lineage``, filled in by the runner).
    """
    import datasets

    resolved = _resolve_task(dataset, task)
    class_names = dataset.class_names()
    splits = {"train": dataset, **({"test": test} if test is not None else {})}
    if test is not None and test.class_names() != class_names:
        raise DataError(
            f"the test split's classes {test.class_names()[:5]}... differ from train's {class_names[:5]}..."
        )
    vectors = {"train": embeddings, "test": test_embeddings}
    # One `objects` layout for every split: a field any split's annotations have (masks) is in all.
    annotation_columns = {name for data in splits.values() for name in data.annotations.column_names}
    exported = datasets.DatasetDict(
        {
            name: _to_hf(
                split_data, name, resolved, class_names, embed_images, vectors[name], annotation_columns
            )
            for name, split_data in splits.items()
        }
    )
    buckets = class_buckets(
        original if original is not None else dataset,
        rare_max_images=rare_max_images,
        common_max_images=common_max_images,
    )
    card, plots = _card(
        title,
        dataset,
        original,
        test,
        resolved,
        num_shards,
        list(splits),
        lineage,
        buckets,
        (rare_max_images, common_max_images),
        embed_images,
    )
    return HFDatasetExport(exported, card, num_shards, plots, dict(zip(class_names, buckets, strict=True)))


def _resolve_task(dataset: LabeledDataset, task: Task) -> Literal["classification", "detection"]:
    if task != "auto":
        return task
    per_image = pc.value_counts(dataset.annotations["image_id"]).field("counts")
    single = dataset.annotations.num_rows == dataset.num_rows and (
        len(per_image) == 0 or pc.max(per_image).as_py() == 1
    )
    no_boxes = dataset.annotations["bbox"].null_count == dataset.annotations.num_rows
    return "classification" if single and no_boxes else "detection"


def _to_hf(
    data: LabeledDataset,
    split: str,
    task: str,
    class_names: list[str],
    embed_images: bool,
    embeddings: Embeddings | None,
    annotation_columns: set[str],
) -> Any:
    """One split as a ``datasets.Dataset``; ``annotation_columns``: those of every split's
    annotations, which decide the ``objects`` fields."""
    import datasets

    # Synthetic feature rows have no image file; their vector is the `embedding` (or `feature`).
    images = data.images.drop_columns(
        ["split", *(["feature"] if embeddings is not None and "feature" in data.images.column_names else [])]
    )
    # Every image's bytes are read through its reference (a file or a tar shard member), so the
    # export holds them whatever the pool's layout. Without embedding, a file stays a path in
    # `image`; a tar member or parquet cell is no file a reader could open, so `image` is empty and
    # `image_reference` holds where its bytes are (the card explains the form).
    refs = [None if name is None else data.image_ref(name) for name in images["file_name"].to_pylist()]
    image_column = [
        None
        if ref is None or (not embed_images and ref.contained)
        else {"bytes": ref.read_bytes(), "path": ref.name}
        if embed_images
        else {"bytes": None, "path": str(ref)}
        for ref in refs
    ]
    label_of = {cid: i for i, cid in enumerate(data.categories["category_id"].to_pylist())}
    features: dict[str, Any] = {"image": datasets.Image()}
    columns: dict[str, Any] = {"image": image_column}
    if not embed_images:
        features["image_reference"] = datasets.Value("string")
        columns["image_reference"] = [None if ref is None else str(ref) for ref in refs]
    if task == "classification":
        by_image = dict(
            zip(
                data.annotations["image_id"].to_pylist(),
                data.annotations["category_id"].to_pylist(),
                strict=True,
            )
        )
        missing = [i for i in images["image_id"].to_pylist() if i not in by_image]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) have no label (first ids: {missing[:5]}); use task: detection for unlabeled images"
            )
        columns["label"] = [label_of[by_image[i]] for i in images["image_id"].to_pylist()]
        features["label"] = datasets.ClassLabel(names=class_names)
    else:
        object_features = {
            "id": datasets.Value("int64"),
            "bbox": datasets.List(datasets.Value("float32"), length=4),
            "category": datasets.ClassLabel(names=class_names),
            "area": datasets.Value("float64"),
            # A mask is polygons or an RLE, a union no `datasets` feature type holds: COCO's JSON of
            # it, as the source file wrote it (`json.loads` gives what pycocotools takes).
            "iscrowd": datasets.Value("int32"),
            "segmentation": datasets.Value("string"),
        }
        object_features = {
            name: feature
            for name, feature in object_features.items()
            if _OBJECT_COLUMNS[name] in annotation_columns
        }
        columns["objects"] = _objects(data, images["image_id"].to_pylist(), label_of, list(object_features))
        features["objects"] = datasets.List(object_features)
    for name in images.column_names:
        columns[name] = images[name].to_pylist()
        features[name] = datasets.Features.from_arrow_schema(pa.schema([images.schema.field(name)]))[name]
    if embeddings is not None:
        columns["embedding"] = list(embeddings.aligned_to(images["image_id"].to_numpy()))
        features["embedding"] = datasets.List(datasets.Value("float32"))
    built = datasets.Dataset.from_dict(columns, features=datasets.Features(features), split=split)
    # In-memory datasets get a random fingerprint; a content hash keeps state.json reproducible.
    fingerprint = _table_digest(built.data.table)
    return datasets.Dataset(built.data, info=built.info, split=built.split, fingerprint=fingerprint)


# Each object field and the annotations column it comes from.
_OBJECT_COLUMNS = {
    "id": "annotation_id",
    "bbox": "bbox",
    "category": "category_id",
    "area": "area",
    "iscrowd": "iscrowd",
    "segmentation": "segmentation",
}


def _objects(
    data: LabeledDataset, image_ids: list[int], label_of: dict[int, int], fields: list[str]
) -> list[list[dict[str, Any]]]:
    grouped: dict[int, list[dict[str, Any]]] = {image_id: [] for image_id in image_ids}
    present = [f for f in fields if _OBJECT_COLUMNS[f] in data.annotations.column_names]
    for row in data.annotations.select(["image_id", *(_OBJECT_COLUMNS[f] for f in present)]).to_pylist():
        obj = {field: row.get(_OBJECT_COLUMNS[field]) for field in fields}
        obj["category"] = label_of[obj["category"]]
        grouped[row["image_id"]].append(obj)
    return [grouped[image_id] for image_id in image_ids]


def _table_digest(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:32]


def _card(
    title: str,
    dataset: LabeledDataset,
    original: LabeledDataset | None,
    test: LabeledDataset | None,
    task: str,
    num_shards: int,
    splits: list[str],
    lineage: dict[str, Any] | None,
    buckets: list[str],
    thresholds: tuple[int, int],
    embed_images: bool = True,
) -> tuple[str, dict[str, bytes]]:
    """The dataset card (README.md) and its plots; ``buckets`` per class, from the original counts."""
    from rebalance.report.plots import class_distribution

    stats = compute_class_stats(dataset)
    after = stats.table["images"].to_numpy()
    counts: dict[str, Any] = {"class": stats.table["name"], "bucket": pa.array(buckets, pa.string())}
    stages = {}
    if original is not None:
        before, _ = class_counts(original)
        stages["before"] = before
        counts["before"] = pa.array(before, pa.int64())
        for change, images in stage_changes(original, dataset).items():
            counts[change] = pa.array(images, pa.int64())
        counts["after"] = pa.array(after, pa.int64())
        counts["change"] = pa.array(after - before, pa.int64())
    else:
        counts["images"] = pa.array(after, pa.int64())
    stages["after"] = after
    if "repeat_factor" in dataset.images.column_names:
        per_epoch = expected_draws_per_epoch(dataset)
        stages["expected per epoch"] = per_epoch
        counts["per epoch"] = pa.array(np.round(per_epoch, 1), pa.float64())
    if test is not None:
        counts["test"] = pa.array(class_counts(test)[0], pa.int64())
    plots = {"class_counts": class_distribution(dataset.class_names(), stages)}

    from huggingface_hub import DatasetCardData

    # The hub's own card metadata writer: the YAML header is valid and quoted whatever the title holds.
    metadata = DatasetCardData(
        pretty_name=title,
        configs=[
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits],
            }
        ],
        tags=["long-tail", "rebalance"],
    )
    header = f"---\n{metadata.to_yaml()}\n---\n"
    removed = dataset.removed
    removal_lines = ["No image was removed."]
    if removed.num_rows:
        removal_lines = []
        for entry in pc.value_counts(removed["step"]).to_pylist():
            by_step = removed.filter(pc.equal(removed["step"], entry["values"])).slice(0, 3).to_pylist()
            removal_lines.append(f"- {markdown_text(entry['values'])}: {entry['counts']} image(s), e.g.")
            removal_lines += [
                f"  - {markdown_text(row['file_name'])}: {markdown_text(row['reason'])}" for row in by_step
            ]
    summary = stats.summary
    before_total = f"{original.num_rows:,} → " if original is not None else ""
    sections = [
        f"{header}# {markdown_text(title)}\n",
        f"Exported by rebalance as a {task} dataset with splits {', '.join(splits)}; "
        f"{num_shards} parquet shard(s) per split under `data/`, and `datasets.save_to_disk` files.\n",
        '```python\nimport datasets\nds = datasets.load_from_disk("<this folder>")\n'
        '# or: datasets.load_dataset("<this folder>")\n```\n',
        f"## Class counts (train images)\n\n{before_total}{dataset.num_rows:,} images, {summary['classes']} classes, "
        f"imbalance ratio {_ratio(summary['imbalance_ratio'])}; buckets (rare ≤ {thresholds[0]} < common ≤ {thresholds[1]} < frequent "
        "images per class, counted before rebalancing, or the dataset's own LVIS field) are recorded per class in "
        "`export.json` (`class_buckets`), which `rebalance train` reads.\n",
        "![class counts before and after](plots/class_counts.png)\n",
        markdown_table(pa.table(counts)),
    ]
    if "per epoch" in counts:
        sections.append("`per epoch`: expected draws per epoch, Σ `repeat_factor` over the class's images.\n")
    sections += ["## Removed images\n", "\n".join(removal_lines) + "\n"]
    if not embed_images and any(
        in_container(name) for name in dataset.images["file_name"].to_pylist() if name
    ):
        sections.append(
            "## Image references\n\nThe images are not in this dataset: `image_reference` says where each one "
            "is. A plain path is a file (also in `image.path`); `<shard>#<offset>+<size>:<member>` is the "
            "member `<member>` of the tar shard `<shard>`, whose bytes are the `<size>` bytes at byte "
            "`<offset>` of the shard; `<file>#<row group>/<row>:<column>` is a cell of a parquet file holding "
            "the image's bytes. `rebalance.io.references.image_ref(reference, None).read_bytes()` reads "
            "either.\n"
        )
    sections.append("The columns `source` and `file_name` record where each row comes from.\n")
    retrieval = retrieval_summary(dataset)
    if retrieval["retrieved"]:
        # Rows taken by caption without ranking have no score.
        score = "" if retrieval["mean_score"] is None else f" (mean {retrieval['mean_score']:.3f})"
        line = (
            f"## Retrieved images\n\n{retrieval['retrieved']:,} rows have `source: retrieved`: pool images added to "
            "classes below the balance target. `retrieval_query` says which query found each one, "
            f"`retrieval_score` its cosine similarity{score}, `pool_image_id` and "
            "`pool_file_name` where it came from."
        )
        if retrieval["precision"] is not None:
            line += (
                f" {retrieval['precision']:.1%} of the {retrieval['with_reference_label']:,} with a reference label "
                "carry the class they were retrieved for."
            )
        sections.append(line + "\n")
    by_class = retrieval_by_class(dataset)
    if by_class:
        cells = retrieval_table_rows(by_class)
        sections += [
            "### Retrieval precision per class\n\n"
            "Estimated without pool labels (leave-one-out canaries through the same rule, the pool's class "
            "mix by black-box shift estimation; see rebalance's docs/retrieval_precision.md); a class keeps "
            "its best-ranked candidates while the lower end of the estimate's 90% interval stays at or above "
            "`min_precision`. `reference precision` "
            "uses the pool's reference labels, which retrieval never read.\n",
            markdown_table(
                pa.table({name: [row[i] for row in cells] for i, name in enumerate(RETRIEVAL_HEADER)})
            ),
        ]
    funnel = caption_funnel(dataset)
    if funnel:
        sections += [
            f"### Caption retrieval per class\n\n{CAPTION_FUNNEL_TEXT}\n",
            markdown_table(
                pa.table({name: [row[i] for row in funnel] for i, name in enumerate(CAPTION_HEADER)})
            ),
        ]
    if lineage is not None:
        config = yaml.safe_dump(lineage, sort_keys=False, allow_unicode=True)
        sections.append(
            f"## Pipeline\n\nThe exact configuration of every step that produced this dataset:\n\n```yaml\n{config}```\n"
        )
    return "\n".join(sections), plots


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
