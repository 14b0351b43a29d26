"""Shared, session-cached tiny models and data for the diffusion tests (not a conftest: the lead owns that).

Each test module wraps these in its own session fixtures; the module-level cache makes the tiny SD
and the trained LoRA be built once per pytest session even when several modules use them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

_CACHE: dict[str, object] = {}


def has_cxx() -> bool:
    """Whether Inductor can build its CPU kernels here: they are C++, compiled at the first call."""
    return bool(shutil.which("g++") or shutil.which("c++"))


def skip_without_cxx() -> None:
    import pytest

    if not has_cxx():
        pytest.skip("Inductor's CPU kernels need a C++ compiler")


#: a small but real fine-tune config: the schema's keys, tiny sizes, CPU-friendly optimizer/precision
FINETUNE = {
    "instance_prompt": "a dermoscopic image of a {label} skin lesion",
    "resolution": 64,
    "train_batch_size": 2,
    "num_train_epochs": 1,
    "max_train_steps": 30,
    "gradient_accumulation_steps": 1,
    "lora_learning_rate": 1.0e-3,
    "lr_scheduler": "constant_with_warmup",
    "lr_warmup_steps": 2,
    "optimizer": "adamw",
    "max_grad_norm": 1.0,
    "mixed_precision": "fp16",  # must be downgraded to 'no' on CPU
    "rank": 4,
    "alpha": 4,
    "target_modules": ["to_k", "to_q", "to_v", "to_out.0"],
    "checkpointing_steps": 10,
    "center_crop": True,
    "random_flip": True,
    "seed": 7,
    # validation kept small: one image per class, 2 sampler steps, at the end only (added keys)
    "validation_epochs": 0,
    "num_validation_images": 1,
    "validation_inference_steps": 2,
}

GENERATE = {
    "prompt": "a dermoscopic image of a {label} skin lesion",
    "negative_prompt": "",
    "samplers": {"euler": {"steps": 6}, "euler_a": {"steps": 6}, "plms": {"steps": 6}},
    "guidance_scale": 7.0,
    "resolution": 64,
    "batch_size": 4,
    "lora_scale": 1.0,
    "seed": 42,
}


def tiny_sd(tmp_path_factory) -> Path:
    if "sd" not in _CACHE:
        from dermsynth import tiny

        _CACHE["sd"] = tiny.build("sd", tmp_path_factory.mktemp("tiny") / "sd", seed=0)
    return _CACHE["sd"]


def lesion_images(tmp_path_factory, n: int = 6, size: int = 72) -> pd.DataFrame:
    """Dermoscopy-like toy images: a round even lesion (benign) or a ragged two-colour one (malignant).

    72 px, not 64, so the resize + centre-crop path of the training loader is exercised.
    """
    if "images" not in _CACHE:
        d = tmp_path_factory.mktemp("lesions")
        rng = np.random.default_rng(0)
        rows = []
        for i in range(n):
            label = ("benign", "malignant")[i % 2]
            im = Image.new("RGB", (size, size), (228, 196, 178))
            draw = ImageDraw.Draw(im)
            c = size / 2 + rng.uniform(-4, 4, 2)
            if label == "benign":
                r = rng.uniform(14, 20)
                draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=(120, 80, 60))
            else:
                ang = np.linspace(0, 2 * np.pi, 12, endpoint=False)
                rad = rng.uniform(10, 26, 12)
                pts = [(c[0] + r * np.cos(a), c[1] + r * np.sin(a)) for a, r in zip(ang, rad, strict=True)]
                draw.polygon(pts, fill=(70, 40, 35))
                draw.ellipse([c[0] - 5, c[1] - 5, c[0] + 5, c[1] + 5], fill=(40, 50, 90))
            path = d / f"{label}_{i}.png"
            im.save(path)
            rows.append({"path": str(path), "label": label})
        _CACHE["images"] = pd.DataFrame(rows)
    return _CACHE["images"]


def trained_lora(tmp_path_factory) -> tuple[Path, dict]:
    """(output dir, summary) of one small LoRA training run on the tiny SD."""
    if "lora" not in _CACHE:
        from dermsynth.diffusion.finetune import train_lora

        root = tmp_path_factory.mktemp("lora")
        summary = train_lora(
            str(tiny_sd(tmp_path_factory)),
            lesion_images(tmp_path_factory),
            root / "out",
            FINETUNE,
            root / "out.ckpt",
            threads=1,
            device="cpu",
        )
        _CACHE["lora"] = (root / "out", summary)
    return _CACHE["lora"]


def base_pipeline(tmp_path_factory):
    """The tiny SD pipeline without LoRA, on CPU (cached: loading costs ~0.3 s)."""
    if "pipe" not in _CACHE:
        from dermsynth.diffusion.pipeline import load_pipeline

        _CACHE["pipe"] = load_pipeline(str(tiny_sd(tmp_path_factory)), device="cpu")
    return _CACHE["pipe"]
