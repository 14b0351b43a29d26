"""Generating synthetic dermoscopy images: seeded per image, batched, resumable, reproducible.

What each image is (seed, prompt, steps, CFG) is planned in ``plan``; here a shard's slots are run.
A (class, sampler) block of images is cut into shards (one GPU job each, resumable). Images of equal
steps, CFG and negative prompt are batched together.

An index is a slot that must end with one image passing the filter's per-image checks: a rejected
image is replaced, in the next round, by one with a new seed (same prompt and modifiers, so the split
stays exact among the images kept), until the slot's image passes or ``max_rounds`` is spent.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .. import io
from ..errors import ConfigError, ImageError
from ..progress import Bar
from . import webui
from .manifest import MANIFEST_COLUMNS, PASS, _text, merge_shards, passing
from .pipeline import display_name, load_pipeline, lora_file, set_sampler, speed_up
from .plan import (
    SEED_BITS,
    compose_prompt,
    grid_size,
    image_path,
    image_seed,
    modifier_plan,
    modifiers_text,
    round_jobs,
    settings,
    shard_name,
    shards,
    slots,
    split_counts,
    steps_for,
)
from .report import section_generate, split_table

log = logging.getLogger("dermsynth")

# the names callers import from here (the rule scripts, tests, benchmarks)
__all__ = [
    "MANIFEST_COLUMNS",
    "PASS",
    "SEED_BITS",
    "compose_prompt",
    "generate",
    "image_path",
    "image_seed",
    "merge_shards",
    "modifier_plan",
    "modifiers_text",
    "passing",
    "regenerate",
    "run_batch",
    "section_generate",
    "shard_name",
    "shards",
    "split_counts",
    "split_table",
    "steps_for",
]


def infotext(s: dict, sampler: str, lora_path) -> Callable[[dict], str]:
    """``text(job)``: an image's ``parameters`` text, as the web UI writes it (webui.py), from its
    prompt, negative prompt, steps, CFG and seed, with the base model the config names for the web UI
    and the kohya copy of the LoRA, if written."""
    kohya = webui.kohya_file(lora_path) if lora_path else None
    # hashed once per job, not per image: the file is megabytes and every image's text names it
    lora = (kohya.stem, webui.addnet_hash(kohya), float(s["lora_scale"])) if kohya else None
    res = int(s["resolution"])

    def text(job: dict) -> str:
        return webui.parameters(
            job["prompt"],
            job["negative_prompt"],
            job["steps"],
            display_name(sampler),
            job["guidance_scale"],
            job["seed"],
            res,
            res,
            model=s["webui_model"],
            model_hash=s["webui_model_hash"],
            lora=lora,
        )

    return text


def _pnginfo(text: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    return info


def run_batch(
    pipe, seeds: list[int], steps: int, prompt, negative_prompt: str, guidance_scale: float, resolution: int
) -> np.ndarray:
    """One pipeline call; image i depends only on seeds[i] (its own CPU generator) and its prompt.

    ``prompt`` is one string for all images or one per image. Returns uint8 NHWC.
    """
    import torch

    prompts = [prompt] * len(seeds) if isinstance(prompt, str) else list(prompt)
    gens = [torch.Generator("cpu").manual_seed(int(sd)) for sd in seeds]
    # the whole batch goes through the UNet (CFG doubles it inside the pipeline) and the VAE at once;
    # the pixels are quantised on the device, so the only host sync is the copy of a uint8 batch
    out = pipe(
        prompt=prompts,
        negative_prompt=[negative_prompt] * len(seeds),
        num_inference_steps=int(steps),
        guidance_scale=float(guidance_scale),
        height=int(resolution),
        width=int(resolution),
        generator=gens,
        output_type="pt",
    )
    images = out.images.float()  # NCHW in [0, 1]
    bad = (~torch.isfinite(images).flatten(1).all(dim=1)).cpu().numpy()
    if bad.any():
        # kept, not dropped: the filter stage rejects such images with a reason the report counts
        log.warning(
            "non-finite pixels in %d image(s) with seeds %s",
            int(bad.sum()),
            [s for s, b in zip(seeds, bad, strict=True) if b],
        )
    # as diffusers' numpy_to_pil: round, not truncate
    pixels = torch.nan_to_num(images, nan=0.0).clamp_(0.0, 1.0).mul_(255).round_().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def _verdict(checks):
    """``checks``: None (every image passes), the config's ``filter`` section, or a callable."""
    if checks is None:
        return lambda arr: []
    if callable(checks):
        return checks
    from ..artifacts import image_verdict

    return image_verdict(checks)


