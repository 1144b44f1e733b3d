"""Long-tail classification losses. ``n_c`` is the number of training samples of class c.

- ``ce``: cross-entropy, −log softmax(z)_y.
- ``balanced_softmax`` (Ren et al., NeurIPS 2020): cross-entropy on z_c + log n_c. The same loss as
  ``logit_adjustment`` at τ = 1 (log π_c = log n_c − log N, and softmax ignores a shift shared
  by all classes); kept under its own name for configs that cite it, not run twice by compare.
- ``logit_adjustment`` (Menon et al., ICLR 2021): cross-entropy on z_c + τ log π_c, π_c = n_c / N.
- ``class_balanced`` (Cui et al., CVPR 2019): cross-entropy weighted by w_c ∝ (1 − β) / (1 − β^{n_c}),
  normalised so that Σ_c w_c = C.
- ``focal`` (Lin et al., ICCV 2017): −(1 − p_y)^γ log p_y.
- ``ldam_drw`` (Cao et al., NeurIPS 2019): cross-entropy on s · (z − Δ_y e_y) with margins
  Δ_c ∝ n_c^{−1/4} scaled so max Δ = ``max_margin``; deferred re-weighting switches to the
  class-balanced weights (β = 0.9999) once ``progress`` ≥ ``drw_start``.

Every loss is the mean over the batch; ``progress`` is the fraction of training done (0 to 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from rebalance.train.choices import LossName

Loss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def class_balanced_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """w_c = (1 − β) / (1 − β^{n_c}), normalised to sum to the number of classes."""
    effective = (1.0 - torch.pow(beta, counts.double())) / (1.0 - beta)
    weights = 1.0 / effective.clamp_min(1e-12)
    return (weights / weights.sum() * len(counts)).float()


def balanced_softmax_loss(logits: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits + torch.log(counts.float().clamp_min(1.0)), targets)


def logit_adjusted_loss(
    logits: torch.Tensor, targets: torch.Tensor, counts: torch.Tensor, tau: float
) -> torch.Tensor:
    prior = counts.float().clamp_min(1.0) / counts.float().clamp_min(1.0).sum()
    return F.cross_entropy(logits + tau * torch.log(prior), targets)


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float, weight: torch.Tensor | None = None
) -> torch.Tensor:
    log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]
    loss = -((1.0 - log_p.exp()) ** gamma) * log_p
    if weight is not None:
        loss = loss * weight[targets]
    return loss.mean()


def ldam_margins(counts: torch.Tensor, max_margin: float) -> torch.Tensor:
    margins = 1.0 / counts.float().clamp_min(1.0) ** 0.25
    return margins * (max_margin / margins.max())


def ldam_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    margins: torch.Tensor,
    scale: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    adjusted = logits - F.one_hot(targets, logits.shape[1]).to(logits.dtype) * margins[targets][:, None]
    return F.cross_entropy(scale * adjusted, targets, weight=weight)


def make_loss(
    name: LossName,
    counts: torch.Tensor,
    *,
    tau: float = 1.0,
    beta: float = 0.9999,
    gamma: float = 2.0,
    max_margin: float = 0.5,
    scale: float = 30.0,
    drw_start: float = 0.8,
) -> Loss:
    """The loss ``name`` as ``loss(logits, targets, progress)`` for classes with ``counts`` samples."""
    counts = counts.float()
    if name == "ce":
        return lambda logits, targets, progress: F.cross_entropy(logits, targets)
    if name == "balanced_softmax":
        return lambda logits, targets, progress: balanced_softmax_loss(
            logits, targets, counts.to(logits.device)
        )
    if name == "logit_adjustment":
        return lambda logits, targets, progress: logit_adjusted_loss(
            logits, targets, counts.to(logits.device), tau
        )
    weights = class_balanced_weights(counts, beta)
    if name == "class_balanced":
        return lambda logits, targets, progress: F.cross_entropy(
            logits, targets, weight=weights.to(logits.device)
        )
    if name == "focal":
        return lambda logits, targets, progress: focal_loss(logits, targets, gamma)
    if name == "ldam_drw":
        margins = ldam_margins(counts, max_margin)

        def ldam_drw(logits: torch.Tensor, targets: torch.Tensor, progress: float) -> torch.Tensor:
            weight = weights.to(logits.device) if progress >= drw_start else None
            return ldam_loss(logits, targets, margins.to(logits.device), scale, weight)

        return ldam_drw
    raise ValueError(f"unknown loss {name!r}")


def tau_normalise(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """τ-normalisation (Kang et al., ICLR 2020): each class's weight row divided by ‖w_c‖^τ."""
    return weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12) ** tau
