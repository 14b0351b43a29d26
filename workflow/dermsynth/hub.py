"""Loading pretrained models by hub id or local directory, with one clear line when missing."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelNotFoundError


def load_pretrained(cls, name_or_path: str, **kwargs):
    """``cls.from_pretrained`` that turns "not cached and no network" into ModelNotFoundError."""
    local = Path(name_or_path)
    if local.is_absolute() or name_or_path.startswith((".", "results/")):
        if not local.exists():
            raise ModelNotFoundError(
                f"model directory '{name_or_path}' does not exist: build it (demo: the tiny_models "
                "rule) or point the config at a downloaded model"
            )
    try:
        return cls.from_pretrained(name_or_path, **kwargs)
    except OSError as e:
        if local.exists():
            raise ModelNotFoundError(f"model directory '{name_or_path}' is incomplete: {e}") from None
        raise ModelNotFoundError(
            f"model '{name_or_path}' is not available offline: on a networked machine run "
            f"`huggingface-cli download {name_or_path}` (fills the HF cache) or save it to a "
            "directory and set the config key to that path"
        ) from None
