"""Generating synthetic dermoscopy images: seeded per image, batched, resumable, reproducible.

Each image's seed is a stable hash of (config seed, label, sampler, index) and its noise comes from
its own CPU ``torch.Generator``, so an image depends on its manifest row only, not on the batch it
was generated in, the device's RNG or the images before it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .. import io
from ..errors import ConfigError
from .pipeline import display_name, load_pipeline, lora_file

log = logging.getLogger("dermsynth")

MANIFEST_COLUMNS = io.MANIFEST_COLUMNS + [
    "seed", "prompt", "negative_prompt", "sampler", "steps", "guidance_scale", "resolution", "lora_scale",
    "lora_sha256", "base_model", "index",
]
DEFAULTS = {
    "prompt": "a dermoscopic image of a {label} skin lesion",
    "negative_prompt": "",
    "guidance_scale": 7.0,
    "resolution": 512,
    "batch_size": 8,
    "lora_scale": 1.0,
    "seed": 42,
    "writer_threads": 2,
}
#: seeds below 2**48: a collision (two identical images) among 10^5 images has odds ~1e-5
SEED_BITS = 48


def image_seed(base_seed: int, label: str, sampler: str, index: int) -> int:
    """A stable per-image seed (hashlib, not Python's per-process ``hash``)."""
    digest = hashlib.sha256(f"{int(base_seed)}|{label}|{sampler}|{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)


def steps_for(spec, seed: int) -> int:
    """Inference steps of one image: ``spec`` is an int, ``[min, max]`` (inclusive range), a longer list
    of choices, or ``{min, max}``; a range or choice is drawn from the image seed."""
    if isinstance(spec, dict):
        if not {"min", "max"} <= set(spec):
            raise ConfigError(f"sampler steps {spec!r}: a mapping needs 'min' and 'max'")
        spec = [spec["min"], spec["max"]]
    if isinstance(spec, (list, tuple)):
        values = [int(v) for v in spec]
        if not values or min(values) < 1:
            raise ConfigError(f"sampler steps {spec!r}: give an int >= 1, [min, max] or a list of choices")
        rng = np.random.default_rng(seed)
        if len(values) == 2:
            lo, hi = sorted(values)
            return int(rng.integers(lo, hi + 1))
        return int(values[rng.integers(len(values))])
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool) and spec >= 1:
        return int(spec)
    raise ConfigError(f"sampler steps {spec!r}: give an int >= 1, [min, max] or a list of choices")


def a1111_parameters(prompt: str, negative_prompt: str, steps: int, sampler: str, guidance_scale: float,
                     seed: int, width: int, height: int) -> str:
    """The ``parameters`` text the Stable Diffusion web UI writes (it omits an empty negative prompt)."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(f"Steps: {steps}, Sampler: {display_name(sampler)}, CFG scale: {float(guidance_scale)}, "
                 f"Seed: {seed}, Size: {width}x{height}")
    return "\n".join(lines)


def _pnginfo(text: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    return info


def _settings(cfg: dict, sampler: str) -> dict:
    s = {**DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    samplers = s.get("samplers") or {}
    if sampler not in samplers:
        raise ConfigError(f"generate.samplers has no entry for sampler '{sampler}': add "
                          f"'{sampler}: {{steps: 20}}' or use one of {', '.join(samplers) or '(none)'}")
    entry = samplers[sampler]
    # {steps: 20} as in the config; a bare value (20, [10, 30]) is accepted as the steps themselves
    s["steps"] = entry.get("steps", 20) if isinstance(entry, dict) else entry
    if int(s["resolution"]) % 8:
        raise ConfigError(f"generate.resolution {s['resolution']} is not a multiple of 8 (the VAE factor)")
    return s


def _to_uint8(images: np.ndarray) -> np.ndarray:
    # as diffusers' numpy_to_pil: round, not truncate
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def run_batch(pipe, seeds: list[int], steps: int, prompt: str, negative_prompt: str, guidance_scale: float,
              resolution: int) -> np.ndarray:
    """One pipeline call; image i depends only on seeds[i] (its own CPU generator). Returns uint8 NHWC."""
    import torch

    gens = [torch.Generator("cpu").manual_seed(int(sd)) for sd in seeds]
    out = pipe(prompt=[prompt] * len(seeds), negative_prompt=[negative_prompt] * len(seeds),
               num_inference_steps=int(steps), guidance_scale=float(guidance_scale), height=int(resolution),
               width=int(resolution), generator=gens, output_type="np")
    bad = ~np.isfinite(out.images).all(axis=(1, 2, 3))
    if bad.any():
        # kept, not dropped: the filter stage rejects such images with a reason the report counts
        log.warning("non-finite pixels in %d image(s) with seeds %s", int(bad.sum()),
                    [s for s, b in zip(seeds, bad, strict=True) if b])
    return _to_uint8(np.nan_to_num(out.images, nan=0.0))


def generate(pretrained: str, lora_path: str | None, label: str, sampler: str, n_images: int, cfg: dict,
             out_dir, manifest_path, threads: int = 1, device: str = "auto",
             first_index: int = 0) -> pd.DataFrame:
    """Generate images ``first_index .. first_index+n_images-1`` of one (label, sampler); write the manifest.

    Images already in ``out_dir`` (from an interrupted run) are kept and only their rows rebuilt.
    """
    import torch
    from tqdm.auto import tqdm

    s = _settings(cfg, sampler)
    display_name(sampler)  # unknown sampler -> ConfigError before any work
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = int(s["resolution"])
    prompt = str(s["prompt"]).format(label=label)
    negative = str(s["negative_prompt"] or "")
    lora_sha = io.sha256_file(lora_file(lora_path)) if lora_path else ""
    lora_scale = float(s["lora_scale"]) if lora_path else 0.0

    jobs = []
    for index in range(int(first_index), int(first_index) + int(n_images)):
        seed = image_seed(s["seed"], label, sampler, index)
        jobs.append({"index": index, "seed": seed, "steps": steps_for(s["steps"], seed),
                     "path": out / f"{label}_{sampler}_{index:06d}.png"})
    shas: dict[int, str] = {j["index"]: io.sha256_file(j["path"]) for j in jobs if j["path"].is_file()}
    todo = [j for j in jobs if j["index"] not in shas]
    if shas:
        log.info("%d of %d images already present in %s: kept", len(shas), len(jobs), out)

    if todo:
        pipe = load_pipeline(pretrained, lora_path, sampler=sampler, device=device, lora_scale=lora_scale)
        by_steps = defaultdict(list)
        for j in todo:
            by_steps[j["steps"]].append(j)
        bs = max(1, int(s["batch_size"]))
        batches = [g[i : i + bs] for _, g in sorted(by_steps.items()) for i in range(0, len(g), bs)]
        bar = tqdm(total=len(jobs), initial=len(shas), desc=f"{label}/{sampler}", unit="img", disable=None)
        # PNG encoding runs on writer threads so the accelerator never waits for zlib
        with ThreadPoolExecutor(max_workers=max(1, int(s["writer_threads"]))) as writer:
            futures = {}
            for batch in batches:
                arrays = run_batch(pipe, [j["seed"] for j in batch], batch[0]["steps"], prompt, negative,
                                   s["guidance_scale"], res)
                for j, arr in zip(batch, arrays, strict=True):
                    text = a1111_parameters(prompt, negative, j["steps"], sampler, s["guidance_scale"],
                                            j["seed"], res, res)
                    futures[j["index"]] = writer.submit(io.save_png, j["path"], arr, _pnginfo(text))
                bar.update(len(batch))
            shas.update({i: f.result() for i, f in futures.items()})
        bar.close()

    rows = [{
        "path": io.rel(j["path"]), "label": label, "dataset": "synthetic", "source_id": j["path"].stem,
        "sha256": shas[j["index"]], "seed": j["seed"], "prompt": prompt, "negative_prompt": negative,
        "sampler": sampler, "steps": j["steps"], "guidance_scale": float(s["guidance_scale"]),
        "resolution": res, "lora_scale": lora_scale, "lora_sha256": lora_sha, "base_model": str(pretrained),
        "index": j["index"],
    } for j in jobs]
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    io.write_csv(manifest_path, manifest)
    log.info("generated %d %s images with %s (%d new) -> %s", len(jobs), label, sampler, len(todo),
             manifest_path)
    return manifest


def _text(value) -> str:
    # read_csv turns an empty string into NaN
    return value if isinstance(value, str) else ""


def regenerate(row, pretrained: str, lora_path: str | None, device: str = "cpu", threads: int = 1):
    """Regenerate one image from its manifest row alone; returns a PIL image."""
    import torch
    from PIL import Image

    torch.set_num_threads(threads)
    row = dict(row)
    expected = _text(row.get("lora_sha256"))
    scale = float(row.get("lora_scale", 0.0) or 0.0)
    if expected and lora_path is None:
        raise ConfigError(f"{row.get('path')}: the image was generated with a LoRA (sha256 {expected[:12]}); "
                          "pass its lora_path")
    if expected and io.sha256_file(lora_file(lora_path)) != expected:
        raise ConfigError(f"{row.get('path')}: LoRA {lora_path} is not the one that generated it "
                          f"(manifest lora_sha256 {expected[:12]}); pass the LoRA of that run")
    pipe = load_pipeline(pretrained, lora_path if expected else None, sampler=str(row["sampler"]),
                         device=device, lora_scale=scale)
    arr = run_batch(pipe, [int(row["seed"])], int(row["steps"]), str(row["prompt"]),
                    _text(row.get("negative_prompt")), float(row["guidance_scale"]), int(row["resolution"]))
    return Image.fromarray(arr[0])