def _save_checked(path, arr, info, verdict) -> tuple[str, list]:
    return io.save_png(path, arr, info), list(verdict(arr))


def _load_checked(path, verdict) -> tuple[str, list]:
    return io.sha256_file(path), list(verdict(np.asarray(io.load_rgb(path))))


def _trusted_images(out: Path, settings: dict) -> bool:
    """Whether images already in ``out`` were made with these settings (then a rerun keeps them).

    The settings that fix an image's pixels are stored beside the images; a rerun after a change of
    model, LoRA, prompt, steps or guidance regenerates rather than keeping images of the old settings.
    """
    label, sampler = settings["label"], settings["sampler"]
    marker = out / f".settings-{label}-{sampler}.json"
    text = json.dumps(settings, sort_keys=True, default=str)
    old = marker.read_text() if marker.is_file() else None
    if old != text:
        if any(out.glob(f"{label}_{sampler}_*.png")):
            log.warning("%s: images from other settings (or of unknown origin): regenerating them", out)
        io.write_text(marker, text)
        return False
    return True


def _remove_unlisted_topups(out: Path, label: str, sampler: str, indices: range, listed: set) -> None:
    """Delete this shard's top-up images that no manifest row names.

    A rerun with other checks may need fewer rounds; images of rounds it did not make would mislead.
    """
    mine = re.compile(rf"{re.escape(label)}_{re.escape(sampler)}_(\d{{6}})_r\d+\.png")
    for f in out.glob("*_r*.png"):
        m = mine.fullmatch(f.name)
        if m and int(m[1]) in indices and f.name not in listed:
            f.unlink()


def _manifest_row(job: dict, shared: dict) -> dict:
    """One image's manifest row: what the shard shares, and this image's own seed, prompt and verdict."""
    return {
        **shared,
        "path": io.rel(job["path"]),
        "source_id": job["path"].stem,
        "sha256": job["sha256"],
        "seed": job["seed"],
        "prompt": job["prompt"],
        "negative_prompt": job["negative_prompt"],
        "steps": job["steps"],
        "guidance_scale": job["guidance_scale"],
        "index": job["index"],
        "modifiers": job["modifiers"],
        "round": job["round"],
        "verdict": job["reasons"][0][0] if job["reasons"] else PASS,
    }


class _LazyPipe:
    """The pipeline, loaded on first use: a resumed shard whose images all exist loads no model."""

    def __init__(self, pipe, pretrained, lora_path, sampler: str, device: str, lora_scale: float, s: dict):
        self.pipe, self.ready = pipe, False
        self.args = (pretrained, lora_path, sampler, device, lora_scale, s)

    def __call__(self):
        if not self.ready:
            pretrained, lora_path, sampler, device, lora_scale, s = self.args
            if self.pipe is None:
                self.pipe = load_pipeline(
                    pretrained,
                    lora_path,
                    sampler=sampler,
                    device=device,
                    lora_scale=lora_scale,
                    checkpoint=s["checkpoint"],
                )
            else:
                set_sampler(self.pipe, sampler)
            self.pipe = speed_up(
                self.pipe,
                channels_last=bool(s["channels_last"]),
                compile=bool(s["compile"]),
                compile_mode=s["compile_mode"],
            )
            self.ready = True
        return self.pipe


def _shared_columns(s: dict, pretrained: str, lora_path, label: str, sampler: str, shard) -> dict:
    """The manifest columns every image of the shard shares."""
    return {
        "label": label,
        "dataset": "synthetic",
        "sampler": sampler,
        "resolution": int(s["resolution"]),
        "lora_scale": float(s["lora_scale"]) if lora_path else 0.0,
        "lora_sha256": io.sha256_file(lora_file(lora_path)) if lora_path else "",
        "base_model": str(s["checkpoint"] or pretrained),
        "shard": int(shard),
    }


