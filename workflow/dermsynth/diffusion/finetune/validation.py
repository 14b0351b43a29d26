"""Validation images during and after the fine-tune, and the grid of them all (the paper's Fig. 4)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ... import io
from ...errors import TrainingError
from ...imaging import contact_sheet
from .compiled_step import CompiledStep, eager
from .progress import MemoryPeaks
from .settings import seed_int


class Validation:
    """Validation images at a step, between stretches of training: they run eager, their memory peak
    and time are kept apart from training's, and every process waits for the main one to draw them."""

    def __init__(
        self, accelerator, models, s: dict, out: Path, compiled: CompiledStep, peaks: MemoryPeaks, writer
    ):
        self.accelerator, self.models, self.s, self.out = accelerator, models, s, out
        self.compiled, self.peaks, self.writer = compiled, peaks, writer
        self.seconds = 0.0  # time spent validating, left out of the training's it/s

    def __call__(self, step: int, epoch: int) -> None:
        t0 = time.perf_counter()
        self.peaks.note("train")
        self.compiled.before_validation()
        if self.accelerator.is_main_process:
            m = self.models
            # a compiled UNet would compile a second (eval, no-grad) graph for a few images: run eager
            with eager():
                d = validation_images(
                    self.accelerator.unwrap_model(m.unet),
                    m.vae,
                    m.noise_scheduler.config,
                    m.embeds,
                    m.uncond,
                    self.s,
                    self.out,
                    step,
                    epoch,
                    self.accelerator.autocast,
                )
            if self.writer is not None:
                _to_tensorboard(self.writer, d, step)
        self.accelerator.wait_for_everyone()
        self.peaks.note("validation")
        self.seconds += time.perf_counter() - t0


def _to_tensorboard(writer, d: Path, step: int) -> None:
    from PIL import Image

    for f in sorted(d.glob("*.png")):
        writer.add_image(
            f"validation/{f.stem}", np.asarray(Image.open(f).convert("RGB")), step, dataformats="HWC"
        )


def validation_images(
    unet, vae, scheduler_config, embeds: dict, uncond, s: dict, out: Path, step: int, epoch: int, autocast
) -> Path:
    """``num_validation_images`` per class into ``out/validation/step-N/`` (one image at a time).

    Runs under no_grad with the UNet in eval mode and decodes one image at a time, so validation
    never needs more memory than a training step; the text encoder is not needed (embeddings are cached).
    """
    import torch
    from diffusers import StableDiffusionPipeline

    from ..pipeline import make_scheduler

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=make_scheduler(s["validation_sampler"], scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    d = out / "validation" / f"step-{step:07d}"
    was_training = unet.training
    unet.eval()
    try:
        with torch.no_grad(), autocast():
            for label in sorted(embeds):
                for i in range(int(s["num_validation_images"])):
                    # the same seeds at every validation: rows of the grid differ only by training
                    g = torch.Generator().manual_seed(seed_int(s["seed"], "validation", label, i))
                    image = pipe(
                        prompt_embeds=embeds[label],
                        negative_prompt_embeds=uncond,
                        num_inference_steps=int(s["validation_inference_steps"]),
                        guidance_scale=float(s["validation_guidance_scale"]),
                        height=int(s["resolution"]),
                        width=int(s["resolution"]),
                        generator=g,
                        output_type="pil",
                    ).images[0]
                    io.save_png(d / f"{label}_{i}.png", image)
    finally:
        unet.train(was_training)
    io.write_json(d / "info.json", {"step": step, "epoch": epoch})
    return d


def validation_grid(out: Path, path: Path) -> Path:
    """One row per validation (oldest on top), one column per image (class by class): the paper's Fig. 4."""
    from PIL import Image

    rows = sorted((out / "validation").glob("step-*/info.json"))
    grid_rows = []
    for info_path in rows:
        info = json.loads(info_path.read_text())
        files = sorted(info_path.parent.glob("*.png"))
        if files:
            grid_rows.append((info, [Image.open(f).convert("RGB") for f in files], [f.stem for f in files]))
    if not grid_rows:
        raise TrainingError(
            f"no validation images under {out / 'validation'}: set finetune.num_validation_images"
        )
    size = grid_rows[0][1][0].size[0]
    cols = max(len(r[1]) for r in grid_rows)
    cells = [im for _, images, _ in grid_rows for im in images + [None] * (cols - len(images))]
    contact_sheet(
        [np.asarray(im) if im is not None else None for im in cells],
        path,
        ncols=cols,
        thumb=size,
        row_labels=[f"epoch {info['epoch']}\nstep {info['step']}" for info, _, _ in grid_rows],
        headers=grid_rows[-1][2],
        label_w=110,
    )
    return path


def stack_images(paths, dest: Path) -> None:
    from PIL import Image

    ims = [Image.open(p).convert("RGB") for p in paths]
    canvas = Image.new("RGB", (max(i.width for i in ims), sum(i.height for i in ims)), (255, 255, 255))
    y = 0
    for im in ims:
        canvas.paste(im, (0, y))
        y += im.height
    with io.atomic_path(dest) as tmp:
        canvas.save(tmp, format="PNG")
