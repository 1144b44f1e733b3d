from __future__ import annotations

import math

import pytest
import torch

from rebalance.train.losses import (
    class_balanced_weights,
    ldam_margins,
    make_loss,
    tau_normalise,
)

# Two samples, three classes, counts n = (100, 10, 1).
LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.5]])
TARGETS = torch.tensor([0, 2])
COUNTS = torch.tensor([100.0, 10.0, 1.0])


def nll(rows: list[list[float]], targets: list[int], weights: list[float] | None = None) -> float:
    """Mean (or weight-normalised) −log softmax(row)[target], by hand."""
    terms, norm = [], 0.0
    for row, target in zip(rows, targets, strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        w = 1.0 if weights is None else weights[target]
        terms.append(w * (log_z - row[target]))
        norm += w
    return sum(terms) / norm


def value(name: str, progress: float = 0.0, **options: float) -> float:
    return make_loss(name, COUNTS, **options)(LOGITS, TARGETS, progress).item()


def test_cross_entropy() -> None:
    assert value("ce") == pytest.approx(nll(LOGITS.tolist(), [0, 2]), rel=1e-6)


def test_balanced_softmax_adds_log_counts() -> None:
    shifted = [[v + math.log(n) for v, n in zip(row, [100, 10, 1], strict=True)] for row in LOGITS.tolist()]
    assert value("balanced_softmax") == pytest.approx(nll(shifted, [0, 2]), rel=1e-6)


def test_logit_adjustment_adds_tau_log_prior() -> None:
    prior = [100 / 111, 10 / 111, 1 / 111]
    shifted = [[v + 0.5 * math.log(p) for v, p in zip(row, prior, strict=True)] for row in LOGITS.tolist()]
    assert value("logit_adjustment", tau=0.5) == pytest.approx(nll(shifted, [0, 2]), rel=1e-6)


def test_class_balanced_weights_and_loss() -> None:
    beta = 0.9
    raw = [(1 - beta) / (1 - beta**n) for n in (100, 10, 1)]
    expected = [3 * w / sum(raw) for w in raw]
    assert class_balanced_weights(COUNTS, beta).tolist() == pytest.approx(expected, rel=1e-6)
    assert value("class_balanced", beta=beta) == pytest.approx(
        nll(LOGITS.tolist(), [0, 2], expected), rel=1e-6
    )


def test_focal_down_weights_easy_examples() -> None:
    rows = LOGITS.tolist()
    p = [
        math.exp(rows[0][0]) / sum(math.exp(v) for v in rows[0]),
        math.exp(rows[1][2]) / sum(math.exp(v) for v in rows[1]),
    ]
    expected = sum(-((1 - q) ** 2) * math.log(q) for q in p) / 2
    assert value("focal", gamma=2.0) == pytest.approx(expected, rel=1e-6)
    assert value("focal", gamma=0.0) == pytest.approx(value("ce"), rel=1e-6)


def test_ldam_margins_and_deferred_reweighting() -> None:
    margins = [n**-0.25 for n in (100, 10, 1)]
    expected_margins = [0.5 * m / max(margins) for m in margins]
    assert ldam_margins(COUNTS, 0.5).tolist() == pytest.approx(expected_margins, rel=1e-6)
    rows = LOGITS.tolist()
    adjusted = [
        [30 * (v - (expected_margins[t] if c == t else 0.0)) for c, v in enumerate(row)]
        for row, t in zip(rows, [0, 2], strict=True)
    ]
    assert value("ldam_drw", progress=0.1) == pytest.approx(nll(adjusted, [0, 2]), rel=1e-5)
    weights = class_balanced_weights(COUNTS, 0.9999).tolist()
    assert value("ldam_drw", progress=0.9) == pytest.approx(nll(adjusted, [0, 2], weights), rel=1e-5)


def test_tau_normalisation() -> None:
    weight = torch.tensor([[3.0, 4.0], [0.6, 0.8]])
    assert tau_normalise(weight, 1.0).flatten().tolist() == pytest.approx([0.6, 0.8, 0.6, 0.8])
    assert tau_normalise(weight, 0.0).tolist() == weight.tolist()


def test_balanced_softmax_is_logit_adjustment_at_tau_one() -> None:
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 3, 0, 3])
    counts = torch.tensor([500.0, 60.0, 7.0, 1.0])
    balanced = make_loss("balanced_softmax", counts)(logits, targets, 0.0)
    adjusted = make_loss("logit_adjustment", counts, tau=1.0)(logits, targets, 0.0)
    assert balanced.item() == pytest.approx(adjusted.item(), rel=1e-6)
    assert make_loss("logit_adjustment", counts, tau=0.5)(logits, targets, 0.0).item() != pytest.approx(
        balanced.item(), rel=1e-3
    )
