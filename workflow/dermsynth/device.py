"""The accelerator a job runs on: one answer for classifiers, feature extractors, SAM and diffusion."""

from __future__ import annotations

from .errors import ConfigError


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other name is checked and returned.

    A string, not a ``torch.device``: accelerate, diffusers and ``Module.to`` all take one, and
    ``torch.device(resolve_device(...))`` is there where a ``.type`` is needed.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but CUDA is not available: use 'cpu' or 'auto'")
    return device
