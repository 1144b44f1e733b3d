"""One rule for picking the torch device, shared by encoders, judges and the trainer, and the GPUs a
machine has.

``auto`` means the process's first visible GPU: in a dask GPU worker, which ``CUDA_VISIBLE_DEVICES``
pins to one device, that is the worker's own GPU."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
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


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, by id, found without importing torch (planning and
    sizing a cluster stay torch-free): ``CUDA_VISIBLE_DEVICES`` when it is set, else the GPUs that
    ``nvidia-smi -L`` lists, else none."""
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    if pinned is not None:
        return [device.strip() for device in pinned.split(",") if device.strip() and device.strip() != "-1"]
    return list(_installed_gpus())


@functools.cache
def _installed_gpus() -> tuple[str, ...]:
    # Asked once per process: the runner asks before every sharded step, and the GPUs a machine
    # has do not change during a run.
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = (line for line in listed.splitlines() if line.startswith("GPU "))
    return tuple(str(number) for number, _ in enumerate(gpus))
