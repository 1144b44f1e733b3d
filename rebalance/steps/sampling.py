"""Sampling steps: attach a per-image ``repeat_factor`` that trainers (or the bundled sampler) use."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from rebalance.core.registry import step
from rebalance.domain.artifacts import EpochIndex, LabeledDataset
from rebalance.errors import DataError

SamplingMethod = Literal["rfs", "irfs", "class_balanced", "sqrt", "power"]
_POWERS = {"class_balanced": 0.0, "sqrt": 0.5}


@step("repeat_factors", role="sets_sampling")
def repeat_factors_step(
    dataset: LabeledDataset,
    *,
    method: SamplingMethod = "rfs",
    threshold: PositiveFloat = 0.001,
    power: float = 0.5,
) -> LabeledDataset:
    """Set each image's repeat_factor for RFS, IRFS, class-balanced, square-root or power sampling.

    rfs/irfs (detection or classification): r_i = max over the image's categories of
    max(1, sqrt(threshold / f_c)), f_c = image fraction (rfs) or sqrt(image · instance fraction)
    (irfs); LVIS uses threshold 0.001. class_balanced / sqrt / power (one label per image): r_i =
    N · p_c / n_c with p_c ∝ n_c^q, q = 0, 0.5 or ``power``. Rows are not duplicated here: the
    factor travels with the dataset to the export and the sampler.
    """
    from rebalance.methods.sampling import class_balanced_factors, repeat_factors

    if method in ("rfs", "irfs"):
        factors = repeat_factors(dataset.category_lists(), threshold=threshold, method=method)
    else:
        labels = dataset.single_labels(f"{method} sampling (rfs or irfs handle detection data)")
        factors = class_balanced_factors(labels, power=_POWERS.get(method, power))
    column = pa.array(factors, pa.float64())
    images = dataset.images
    if "repeat_factor" in images.column_names:
        images = images.set_column(images.schema.get_field_index("repeat_factor"), "repeat_factor", column)
    else:
        images = images.append_column("repeat_factor", column)
    return LabeledDataset(
        images, dataset.annotations, dataset.categories, dataset.removed, dataset.image_root
    )


@step("epoch_index", role="exports")
def epoch_index(
    dataset: LabeledDataset,
    *,
    epochs: PositiveInt = 1,
    rounding: Literal["stochastic", "ceil"] = "stochastic",
    shuffle: bool = True,
    seed: NonNegativeInt = 0,
) -> EpochIndex:
    """Materialise the image ids of each epoch, repeated per repeat_factor, for trainers that cannot sample.

    stochastic: floor(r) + Bernoulli(r - floor(r)) copies, redrawn per epoch from (seed, epoch), as
    detectron2's RepeatFactorTrainingSampler; ceil: ceil(r) copies, as mmengine's
    ClassBalancedDataset. Needs a repeat_factors step upstream.
    """
    from rebalance.methods.sampling import epoch_indices

    if "repeat_factor" not in dataset.images.column_names:
        raise DataError(
            "the dataset has no repeat_factor column; add a repeat_factors step before epoch_index"
        )
    factors = dataset.images["repeat_factor"].to_numpy()
    image_ids = dataset.images["image_id"].to_numpy()
    parts = [
        epoch_indices(factors, seed=seed, epoch=e, rounding=rounding, shuffle=shuffle) for e in range(epochs)
    ]
    return EpochIndex(
        pa.table(
            {
                "epoch": pa.array(np.repeat(np.arange(epochs), [len(p) for p in parts]), pa.int32()),
                "position": pa.array(np.concatenate([np.arange(len(p)) for p in parts]), pa.int64()),
                "image_id": pa.array(image_ids[np.concatenate(parts)], pa.int64()),
            }
        )
    )
