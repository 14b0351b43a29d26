"""The fine-tune's settings: the schema's ``finetune`` section, plus what a schema cannot say."""

from __future__ import annotations

import hashlib
import logging

from ... import config

log = logging.getLogger("dermsynth")

#: keys that may change between a checkpoint and its resume without changing the result
RESUME_NEUTRAL = (
    "channels_last",
    "compile",
    "compile_mode",
    "compile_check_tol",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "logging_steps",
    "validation_epochs",
    "num_validation_images",
    "validation_inference_steps",
    "validation_guidance_scale",
    "validation_sampler",
    "tensorboard",
    "export",
    "card_license",
)


def resolve(cfg: dict) -> dict:
    """``cfg`` over the schema's defaults, validated (a ConfigError names the key)."""
    s = config.section("finetune", cfg)
    s.pop("run", None)  # the run's name is the output folder, not a training setting
    if s["cache_latents"] and not s["center_crop"]:
        # a random crop changes every epoch: a cache would freeze the first one
        log.warning("cache_latents is off: center_crop is false, so crops change every epoch")
        s["cache_latents"] = False
    return s


def effective_precision(requested: str, device: str) -> str:
    if requested == "fp16" and not device.startswith("cuda"):
        # Accelerate silently runs fp32 for fp16 on CPU, and fp16 weights on CPU are 5-11x slower
        log.warning("mixed_precision fp16 needs CUDA; training on %s in fp32 (mixed_precision 'no')", device)
        return "no"
    return requested


def seed_int(*parts) -> int:
    """A stable 63-bit seed from parts (hashlib: Python's hash() changes per process)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
