"""The one training loop: phases fed by a DataLoader, an LR schedule, checkpoint and resume.

Every trainer in ``rebalance.train`` (the probe on fixed features, the small CNN, cRT, encoder
fine-tuning) describes its training as a list of ``Phase`` objects and hands them to ``fit``; the
loop itself (epoch order, batches, mixed precision, the schedule, checkpoints) exists once. The
shape follows torchtune's single-device recipes: one loop, state saved after every epoch, a rerun
with the same checkpoint path continuing where the last finished epoch left off.

A phase is one optimisation run over one dataset: the main training, or cRT's classifier
re-training on frozen features (Kang et al., ICLR 2020). Each epoch's order is a seeded shuffle,
or repeat-factor draws with stochastic rounding (``epoch_indices``, as detectron2's
``RepeatFactorTrainingSampler``) when the phase has factors.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset

from rebalance.core.fs import write_bytes_atomic
from rebalance.errors import RebalanceError
from rebalance.methods.sampling import epoch_indices
from rebalance.train.choices import HeadConfig, ScheduleName
from rebalance.train.losses import Loss


class BatchDataset(Dataset):
    """Rows fetched a batch at a time: ``dataset[[i, j, ...]]`` gives (inputs, targets) tensors.

    A DataLoader given a ``BatchSampler`` as its sampler and ``batch_size=None`` hands each batch
    of indices to ``__getitem__`` in one call, so an in-memory tensor is indexed once per batch
    instead of once per row and collated.
    """

    def __len__(self) -> int:
        raise NotImplementedError


class TensorRows(BatchDataset):
    """In-memory rows (features or uint8 pixels) and their targets."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[rows], self.targets[rows]


@dataclasses.dataclass
class Phase:
    """One optimisation phase.

    Attributes:
        name: recorded in checkpoints ("main", "crt").
        forward: inputs (on the device) -> logits.
        parameters: the optimiser's parameter groups (``{"params": ..., "lr": ...}``) or parameters.
        data: the rows the phase trains on.
        loss: ``loss(logits, targets, progress)``, progress = epoch / epochs in [0, 1).
        epochs: how many passes.
        lr, weight_decay: AdamW's; a group's own ``lr`` wins.
        batch_size: rows per optimiser step.
        seed: seeds the shuffle, and the repeat-factor draws with ``factors``.
        factors: per-row repeat factors; None shuffles every row once an epoch.
        schedule: ``constant``, or ``cosine`` decay from ``lr`` to 0 over every step of the phase
            (SGDR without restarts, Loshchilov & Hutter, ICLR 2017).
        transform: applied to a batch's inputs before ``forward`` (augmentation), given the phase's
            own seeded generator, whose state is checkpointed with the rest.
        transform_seed: seeds that generator.
        train_modules: put in training mode at the start of every epoch (dropout, batch norm).
        setup: run once before the phase starts, also when a resumed run enters it (re-initialise a
            classifier, freeze the body, precompute features). Must be deterministic.
        autocast: float16 autocast on CUDA (ignored on CPU).
        workers: DataLoader worker processes that fetch (decode) batches while the model trains.
    """

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    parameters: Iterable[Any]
    data: BatchDataset
    loss: Loss
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    seed: int
    factors: np.ndarray | None = None
    schedule: ScheduleName = "constant"
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    transform_seed: int = 0
    train_modules: Sequence[nn.Module] = ()
    setup: Callable[[], None] | None = None
    autocast: bool = True
    workers: int = 0

    @classmethod
    def of(
        cls,
        config: HeadConfig,
        name: str,
        forward: Callable[[torch.Tensor], torch.Tensor],
        parameters: Iterable[Any],
        data: BatchDataset,
        loss: Loss,
        *,
        epochs: int | None = None,
        **options: Any,
    ) -> Phase:
        """A phase with ``config``'s learning rate, weight decay, batch size, seed and schedule
        (``options`` may set any other field, or override the schedule); ``epochs`` defaults to
        ``config.epochs``."""
        options.setdefault("schedule", config.lr_schedule)
        return cls(
            name,
            forward,
            parameters,
            data,
            loss,
            config.epochs if epochs is None else epochs,
            config.lr,
            config.weight_decay,
            config.batch_size,
            config.seed,
            **options,
        )


