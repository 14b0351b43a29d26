"""The generation plan: which image each slot of a (class, sampler) block gets, before any model runs.

Each image's seed is a stable hash of (config seed, label, sampler, index) and its noise comes from
its own CPU ``torch.Generator``, so an image depends on its slot only, not on the batch or shard it
was generated in, the device's RNG or the images before it.

A slot fixes the image's prompt, negative prompt, CFG and (for a PNG prompt grid) steps and first
seed; from the config, every slot of a block shares the negative prompt and CFG, steps are drawn per
image from its seed and each image gets one option of every prompt-modifier group (the paper's
"smart transformations"), with exact counts per block, fixed by the image index alone. From a folder
of web-UI PNGs (``generate.from_pngs``, dermsynth.diffusion.pngs) each slot copies one PNG's values.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .. import config
from ..errors import ConfigError

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


def settings(cfg: dict, sampler: str, grid: list | None = None) -> dict:
    """The ``generate`` section (schema defaults for keys left out) with this sampler's ``steps``
    (None with a PNG ``grid``: each of its rows has its own)."""
    s = config.section("generate", cfg)
    if grid is not None:
        s["steps"] = None
    elif sampler not in s["samplers"]:
        raise ConfigError(
            f"generate.samplers has no entry for sampler '{sampler}': add "
            f"'{sampler}: {{steps: 20}}' or use one of {', '.join(s['samplers'])}"
        )
    else:
        s["steps"] = s["samplers"][sampler]["steps"]
    if int(s["resolution"]) % 8:
        raise ConfigError(f"generate.resolution {s['resolution']} is not a multiple of 8 (the VAE factor)")
    return s


def image_path(out_dir, label: str, sampler: str, index: int, rnd: int = 0) -> Path:
    """Round 0 keeps the plain name; a top-up image of round r gets the suffix ``_r<r>``."""
    return Path(out_dir) / f"{label}_{sampler}_{int(index):06d}{f'_r{int(rnd)}' if rnd else ''}.png"


def grid_size(grid: list) -> int:
    """Images of a block planned from PNG rows: the sum of their ``count``."""
    return sum(int(row["count"]) for row in grid)


def slots(s: dict, label: str, sampler: str, first: int, n: int, block: int, grid: list | None = None):
    """Slots ``first .. first+n-1`` of a block of ``block`` images: each one's index, prompt, modifiers,
    negative prompt and CFG; from a PNG ``grid`` (rows with a ``count``, pngs.block_grid) also its steps
    and the seed of its round-0 image (the PNG's own, when the row carries one, for its first copy)."""
    if grid is None:
        base = s["class_prompts"].get(label, s["prompt"])
        plan = modifier_plan(s["modifiers"], block, s["seed"], label, sampler)
        negative, cfg = str(s["negative_prompt"] or ""), float(s["guidance_scale"])
        return [
            {
                "index": i,
                "prompt": compose_prompt(base, label, s["modifiers"], plan[i]),
                "modifiers": modifiers_text(plan[i]),
                "negative_prompt": negative,
                "guidance_scale": cfg,
            }
            for i in range(first, first + n)
        ]
    # index -> (row, copy): the rows' images lie one after the other, in the grid's order
    owner = [(row, copy) for row in grid for copy in range(int(row["count"]))]
    return [
        {
            "index": i,
            "prompt": str(owner[i][0]["prompt"]),
            "modifiers": "",
            "negative_prompt": str(owner[i][0]["negative_prompt"] or ""),
            "guidance_scale": float(owner[i][0]["guidance_scale"]),
            "png_steps": int(owner[i][0]["steps"]),
            "png_seed": owner[i][0].get("seed") if owner[i][1] == 0 else None,
        }
        for i in range(first, first + n)
    ]


def round_jobs(pending: list[dict], rnd: int, s: dict, out: Path, label: str, sampler: str) -> list[dict]:
    """Round ``rnd``'s image of every pending slot: its seed (new each round), steps and file."""
    jobs = []
    for slot in pending:
        # a slot passed on to the next round carries the last round's seed and steps: drawn anew here
        png_seed, png_steps = slot.get("png_seed"), slot.get("png_steps")
        if rnd == 0 and png_seed is not None:
            seed = int(png_seed)
        else:
            seed = image_seed(s["seed"], label, sampler, slot["index"], rnd)
        steps = png_steps if png_steps is not None else steps_for(s["steps"], seed)
        path = image_path(out, label, sampler, slot["index"], rnd)
        jobs.append({**slot, "round": rnd, "seed": seed, "steps": steps, "path": path})
    return jobs
