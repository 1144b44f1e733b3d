"""One rule for picking the torch device, shared by encoders, judges and the trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Device = Literal["auto", "cpu", "cuda"]


def resolve_device(device: str) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; ``cpu``/``cuda`` force one."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