def _pixel_settings(s: dict, shared: dict, label: str, block: int, grid: list | None) -> dict:
    """What fixes the pixels of the shard's images (see ``_trusted_images``); from a PNG grid, its rows
    stand for the prompt, negative prompt, modifiers, steps and CFG of the config."""
    keys = ("base_model", "lora_sha256", "lora_scale", "label", "sampler")
    fixed = {k: shared[k] for k in keys} | {
        "block": block,
        "seed": s["seed"],
        "resolution": shared["resolution"],
    }
    if grid is not None:
        return fixed | {"grid": grid}
    return fixed | {
        "negative_prompt": str(s["negative_prompt"] or ""),
        "prompt": s["class_prompts"].get(label, s["prompt"]),
        "modifiers": s["modifiers"],
        "steps": s["steps"],
        "guidance_scale": float(s["guidance_scale"]),
    }


def _reuse(jobs: list[dict], writer, verdict, bar) -> list[dict]:
    """Check the images already on disk again (the caller trusts them); returns the jobs still to make."""
    futures = {
        j["index"]: writer.submit(_load_checked, j["path"], verdict) for j in jobs if j["path"].is_file()
    }
    todo = []
    for j in jobs:
        try:
            j["sha256"], j["reasons"] = futures[j["index"]].result()
            bar.update(1)
        except (KeyError, ImageError):
            todo.append(j)
    return todo


def _render(todo: list[dict], pipe: _LazyPipe, writer, verdict, s: dict, text, bar) -> None:
    """Generate ``todo`` in batches of equal steps, CFG and negative prompt (one pipeline call takes one
    of each); PNGs are written and checked on ``writer``."""
    bs, res = max(1, int(s["batch_size"])), int(s["resolution"])
    by_call = defaultdict(list)
    for j in todo:
        by_call[(j["steps"], j["guidance_scale"], j["negative_prompt"])].append(j)
    futures = {}
    for (_, cfg, negative), group in sorted(by_call.items()):
        for i in range(0, len(group), bs):
            batch = group[i : i + bs]
            arrays = run_batch(
                pipe(),
                [j["seed"] for j in batch],
                batch[0]["steps"],
                [j["prompt"] for j in batch],
                negative,
                cfg,
                res,
            )
            for j, arr in zip(batch, arrays, strict=True):
                info = _pnginfo(text(j))
                futures[j["index"]] = writer.submit(_save_checked, j["path"], arr, info, verdict)
            bar.update(len(batch))
    for j in todo:
        j["sha256"], j["reasons"] = futures[j["index"]].result()


def _fill_slots(
    slots, s: dict, out: Path, label: str, sampler: str, verdict, trusted: bool, pipe, text, desc: str
):
    """Round after round, an image for every slot without a passing one; returns (every image made,
    how many were reused from disk, the slots still without a passing image)."""
    made, reused, pending = [], 0, slots
    bar = Bar(total=0, desc=desc, unit="img")
    # PNG encoding (zlib) and the checks run on writer threads while the accelerator computes the next batch
    with ThreadPoolExecutor(max_workers=max(1, int(s["writer_threads"]))) as writer:
        for rnd in range(int(s["max_rounds"])):
            if not pending:
                break
            jobs = round_jobs(pending, rnd, s, out, label, sampler)
            bar.total += len(jobs)
            bar.refresh()
            todo = _reuse(jobs, writer, verdict, bar) if trusted else jobs
            reused += len(jobs) - len(todo)
            _render(todo, pipe, writer, verdict, s, text, bar)
            made += jobs
            pending = [j for j in jobs if j["reasons"]]
            if pending:
                why = pd.Series([j["reasons"][0][0] for j in pending]).value_counts().to_dict()
                log.info(
                    "round %d: %d of %d images rejected by the checks %s", rnd, len(pending), len(jobs), why
                )
    bar.close()
    return made, reused, pending


