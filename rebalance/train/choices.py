"""The names of the training choices. Torch-free, so the step signatures that use them (and every
command that only plans or checks a pipeline) do not import torch."""

from __future__ import annotations

from typing import Literal

LossName = Literal["ce", "balanced_softmax", "logit_adjustment", "class_balanced", "focal", "ldam_drw"]
BALANCED_LOSSES = ("balanced_softmax", "logit_adjustment", "class_balanced", "ldam_drw")
SamplerName = Literal["uniform", "repeat_factor"]
