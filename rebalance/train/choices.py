"""The training choices and the options that hold them. Torch-free, so the step signatures that use
them, and every command that only plans or checks a pipeline or a `rebalance train` call, import no
torch."""

from __future__ import annotations

from typing import Literal

import pydantic

from rebalance.core.device import Device

LossName = Literal["ce", "balanced_softmax", "logit_adjustment", "class_balanced", "focal", "ldam_drw"]
BALANCED_LOSSES = ("balanced_softmax", "logit_adjustment", "class_balanced", "ldam_drw")
SamplerName = Literal["uniform", "repeat_factor"]
ScheduleName = Literal["constant", "cosine"]


@pydantic.dataclasses.dataclass(frozen=True, config=pydantic.ConfigDict(extra="forbid"))
class HeadConfig:
    """How to train: loss and its options, sampler, learning-rate schedule (``cosine`` decays to 0
    over every step of a phase), architecture (hidden = 0 is a linear probe).

    Validated when built, from a pipeline step or from `rebalance train`'s options alike: a loss or
    sampler not in the lists above, or a count or rate out of range, is an error, never a default.
    """

    loss: LossName = "ce"
    sampler: SamplerName = "uniform"
    hidden: pydantic.NonNegativeInt = 0
    epochs: pydantic.PositiveInt = 30
    batch_size: pydantic.PositiveInt = 256
    lr: pydantic.PositiveFloat = 0.01
    lr_schedule: ScheduleName = "constant"
    weight_decay: pydantic.NonNegativeFloat = 1e-4
    tau: float = 1.0
    beta: float = pydantic.Field(0.9999, ge=0.0, lt=1.0)
    gamma: pydantic.NonNegativeFloat = 2.0
    tau_norm: float | None = None
    crt_epochs: pydantic.NonNegativeInt = 0
    device: Device = "auto"
    seed: int = 0
