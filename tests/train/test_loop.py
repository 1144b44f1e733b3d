"""The one training loop: every trainer runs through fit(), and a killed run resumes to the same result."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from rebalance.train import loop
from rebalance.train.cnn import CNNConfig, train_cnn
from rebalance.train.loop import Phase, TensorRows, fit
from rebalance.train.trainer import HeadConfig, train_head

TRAIN = Path(loop.__file__).parent


class _Killed(Exception):
    """Stands in for a killed process: raised right after the n-th checkpoint is written."""


def _killed_after(monkeypatch: pytest.MonkeyPatch, saves: int) -> None:
    real_save, written = loop._save, []

    def save_then_die(checkpoint: Path, state: dict) -> None:
        real_save(checkpoint, state)
        written.append(state["epoch"])
        if len(written) == saves:
            raise _Killed

    monkeypatch.setattr(loop, "_save", save_then_die)


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_the_loop_exists_once_every_trainer_calls_fit() -> None:
    stepping = {
        path.name
        for path in TRAIN.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in ("backward", "zero_grad")
    }
    assert stepping == {"loop.py"}
    callers = {
        path.name for path in TRAIN.glob("*.py") if "fit(" in path.read_text() and path.name != "loop.py"
    }
    assert {"trainer.py", "cnn.py", "finetune.py"} <= callers


def _two_phase_model(seed: int = 0) -> tuple[nn.Module, list]:
    """A body and a classifier: a cosine-scheduled, augmented main phase, then a cRT-style phase."""
    rng = np.random.default_rng(seed)
    x = torch.tensor(rng.normal(size=(90, 6)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 3, 90))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    ce = lambda logits, targets, progress: nn.functional.cross_entropy(logits, targets)  # noqa: E731

    def jitter(inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return inputs + 0.1 * torch.randn(inputs.shape, generator=generator)

    def reset_classifier() -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            model[2].reset_parameters()
        for parameter in model[0].parameters():
            parameter.requires_grad_(False)

    common = dict(lr=0.05, weight_decay=1e-4, batch_size=16, seed=seed)
    main = Phase(
        "main",
        model,
        model.parameters(),
        TensorRows(x, y),
        ce,
        4,
        **common,
        schedule="cosine",
        transform=jitter,
        transform_seed=seed + 7,
        train_modules=[model],
    )
    crt = Phase(
        "crt",
        model,
        model[2].parameters(),
        TensorRows(x, y),
        ce,
        3,
        **common,
        factors=np.where(y.numpy() == 0, 1.0, 2.5),
        setup=reset_classifier,
    )
    return model, [main, crt]


@pytest.mark.parametrize("killed_after", [2, 5, 6])  # in the main phase, in cRT, at the end of cRT
def test_a_run_killed_after_any_epoch_resumes_to_the_uninterrupted_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed_after: int
) -> None:
    model, phases = _two_phase_model()
    history = fit(model, phases, device=torch.device("cpu"))
    assert len(history) == 7 and all(np.isfinite(history))
    uninterrupted = _weights(model)

    checkpoint = tmp_path / "run.pt"
    with monkeypatch.context() as patched:
        _killed_after(patched, killed_after)
        model, phases = _two_phase_model()
        with pytest.raises(_Killed):
            fit(model, phases, device=torch.device("cpu"), checkpoint=checkpoint, run={"seed": 0})
    model, phases = _two_phase_model()  # a new process: fresh weights, the checkpoint on disk
    resumed = fit(model, phases, device=torch.device("cpu"), checkpoint=checkpoint, run={"seed": 0})
    assert resumed == history
    assert _same(_weights(model), uninterrupted)


def test_a_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    from rebalance.errors import RebalanceError

    model, phases = _two_phase_model()
    fit(model, phases, device=torch.device("cpu"), checkpoint=tmp_path / "run.pt", run={"seed": 0})
    model, phases = _two_phase_model()
    with pytest.raises(RebalanceError, match="another configuration"):
        fit(model, phases, device=torch.device("cpu"), checkpoint=tmp_path / "run.pt", run={"seed": 1})


def test_the_cnn_with_crt_resumes_from_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    pixels = torch.from_numpy(rng.integers(0, 255, (48, 1, 12, 12), dtype=np.uint8))
    labels = np.arange(48) % 3
    config = HeadConfig(epochs=3, crt_epochs=2, batch_size=16, lr_schedule="cosine", device="cpu")
    architecture = CNNConfig(image_size=12, width=4)
    straight = train_cnn(pixels, labels, 3, config, architecture)
    with monkeypatch.context() as patched:
        _killed_after(patched, 4)  # inside the cRT phase, whose features are rebuilt on resume
        with pytest.raises(_Killed):
            train_cnn(pixels, labels, 3, config, architecture, checkpoint=tmp_path / "cnn.pt")
    resumed = train_cnn(pixels, labels, 3, config, architecture, checkpoint=tmp_path / "cnn.pt")
    assert resumed.history == straight.history
    assert _same(_weights(resumed.model), _weights(straight.model))


def test_the_probe_trains_under_either_schedule_and_the_schedule_changes_the_result() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    y = rng.integers(0, 3, 120)
    constant, _ = train_head(x, y, 3, HeadConfig(epochs=3, batch_size=32, device="cpu"))
    cosine, _ = train_head(x, y, 3, HeadConfig(epochs=3, batch_size=32, lr_schedule="cosine", device="cpu"))
    assert not torch.equal(constant.classifier.weight, cosine.classifier.weight)


def test_training_leaves_the_callers_random_state_alone() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.integers(0, 2, 64)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_head(x, y, 2, HeadConfig(epochs=2, batch_size=16, device="cpu"))
    assert torch.equal(torch.rand(3), expected)


def test_fine_tuning_decodes_in_dataloader_workers_with_the_same_result(tmp_path: Path) -> None:
    from PIL import Image

    from rebalance.models.encoders import EncoderSpec, load_encoder
    from rebalance.models.tiny import save_tiny_open_clip
    from rebalance.train.finetune import finetune

    config_path, weights = save_tiny_open_clip(tmp_path / "clip")
    rng = np.random.default_rng(0)
    paths = []
    for row in range(12):
        path = tmp_path / f"{row}.png"
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    labels = np.arange(12) % 3
    config = HeadConfig(epochs=2, batch_size=4, device="cpu")
    results = []
    for workers in (0, 2):
        tower = load_encoder(
            EncoderSpec("open_clip", str(config_path), str(weights)), device="cpu", keep=False
        ).image_tower()
        tuned = finetune(tower, paths, labels, 3, config, encoder_lr=1e-3, workers=workers)
        results.append(
            (tuned.history, _weights(tuned.head), tuned.predict(paths, 4, torch.device("cpu"), workers))
        )
    (history, head, predicted), (history_w, head_w, predicted_w) = results
    assert history == history_w and _same(head, head_w) and np.array_equal(predicted, predicted_w)