def generate(
    pretrained: str,
    lora_path: str | None,
    label: str,
    sampler: str,
    n_images: int,
    cfg: dict,
    out_dir,
    manifest_path,
    threads: int = 1,
    device: str = "auto",
    first_index: int = 0,
    block_size: int | None = None,
    shard: int | str = 0,
    pipe=None,
    checks=None,
    grid: list[dict] | None = None,
) -> pd.DataFrame:
    """Generate images ``first_index .. first_index+n_images-1`` of one (label, sampler); write the manifest.

    ``n_images`` is the number of images that pass ``checks`` (the filter's per-image verdict: the
    config's ``filter`` section, or a callable array -> failing reasons; None passes all). Each index
    is a slot: a rejected image is replaced by one with a new seed (same prompt and modifiers), round
    after round, up to ``cfg['max_rounds']`` rounds; the manifest lists every image made, with its
    ``round`` and ``verdict`` ("pass" or the first failing reason), so any row regenerates.

    ``cfg`` is the config's ``generate`` section (keys left out take the schema's defaults).
    ``block_size`` is the (label, sampler) block's total (default: up to the last index here): the
    modifier split is exact over the block, whatever its sharding. Images already in ``out_dir`` (from
    an interrupted run, with the same settings) are kept, checked again and only their rows rebuilt.
    ``pipe``: an already loaded pipeline (benchmarks); by default it is loaded from ``pretrained``
    (+ ``cfg['checkpoint']``) and the LoRA. ``grid``: the block's rows read from web-UI PNGs
    (``generate.from_pngs``, pngs.block_grid), each with its prompt, negative prompt, steps, CFG,
    optional seed and ``count`` of images; they replace the config's prompts, modifiers, steps and CFG.
    """
    import torch

    s = settings(cfg, sampler, grid)
    display_name(sampler)  # unknown sampler -> ConfigError before any work
    verdict = _verdict(checks)
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first, n = int(first_index), int(n_images)
    block = int(block_size) if block_size is not None else (grid_size(grid) if grid else first + n)
    if first < 0 or first + n > block or (grid is not None and block != grid_size(grid)):
        raise ConfigError(
            f"images {first}..{first + n - 1} lie outside the block of {block} images"
            + (f" (its PNG grid plans {grid_size(grid)})" if grid is not None else "")
        )
    todo = slots(s, label, sampler, first, n, block, grid)
    shared = _shared_columns(s, pretrained, lora_path, label, sampler, shard)
    trusted = _trusted_images(out, _pixel_settings(s, shared, label, block, grid))
    lazy = _LazyPipe(pipe, pretrained, lora_path, sampler, device, shared["lora_scale"], s)
    text = infotext(s, sampler, lora_path)
    made, reused, pending = _fill_slots(
        todo, s, out, label, sampler, verdict, trusted, lazy, text, f"{label}/{sampler}/{shard}"
    )

    _remove_unlisted_topups(out, label, sampler, range(first, first + n), {j["path"].name for j in made})
    manifest = pd.DataFrame(
        [_manifest_row(j, shared) for j in sorted(made, key=lambda j: (j["index"], j["round"]))],
        columns=MANIFEST_COLUMNS,
    )
    io.write_csv(manifest_path, manifest)
    log.info(
        "%s/%s shard %s: %d images in %d round(s) (%d new, %d kept from before) for %d slots -> %s",
        label,
        sampler,
        shard,
        len(made),
        max((j["round"] for j in made), default=-1) + 1,
        len(made) - reused,
        reused,
        n,
        manifest_path,
    )
    if pending:
        log.warning(
            "%s/%s shard %s: %d of %d images pass the per-image checks after generate.max_rounds = %d "
            "rounds; %d short (raise max_rounds or review the filter thresholds)",
            label,
            sampler,
            shard,
            n - len(pending),
            n,
            int(s["max_rounds"]),
            len(pending),
        )
    return manifest


def regenerate(row, pretrained: str, lora_path: str | None, device: str = "cpu", threads: int = 1):
    """Regenerate one image from its manifest row alone; returns a PIL image."""
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    row = dict(row)
    expected = _text(row.get("lora_sha256"))
    scale = float(row.get("lora_scale", 0.0) or 0.0)
    if expected and lora_path is None:
        raise ConfigError(
            f"{row.get('path')}: the image was generated with a LoRA (sha256 {expected[:12]}); "
            "pass its lora_path"
        )
    if expected and io.sha256_file(lora_file(lora_path)) != expected:
        raise ConfigError(
            f"{row.get('path')}: LoRA {lora_path} is not the one that generated it "
            f"(manifest lora_sha256 {expected[:12]}); pass the LoRA of that run"
        )
    base = str(row.get("base_model") or pretrained)
    # a merged single-file checkpoint is named in base_model; ``pretrained`` then gives its configs
    checkpoint = base if base.endswith(".safetensors") else None
    pipe = load_pipeline(
        pretrained,
        lora_path if expected else None,
        sampler=str(row["sampler"]),
        device=device,
        lora_scale=scale,
        checkpoint=checkpoint,
    )
    arr = run_batch(
        pipe,
        [int(row["seed"])],
        int(row["steps"]),
        str(row["prompt"]),
        _text(row.get("negative_prompt")),
        float(row["guidance_scale"]),
        int(row["resolution"]),
    )
    return Image.fromarray(arr[0])
