from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rebalance.errors import RebalanceError
from rebalance.train.trainer import HeadConfig, predict, train_head


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 8)) * 3
    labels = np.repeat([0, 1, 2], [200, 40, 8])
    return (centers[labels] + rng.standard_normal((len(labels), 8))).astype(np.float32), labels


def test_learns_separable_blobs_and_is_seeded() -> None:
    x, y = blobs()
    head, history = train_head(x, y, 3, HeadConfig(epochs=20, batch_size=32, seed=1))
    assert (predict(head, x) == y).mean() > 0.95 and history[-1] < history[0]
    again, _ = train_head(x, y, 3, HeadConfig(epochs=20, batch_size=32, seed=1))
    assert torch.equal(head.classifier.weight, again.classifier.weight)
    other, _ = train_head(x, y, 3, HeadConfig(epochs=20, batch_size=32, seed=2))
    assert not torch.equal(head.classifier.weight, other.classifier.weight)


def test_repeat_factor_sampler_needs_factors_and_warns_on_double_correction() -> None:
    x, y = blobs()
    with pytest.raises(RebalanceError, match="needs repeat factors"):
        train_head(x, y, 3, HeadConfig(sampler="repeat_factor", epochs=1))
    factors = np.where(y == 2, 5.0, 1.0)
    with pytest.warns(UserWarning, match="corrected twice"):
        train_head(
            x,
            y,
            3,
            HeadConfig(sampler="repeat_factor", loss="balanced_softmax", epochs=1),
            repeat_factors=factors,
        )


def test_mlp_head_and_tau_normalisation() -> None:
    x, y = blobs()
    head, _ = train_head(x, y, 3, HeadConfig(hidden=16, epochs=5, tau_norm=1.0))
    norms = head.classifier.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5) and head.classifier.bias.abs().sum() == 0


def test_crt_retrains_the_classifier_with_class_balanced_sampling() -> None:
    x, y = blobs()
    head, history = train_head(x, y, 3, HeadConfig(hidden=16, epochs=4, crt_epochs=3, batch_size=32))
    assert len(history) == 7 and (predict(head, x) == y).mean() > 0.9


@pytest.mark.parametrize("crt_epochs", [0, 2])
def test_a_run_resumes_from_its_checkpoint_exactly(tmp_path, crt_epochs: int) -> None:
    x, y = blobs()
    config = HeadConfig(hidden=8, epochs=6, crt_epochs=crt_epochs, batch_size=32)
    uninterrupted, full_history = train_head(x, y, 3, config)
    checkpoint = tmp_path / "head.pt"
    train_head(
        x, y, 3, dataclasses.replace(config, epochs=3, crt_epochs=0), checkpoint=checkpoint
    )  # "killed" at epoch 3
    resumed, history = train_head(x, y, 3, config, checkpoint=checkpoint)
    assert history == pytest.approx(full_history)
    for name, tensor in uninterrupted.state_dict().items():
        assert torch.allclose(tensor, resumed.state_dict()[name]), name
    again, _ = train_head(x, y, 3, config, checkpoint=checkpoint)  # finished: nothing left to train
    assert torch.equal(again.classifier.weight, resumed.classifier.weight)
    with pytest.raises(RebalanceError, match="another configuration"):
        train_head(x, y, 3, dataclasses.replace(config, lr=0.5), checkpoint=checkpoint)


def test_a_zero_shot_start_reproduces_the_text_classifier_on_standardised_inputs() -> None:
    import torch

    from rebalance.train.trainer import Head

    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(50, 8)), dtype=torch.float32)
    text = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(3, 8)), dtype=torch.float32), dim=1)
    head = Head(x.mean(0), x.std(0), num_classes=3, hidden=0)
    head.init_zero_shot(text, scale=100.0)
    with torch.no_grad():
        torch.testing.assert_close(head(x), 100.0 * x @ text.T, rtol=1e-4, atol=1e-3)
    with pytest.raises(RebalanceError, match="needs a linear probe"):
        Head(x.mean(0), x.std(0), num_classes=3, hidden=4).init_zero_shot(text, scale=1.0)


def test_training_from_a_zero_shot_start_keeps_its_predictions_at_a_negligible_learning_rate() -> None:
    rng = np.random.default_rng(1)
    text = rng.normal(size=(4, 16)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    labels = rng.integers(0, 4, 200)
    features = text[labels] + rng.normal(scale=0.3, size=(200, 16)).astype(np.float32)
    config = HeadConfig(epochs=1, lr=1e-12, weight_decay=0.0, device="cpu")
    head, _ = train_head(features, labels, 4, config, zero_shot=text)
    assert np.array_equal(predict(head, features), (features @ text.T).argmax(1))


class _RunsCode:
    def __reduce__(self):
        return (print, ("this ran while the checkpoint was read",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys) -> None:
    x, y = blobs()
    checkpoint = tmp_path / "head.pt"
    torch.save({"config": _RunsCode()}, checkpoint)
    with pytest.raises(RebalanceError, match="holds objects other than weights"):
        train_head(x, y, 3, HeadConfig(epochs=1), checkpoint=checkpoint)
    assert "this ran" not in capsys.readouterr().out


def test_class_counts_set_the_prior_that_logit_adjustment_corrects_for() -> None:
    # Features carry no information, so the probe's logits are its biases b, and logit adjustment's
    # optimum solves softmax(b + log π) = the label frequencies f: b_c = log(f_c / π_c) + const.
    y = np.repeat([0, 1, 2], [200, 40, 8])
    x = np.zeros((len(y), 4), np.float32)
    config = HeadConfig(loss="logit_adjustment", epochs=100, lr=0.1, batch_size=len(y), weight_decay=0)
    own, _ = train_head(x, y, 3, config)
    same, _ = train_head(x, y, 3, config, class_counts=np.array([200, 40, 8]))
    assert torch.equal(own.classifier.bias, same.classifier.bias)
    assert np.allclose(own.classifier.bias.detach().numpy(), own.classifier.bias[0].item(), atol=0.01)
    declared, _ = train_head(x, y, 3, config, class_counts=np.array([100, 100, 2]))
    bias = declared.classifier.bias.detach().numpy()
    expected = np.log([200 / 100, 40 / 100, 8 / 2])  # log(f_c / π_c) up to the shared constant
    np.testing.assert_allclose(bias - bias[0], expected - expected[0], atol=0.02)
    with pytest.raises(RebalanceError, match="one count for each of 3 classes"):
        train_head(x, y, 3, config, class_counts=np.array([1, 2]))