def fit(
    model: nn.Module,
    phases: Sequence[Phase | Callable[[], Phase]],
    *,
    device: torch.device,
    checkpoint: Path | None = None,
    run: dict[str, Any] | None = None,
) -> list[float]:
    """Run ``phases`` in order on ``model``; returns the mean training loss of every epoch.

    A phase may be given as a function that builds it, called when the phase starts (cRT's
    frozen features exist only once the main phase is done). With ``checkpoint``, the model,
    optimiser, schedule and generators are saved atomically after every epoch, and a call with the
    same ``run`` description resumes after the last saved epoch: the result is the same as an
    uninterrupted run. ``run`` holds what must match for a resume to be valid (the configuration
    without its epoch counts, which may grow).
    """
    saved = _load(checkpoint, run or {})
    history: list[float] = []  # every finished phase's epochs, then the current one's
    for number, described in enumerate(phases):
        if saved is not None and saved["phase"] > number:
            continue  # finished before the checkpoint was written; a later phase loads the weights
        resumed = saved is not None and saved["phase"] == number
        if resumed:
            history = list(saved["earlier"])
            # The phase's construction may read the weights (frozen features) and its setup may
            # reset some (a classifier): load, build and set up, then load again in the phase.
            model.load_state_dict(saved["model"])
        phase = described if isinstance(described, Phase) else described()
        if phase.setup is not None:
            phase.setup()
        state = saved if resumed else None
        history += _run_phase(model, phase, number, device, checkpoint, run or {}, history, state)
    return history


def _run_phase(
    model: nn.Module,
    phase: Phase,
    number: int,
    device: torch.device,
    checkpoint: Path | None,
    run: dict[str, Any],
    earlier: list[float],
    saved: dict[str, Any] | None,
) -> list[float]:
    optimizer = torch.optim.AdamW(phase.parameters, lr=phase.lr, weight_decay=phase.weight_decay)
    steps_per_epoch = -(-len(phase.data) // phase.batch_size)  # repeat-factor epochs vary a little
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(phase.epochs * steps_per_epoch, 1))
        if phase.schedule == "cosine"
        else None
    )
    shuffler = torch.Generator().manual_seed(phase.seed)
    augmenter = torch.Generator().manual_seed(phase.transform_seed)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    history: list[float] = []
    start_epoch = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        shuffler.set_state(saved["shuffler"])
        augmenter.set_state(saved["augmenter"])
        history, start_epoch = list(saved["history"]), saved["epoch"] + 1
    for epoch in range(start_epoch, phase.epochs):
        for module in phase.train_modules:
            module.train()
        order = epoch_order(len(phase.data), phase.factors, phase.seed, epoch, shuffler)
        total, batches = 0.0, 0
        for inputs, targets in _batches(phase, order):
            if phase.transform is not None:
                inputs = phase.transform(inputs, augmenter)
            with torch.autocast(
                device.type, dtype=torch.float16, enabled=phase.autocast and device.type == "cuda"
            ):
                logits = phase.forward(inputs.to(device))
            loss = phase.loss(logits.float(), targets.to(device), epoch / max(phase.epochs, 1))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None and scheduler.last_epoch < scheduler.T_max:
                scheduler.step()
            total, batches = total + loss.item(), batches + 1
        history.append(total / max(batches, 1))
        if checkpoint is not None:
            _save(
                checkpoint,
                {
                    "run": run,
                    "phase": number,
                    "epoch": epoch,
                    "history": history,
                    "earlier": earlier,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else {},
                    "shuffler": shuffler.get_state(),
                    "augmenter": augmenter.get_state(),
                },
            )
    return history


def _batches(phase: Phase, order: torch.Tensor) -> DataLoader:
    batches = BatchSampler(order.tolist(), phase.batch_size, drop_last=False)
    return DataLoader(
        phase.data,
        sampler=batches,
        batch_size=None,  # the sampler yields whole batches of indices
        num_workers=phase.workers,
        # Its own generator: a DataLoader otherwise draws its workers' base seed from torch's
        # global generator, and training would change the caller's random state.
        generator=torch.Generator().manual_seed(phase.seed),
    )


def epoch_order(
    count: int, factors: np.ndarray | None, seed: int, epoch: int, shuffler: torch.Generator
) -> torch.Tensor:
    """One epoch's sample order: repeat-factor draws (stochastic rounding, as detectron2) when
    ``factors`` are given, else every sample once in a seeded shuffle."""
    if factors is not None:
        return torch.as_tensor(epoch_indices(factors, seed=seed, epoch=epoch))
    return torch.randperm(count, generator=shuffler)


def _save(checkpoint: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes_atomic(checkpoint, buffer.getvalue())


def _load(checkpoint: Path | None, run: dict[str, Any]) -> dict[str, Any] | None:
    if checkpoint is None or not checkpoint.is_file():
        return None
    # weights_only: tensors, dicts, lists and numbers only, so a checkpoint path given on the
    # command line cannot run code when it is read (a full unpickler would run any callable in it).
    try:
        state = torch.load(checkpoint, weights_only=True)
    except pickle.UnpicklingError as error:
        raise RebalanceError(
            f"{checkpoint} holds objects other than weights and plain values, so it was not loaded "
            f"({str(error).splitlines()[0]}); pass a checkpoint written by rebalance train"
        ) from None
    if state.get("run") != run:
        raise RebalanceError(
            f"{checkpoint} was written by a run with another configuration; delete it or pass another path"
        )
    return state
