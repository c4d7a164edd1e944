"""Where tensors run: CUDA when present, else the CPU."""

from __future__ import annotations

import torch


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve(device: torch.device | None) -> torch.device:
    """`device`, or the default device when it is None."""
    return device if device is not None else default_device()
