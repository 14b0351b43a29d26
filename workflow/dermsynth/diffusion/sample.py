"""Generating synthetic dermoscopy images: seeded per image, batched, resumable, reproducible.

Each image's seed is a stable hash of (config seed, label, sampler, index) and its noise comes from
its own CPU ``torch.Generator``, so an image depends on its manifest row only, not on the batch or
shard it was generated in, the device's RNG or the images before it.

A (class, sampler) block of images is cut into shards (one GPU job each, resumable); each image also
gets one option of every prompt-modifier group (the paper's "smart transformations": tiny / large /
multiple moles, skin tones), with exact counts per block, fixed by the image index alone.

An index is a slot that must end with one image passing the filter's per-image checks: a rejected
image is replaced, in the next round, by one with a new seed (same prompt and modifiers, so the split
stays exact among the images kept), until the slot's image passes or ``max_rounds`` is spent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config, io
from ..errors import ConfigError, ImageError
from ..imaging import contact_sheet
from ..progress import Bar
from . import webui
from .pipeline import display_name, load_pipeline, lora_file, set_sampler, speed_up

log = logging.getLogger("dermsynth")

MANIFEST_COLUMNS = io.MANIFEST_COLUMNS + [
    "seed",
    "prompt",
    "negative_prompt",
    "sampler",
    "steps",
    "guidance_scale",
    "resolution",
    "lora_scale",
    "lora_sha256",
    "base_model",
    "index",
    "modifiers",
    "shard",
    "round",
    "verdict",
]
#: ``verdict`` of an image that passes the per-image checks (otherwise: its first failing reason)
PASS = "pass"
#: seeds below 2**32, the range the web UI replays; two images of one block that draw the same seed
#: (odds ~0.4 % among 6,000) are pixel-identical only with the same prompt and steps, and the filter's
#: duplicate check drops the second
SEED_BITS = 32


def image_seed(base_seed: int, label: str, sampler: str, index: int, rnd: int = 0) -> int:
    """A stable per-image seed (hashlib, not Python's per-process ``hash``); ``rnd`` > 0: the seed of
    the top-up image that replaces a rejected one in that round (round 0 keeps the original seeds)."""
    key = f"{int(base_seed)}|{label}|{sampler}|{int(index)}" + (f"|{int(rnd)}" if rnd else "")
    digest = hashlib.sha256(key.encode()).digest()
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


def split_counts(total: int, weights) -> list[int]:
    """``total`` split exactly in proportion to ``weights`` (largest remainder; ties go to the earlier)."""
    w = np.asarray(list(weights), dtype=np.float64)
    if w.size == 0 or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"modifier weights {list(weights)} must be >= 0 with a positive sum")
    quota = w / w.sum() * int(total)
    counts = np.floor(quota).astype(int)
    rest = int(total) - int(counts.sum())
    # stable sort: equal remainders keep config order, so the split never depends on float noise order
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts.tolist()


def shards(n_images: int, shard_size: int) -> list[tuple[int, int]]:
    """(first index, count) of each shard of a block of ``n_images`` images."""
    size = max(1, int(shard_size))
    return [(i, min(size, int(n_images) - i)) for i in range(0, int(n_images), size)]


def shard_name(k: int) -> str:
    return f"{int(k):03d}"


def _stable_int(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def modifier_plan(modifiers: dict, block_size: int, base_seed: int, label: str, sampler: str) -> list[dict]:
    """For each image index of a (label, sampler) block: {group: option} with exact counts per option.

    Each group's counts are the largest-remainder split of the block; the options are then shuffled
    with a seed of their own per group, so groups are independent of each other (tiny moles are not
    always on one skin tone) and an index's options never depend on how the block is sharded.
    """
    plan: list[dict] = [{} for _ in range(int(block_size))]
    for group, options in (modifiers or {}).items():
        names = list(options)
        if not names:
            raise ConfigError(f"generate.modifiers.{group} has no options")
        weights = [float((options[o] or {}).get("weight", 1.0)) for o in names]
        seq = np.repeat(np.arange(len(names)), split_counts(block_size, weights))
        rng = np.random.default_rng(_stable_int(base_seed, label, sampler, group) >> 1)
        for i, k in enumerate(rng.permutation(seq)):
            plan[i][group] = names[int(k)]
    return plan


def compose_prompt(base: str, label: str, modifiers: dict, chosen: dict) -> str:
    """The base prompt, then each chosen option's text (if any) after a comma, in group order."""
    parts = [str(base).format(label=label)]
    for group, option in chosen.items():
        text = str((modifiers[group][option] or {}).get("text", "") or "").format(label=label)
        if text:
            parts.append(text)
    return ", ".join(parts)


def modifiers_text(chosen: dict) -> str:
    """The manifest's ``modifiers`` cell: ``group=option;group=option`` in config order."""
    return ";".join(f"{g}={o}" for g, o in chosen.items())


def infotext(s: dict, sampler: str, lora_path) -> Callable[[str, int, int], str]:
    """``text(prompt, steps, seed)``: an image's ``parameters`` text, as the web UI writes it (webui.py),
    with the base model the config names for the web UI and the kohya copy of the LoRA, if written."""
    kohya = webui.kohya_file(lora_path) if lora_path else None
    # hashed once per job, not per image: the file is megabytes and every image's text names it
    lora = (kohya.stem, webui.addnet_hash(kohya), float(s["lora_scale"])) if kohya else None
    res, negative = int(s["resolution"]), str(s["negative_prompt"] or "")

    def text(prompt: str, steps: int, seed: int) -> str:
        return webui.parameters(
            prompt,
            negative,
            steps,
            display_name(sampler),
            s["guidance_scale"],
            seed,
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


def _settings(cfg: dict, sampler: str) -> dict:
    """The ``generate`` section (schema defaults for keys left out) with this sampler's ``steps``."""
    s = config.section("generate", cfg)
    if sampler not in s["samplers"]:
        raise ConfigError(
            f"generate.samplers has no entry for sampler '{sampler}': add "
            f"'{sampler}: {{steps: 20}}' or use one of {', '.join(s['samplers'])}"
        )
    s["steps"] = s["samplers"][sampler]["steps"]
    if int(s["resolution"]) % 8:
        raise ConfigError(f"generate.resolution {s['resolution']} is not a multiple of 8 (the VAE factor)")
    return s


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


def image_path(out_dir, label: str, sampler: str, index: int, rnd: int = 0) -> Path:
    """Round 0 keeps the plain name; a top-up image of round r gets the suffix ``_r<r>``."""
    return Path(out_dir) / f"{label}_{sampler}_{int(index):06d}{f'_r{int(rnd)}' if rnd else ''}.png"


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
        "steps": job["steps"],
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
                self.pipe, channels_last=bool(s["channels_last"]), compile=bool(s["compile"])
            )
            self.ready = True
        return self.pipe


def _shared_columns(s: dict, pretrained: str, lora_path, label: str, sampler: str, shard) -> dict:
    """The manifest columns every image of the shard shares."""
    return {
        "label": label,
        "dataset": "synthetic",
        "negative_prompt": str(s["negative_prompt"] or ""),
        "sampler": sampler,
        "guidance_scale": float(s["guidance_scale"]),
        "resolution": int(s["resolution"]),
        "lora_scale": float(s["lora_scale"]) if lora_path else 0.0,
        "lora_sha256": io.sha256_file(lora_file(lora_path)) if lora_path else "",
        "base_model": str(s["checkpoint"] or pretrained),
        "shard": int(shard),
    }


def _pixel_settings(s: dict, shared: dict, base_prompt: str, block: int) -> dict:
    """What fixes the pixels of the shard's images (see ``_trusted_images``)."""
    keys = ("base_model", "lora_sha256", "lora_scale", "label", "sampler", "negative_prompt")
    return {
        **{k: shared[k] for k in keys},
        "prompt": base_prompt,
        "modifiers": s["modifiers"],
        "block": block,
        "seed": s["seed"],
        "steps": s["steps"],
        "guidance_scale": shared["guidance_scale"],
        "resolution": shared["resolution"],
    }


def _round_jobs(pending: list[dict], rnd: int, s: dict, out: Path, label: str, sampler: str) -> list[dict]:
    """Round ``rnd``'s image of every pending slot: its seed (new each round), steps and file."""
    jobs = []
    for slot in pending:
        seed = image_seed(s["seed"], label, sampler, slot["index"], rnd)
        path = image_path(out, label, sampler, slot["index"], rnd)
        jobs.append({**slot, "round": rnd, "seed": seed, "steps": steps_for(s["steps"], seed), "path": path})
    return jobs


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
    """Generate ``todo`` in batches of equal steps; PNGs are written and checked on ``writer``."""
    bs, res = max(1, int(s["batch_size"])), int(s["resolution"])
    negative = str(s["negative_prompt"] or "")
    by_steps = defaultdict(list)
    for j in todo:
        by_steps[j["steps"]].append(j)
    futures = {}
    for _, group in sorted(by_steps.items()):
        for i in range(0, len(group), bs):
            batch = group[i : i + bs]
            arrays = run_batch(
                pipe(),
                [j["seed"] for j in batch],
                batch[0]["steps"],
                [j["prompt"] for j in batch],
                negative,
                s["guidance_scale"],
                res,
            )
            for j, arr in zip(batch, arrays, strict=True):
                info = _pnginfo(text(j["prompt"], j["steps"], j["seed"]))
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
            jobs = _round_jobs(pending, rnd, s, out, label, sampler)
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
    (+ ``cfg['checkpoint']``) and the LoRA.
    """
    import torch

    s = _settings(cfg, sampler)
    display_name(sampler)  # unknown sampler -> ConfigError before any work
    verdict = _verdict(checks)
    torch.set_num_threads(threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first, n = int(first_index), int(n_images)
    block = int(block_size) if block_size is not None else first + n
    if first < 0 or first + n > block:
        raise ConfigError(f"images {first}..{first + n - 1} lie outside the block of {block} images")
    base = s["class_prompts"].get(label, s["prompt"])
    plan = modifier_plan(s["modifiers"], block, s["seed"], label, sampler)
    slots = [
        {
            "index": i,
            "prompt": compose_prompt(base, label, s["modifiers"], plan[i]),
            "modifiers": modifiers_text(plan[i]),
        }
        for i in range(first, first + n)
    ]
    shared = _shared_columns(s, pretrained, lora_path, label, sampler, shard)
    trusted = _trusted_images(out, _pixel_settings(s, shared, base, block))
    lazy = _LazyPipe(pipe, pretrained, lora_path, sampler, device, shared["lora_scale"], s)
    text = infotext(s, sampler, lora_path)
    made, reused, pending = _fill_slots(
        slots, s, out, label, sampler, verdict, trusted, lazy, text, f"{label}/{sampler}/{shard}"
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


def passing(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows whose image passed the per-image checks (all rows of a manifest without verdicts)."""
    if "verdict" not in manifest.columns:
        return manifest
    return manifest[manifest["verdict"].map(_text) == PASS]


def _rounds(df: pd.DataFrame) -> pd.Series:
    return df["round"].fillna(0).astype(int) if "round" in df.columns else pd.Series(0, index=df.index)


def merge_shards(shard_manifests, out_manifest, block_size: int | None = None) -> pd.DataFrame:
    """One (label, sampler) manifest from its shards, checked: every index there, each with rounds
    0, 1, ... once; a shortfall (slots without a passing image) is logged."""
    frames = [io.read_csv(m) for m in shard_manifests]
    if not frames:
        raise ConfigError("merge_shards needs at least one shard manifest")
    df = pd.concat(frames, ignore_index=True)
    df["round"] = _rounds(df)
    df = df.sort_values(["index", "round"], kind="stable").reset_index(drop=True)
    expected = int(block_size) if block_size is not None else df["index"].nunique()
    slots = sorted(set(df["index"]))
    rounds_ok = (df.groupby("index")["round"].agg(list).map(lambda r: r == list(range(len(r))))).all()
    if slots != list(range(expected)) or not rounds_ok:
        missing = sorted(set(range(expected)) - set(slots))[:5]
        dup = df.loc[df.duplicated(["index", "round"]), "index"].tolist()[:5]
        raise ConfigError(
            f"shard manifests do not cover images 0..{expected - 1} exactly once "
            f"(missing {missing}, duplicated {dup}): rerun the generate jobs"
        )
    df["modifiers"] = df["modifiers"].map(_text)
    io.write_csv(out_manifest, df)
    n_pass = passing(df)["index"].nunique()
    log.info(
        "merged %d shard(s): %d images in up to %d round(s), %d of %d slots pass -> %s",
        len(frames),
        len(df),
        int(df["round"].max()) + 1,
        n_pass,
        expected,
        out_manifest,
    )
    if n_pass < expected:
        log.warning(
            "%s: %d of %d images short of the target (generate.max_rounds)",
            out_manifest,
            expected - n_pass,
            expected,
        )
    return df


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


# ---------------------------------------------------------------------------------------------
# Report: the split and contact sheets per class x sampler x modifier (the paper's Figs. 5-6)


def split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Image counts per label, sampler, modifier group and option (``group`` 'all' = the block total)."""
    rows = []
    for (label, sampler), g in manifest.groupby(["label", "sampler"], sort=False):
        rows.append({"label": label, "sampler": sampler, "group": "all", "option": "all", "n": len(g)})
        parsed = g["modifiers"].map(_text).map(_parse_modifiers)
        groups = list(dict.fromkeys(k for d in parsed for k in d))
        for group in groups:
            for option, n in parsed.map(lambda d, gr=group: d.get(gr, "")).value_counts(sort=False).items():
                rows.append(
                    {"label": label, "sampler": sampler, "group": group, "option": option, "n": int(n)}
                )
    return pd.DataFrame(rows, columns=["label", "sampler", "group", "option", "n"])


def _parse_modifiers(text: str) -> dict:
    return dict(part.split("=", 1) for part in text.split(";") if "=" in part)


def section_generate(
    manifests, out_md, figures: dict, split_csv=None, per_row: int = 6, thumb: int = 96
) -> pd.DataFrame:
    """Markdown fragment for the report: the split table and one contact sheet per class.

    ``figures``: label -> PNG path (written beside the fragment and linked as ``sections/<name>``).
    Each sheet has one row per sampler x modifier option with its first ``per_row`` images.
    """
    made = io.read_manifests(manifests)
    made["modifiers"] = made["modifiers"].map(_text) if "modifiers" in made.columns else ""
    # the split and the sheets show the images that passed the per-image checks, one per slot
    df = passing(made).reset_index(drop=True)
    table = split_table(df)
    if split_csv is not None:
        io.write_csv(split_csv, table)
    lines = ["## Synthetic images", ""]
    first = made.iloc[0] if len(made) else None
    if first is not None:
        steps = made.groupby("sampler")["steps"].agg(["min", "max"])
        steps_txt = ", ".join(f"{s} {a}" if a == b else f"{s} {a}-{b}" for s, (a, b) in steps.iterrows())
        lines += [
            f"{len(df)} images ({first['resolution']} px, CFG {float(first['guidance_scale']):g}, "
            f"steps per sampler: {steps_txt}) from `{first['base_model']}`"
            + (f" with LoRA `{_text(first['lora_sha256'])[:12]}`" if _text(first["lora_sha256"]) else "")
            + f", in {made.groupby(['label', 'sampler'])['shard'].nunique().sum()} shard(s). "
            "Every image is reproducible from its manifest row (seed, prompt, sampler, steps).",
            "",
        ]
        slots = made.groupby(["label", "sampler"])["index"].nunique().sum()
        rounds = int(_rounds(made).max()) + 1
        lines += [
            f"{len(df)} of {slots} target images pass the filter's per-image checks; {len(made)} were "
            f"generated in up to {rounds} round(s) (a rejected image is replaced by a new seed for the "
            f"same prompt)"
            + (f"; {slots - len(df)} short after the last round." if len(df) < slots else ".")
            + " The filter section counts the rejections by reason.",
            "",
        ]
    lines += ["| class | sampler | group | option | images |", "|---|---|---|---|---:|"]
    lines += [f"| {r.label} | {r.sampler} | {r.group} | {r.option} | {r.n} |" for r in table.itertuples()]
    lines.append("")
    out_md = Path(out_md)
    for label, png in figures.items():
        rows = []
        for sampler, g in df[df["label"] == label].groupby("sampler", sort=False):
            parsed = g["modifiers"].map(_parse_modifiers)
            groups = list(dict.fromkeys(k for d in parsed for k in d))
            if not groups:
                rows.append((f"{sampler}", g["path"].head(per_row).tolist()))
            for group in groups:
                option_of = parsed.map(lambda d, gr=group: d.get(gr, ""))
                for option in dict.fromkeys(option_of):
                    paths = g["path"][option_of == option].head(per_row).tolist()
                    rows.append((f"{sampler}\n{group}={option}", paths))
        ncols = max([len(p) for _, p in rows] + [1])
        contact_sheet(
            [c for _, p in rows for c in p + [None] * (ncols - len(p))],  # blank cells where a row is short
            png,
            ncols=ncols,
            thumb=thumb,
            title=f"{label}: sampler x modifier",
            row_labels=[caption for caption, _ in rows],
        )
        lines += [
            f"![{label} contact sheet](sections/{Path(png).name})",
            "",
            f"*{label}: first {per_row} images of each sampler x modifier option.*",
            "",
        ]
    io.write_text(out_md, "\n".join(lines))
    log.info("generation report: %d images, %d sheet(s) -> %s", len(df), len(figures), out_md)
    return table
