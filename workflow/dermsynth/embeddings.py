"""DINOv2 and CLIP image embeddings through transformers, for the metrics beside FID.

- ``dinov2`` (``models.dinov2``, e.g. facebook/dinov2-base): ``Dinov2Model``'s pooler output, the
  CLS token of the last hidden state after the final layer norm. Stein et al. (2023) found DINOv2
  features rank generators the way people do, where Inception's do not.
- ``clip`` (``models.clip``, e.g. openai/clip-vit-large-patch14): ``CLIPVisionModelWithProjection``'s
  ``image_embeds``, L2-normalised, the features CMMD (Jayasumana et al. 2024) is defined on.

Both preprocess as their image processors do, in torch on the batch: resize the shortest edge
(bicubic), centre crop, scale to [0, 1], normalise. The sizes and statistics come from the
checkpoint's preprocessor_config.json (read as JSON; no AutoImageProcessor, no torchvision), else
from the published values below (:data:`PUBLISHED`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from . import hub
from .errors import one_line

log = logging.getLogger("dermsynth.quality")

KINDS = ("dinov2", "clip")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """What the checkpoint's image processor does: shortest edge -> ``resize``, centre crop ``crop``."""

    resize: int
    crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # uint8 (B, 3, H, W) -> normalised float
        x = x.float() / 255.0
        h, w = x.shape[-2:]
        if min(h, w) != self.resize:
            s = self.resize / min(h, w)
            size = (max(self.crop, round(h * s)), max(self.crop, round(w * s)))
            x = torch.nn.functional.interpolate(
                x, size=size, mode="bicubic", antialias=True, align_corners=False
            )
            x = x.clamp(0.0, 1.0)  # bicubic overshoots; the processors clip back to the uint8 range
        h, w = x.shape[-2:]
        top, left = (h - self.crop) // 2, (w - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop]
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - m) / s


#: facebook/dinov2-* and openai/clip-vit-*-patch14 preprocessor_config.json, for a checkpoint without one
PUBLISHED = {
    "dinov2": Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD),
    "clip": Preprocess(224, 224, CLIP_MEAN, CLIP_STD),
}


def _edge(size, fallback: int) -> int:
    if isinstance(size, int):
        return size
    if isinstance(size, dict):
        for key in ("shortest_edge", "height"):
            if key in size:
                return int(size[key])
    return fallback


def preprocess_of(kind: str, ref: str) -> Preprocess:
    """The checkpoint's preprocessing (local folder or HF cache), else :data:`PUBLISHED`."""
    default = PUBLISHED[kind]
    try:
        local = Path(ref) / "preprocessor_config.json"
        if local.is_file():
            d = json.loads(local.read_text())
        else:
            from transformers.image_processing_utils import ImageProcessingMixin

            d = ImageProcessingMixin.get_image_processor_dict(ref)[0]
    except Exception as e:  # no processor file: the published defaults describe the hub checkpoints
        log.warning("no preprocessor config for %s (%s): using the %s defaults", ref, one_line(e, 80), kind)
        return default
    crop = _edge(d.get("crop_size"), default.crop) if d.get("do_center_crop", True) else None
    resize = _edge(d.get("size"), default.resize)
    return Preprocess(
        resize=resize,
        crop=crop or resize,
        mean=tuple(float(v) for v in d.get("image_mean", default.mean)),
        std=tuple(float(v) for v in d.get("image_std", default.std)),
    )


def load(kind: str, ref: str, device) -> tuple:
    """(fn: uint8 (B, 3, H, W) -> (B, D) features, input side in px, description) of ``kind``."""
    if kind == "dinov2":
        from transformers import Dinov2Model

        model = hub.load_pretrained(Dinov2Model, ref)

        def head(x):
            return model(pixel_values=x).pooler_output  # CLS token after the final layer norm

    else:
        from transformers import CLIPVisionModelWithProjection

        model = hub.load_pretrained(CLIPVisionModelWithProjection, ref)

        def head(x):
            e = model(pixel_values=x).image_embeds
            return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # CMMD's embeddings are unit vectors

    model.to(device).eval()
    prep = preprocess_of(kind, ref)

    def fn(x: torch.Tensor) -> torch.Tensor:
        return head(prep(x))

    what = "DINOv2 CLS token" if kind == "dinov2" else "CLIP image embedding (L2-normalised)"
    return fn, prep.resize, f"{what} of {ref} at {prep.crop} px"
