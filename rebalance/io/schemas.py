"""The on-disk layout of a labelled dataset's tables (images, annotations, categories, removed rows).

Readers (``io.coco``, the image-folder readers) build tables in these schemas and
``rebalance.domain.artifacts.LabeledDataset`` writes and reads them; the schemas live here, below
both, so that a reader never needs the domain type.
"""

from __future__ import annotations

import pyarrow as pa

IMAGES_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("file_name", pa.string()),
        ("split", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("source", pa.string()),
    ]
)
ANNOTATIONS_SCHEMA = pa.schema(
    [
        ("annotation_id", pa.int64()),
        ("image_id", pa.int64()),
        ("category_id", pa.int64()),
        ("bbox", pa.list_(pa.float64())),
        ("area", pa.float64()),
    ]
)
CATEGORIES_SCHEMA = pa.schema(
    [
        ("category_id", pa.int64()),
        ("name", pa.string()),
        ("synonyms", pa.list_(pa.string())),
        ("definition", pa.string()),
        ("synset", pa.string()),
        ("frequency", pa.string()),
        ("image_count", pa.int64()),
        ("instance_count", pa.int64()),
    ]
)
REMOVED_SCHEMA = pa.schema(
    [
        ("image_id", pa.int64()),
        ("file_name", pa.string()),
        ("source", pa.string()),
        ("category_ids", pa.list_(pa.int64())),
        ("step", pa.string()),
        ("reason", pa.string()),
        # The kept image a removed one duplicated (dedup), so a report can show the two side by side.
        ("kept_image_id", pa.int64()),
    ]
)
