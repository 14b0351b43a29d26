"""A prompt grid read from a folder of AUTOMATIC1111 web-UI PNGs (``generate.from_pngs``).

Each PNG's ``parameters`` text (webui.parse, the web UI's own reading rules) gives one grid row: its
prompt, negative prompt, sampler, steps, CFG scale and seed. The class is the first folder under the
grid folder (``<DIR>/<class>/**/*.png``): a folder name is visible and cannot be mistaken, unlike a
class word inside a prompt. Extra-network tags (``<lora:...>``, ``<lyco:...>``, ``<hypernet:...>``)
are dropped from the prompt, as our LoRA is applied at ``generate.lora_scale``; other prompt syntax
(e.g. the web UI's ``(word:1.2)`` emphasis) reaches the text encoder as written. Images are made at
``generate.resolution``, whatever the PNG's ``Size``.

A class's ``images_per_class`` images are split equally over its PNGs (largest remainder, earlier
files first, files in path order); the images of one (class, sampler) block follow its PNGs' order.
This module reads PNG headers only (no torch): the workflow calls it when it builds the DAG.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from . import webui
from .pipeline import SAMPLERS
from .plan import split_counts

#: an extra network of the web UI, named in the prompt: it is not ours to apply
_NETWORK_TAG = re.compile(r"\s*<(?:lora|lyco|hypernet):[^>]*>")
#: the web UI's "Schedule type" (v1.9+) when the sampler's own default schedule is used
_AUTOMATIC = "Automatic"
#: what a grid row keeps of a PNG for generation (the seed only with generate.from_pngs_seeds)
_ROW_KEYS = ("png", "prompt", "negative_prompt", "steps", "guidance_scale")


def sampler_of(params: dict, aliases: dict | None = None, where="") -> str:
    """Our sampler for a parsed ``parameters`` text: its ``Sampler`` (joined with a ``Schedule type``
    other than Automatic, as the web UI before v1.9 named them, e.g. "DPM++ 2M SDE Karras") by the
    web-UI names of pipeline.SAMPLERS, or by ``aliases`` (web-UI name -> ours) first."""
    ours = {display: name for name, (_, _, display) in SAMPLERS.items()} | dict(aliases or {})
    name = str(params.get("Sampler", "")).strip()
    schedule = str(params.get("Schedule type", "")).strip()
    if schedule and schedule != _AUTOMATIC and not name.endswith(f" {schedule}"):
        name = f"{name} {schedule}"
    if name not in ours:
        raise ConfigError(
            f"{where}: web-UI sampler '{name}' has no counterpart here; known: {', '.join(ours)} "
            "(or map it in generate.from_pngs_samplers)"
        )
    return ours[name]


def _number(params: dict, key: str, kind, where) -> int | float:
    if key not in params:
        raise ConfigError(f"{where}: its parameters text has no '{key}'")
    try:
        value = kind(params[key])
    except ValueError:
        raise ConfigError(f"{where}: '{key}: {params[key]}' is not a number") from None
    if value < (1 if key == "Steps" else 0):
        raise ConfigError(f"{where}: '{key}: {params[key]}' is out of range")
    return value


def row_of(text: str, aliases: dict | None = None, where="") -> dict:
    """One grid row from a ``parameters`` text: prompt (extra-network tags dropped), negative prompt,
    our sampler, steps, CFG scale and seed (None when the text has none)."""
    params = webui.parse(text)
    seed = _number(params, "Seed", int, where) if "Seed" in params else None
    return {
        "prompt": _NETWORK_TAG.sub("", params["Prompt"]).strip(),
        "negative_prompt": params["Negative prompt"],
        "sampler": sampler_of(params, aliases, where),
        "steps": _number(params, "Steps", int, where),
        "guidance_scale": float(_number(params, "CFG scale", float, where)),
        "seed": seed,
    }


def parameters_text(path) -> str:
    """The PNG's ``parameters`` text chunk (read from its header; the pixels are not decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            text = im.info.get("parameters")
    except (OSError, UnidentifiedImageError) as e:
        raise ConfigError(f"{path}: not a readable PNG ({type(e).__name__})") from None
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(
            f"{path}: no web-UI 'parameters' text chunk (not saved by the AUTOMATIC1111 web UI, or its "
            "metadata was stripped)"
        )
    return text


def read_folder(root, classes, aliases: dict | None = None) -> list[dict]:
    """The grid rows of every PNG under ``root`` (``<root>/<class>/**/*.png``), in path order, each
    with ``label`` and ``png`` (its path under ``root``)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"generate.from_pngs: folder '{root}' not found")
    pngs = sorted(
        (p for p in root.rglob("*") if p.suffix.lower() == ".png" and p.is_file()),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not pngs:
        raise ConfigError(f"generate.from_pngs: no PNG in '{root}' (expected <DIR>/<class>/*.png)")
    rows = []
    for path in pngs:
        rel = path.relative_to(root)
        if len(rel.parts) < 2 or rel.parts[0] not in classes:
            raise ConfigError(
                f"{path}: a from_pngs image must lie in a class folder, <DIR>/<class>/ with class one of "
                f"{', '.join(classes)}"
            )
        row = row_of(parameters_text(path), aliases, path)
        rows.append({"label": rel.parts[0], "png": rel.as_posix(), **row})
    missing = [c for c in classes if not any(r["label"] == c for r in rows)]
    if missing:
        raise ConfigError(
            f"generate.from_pngs: no PNG for class(es) {', '.join(missing)} in '{root}/<class>/'"
        )
    return rows


def block_grid(rows: list[dict], classes, images_per_class: int, seeds: bool = False) -> dict:
    """(label, sampler) -> that block's rows, each with the ``count`` of images it gets; blocks in
    class order, then in pipeline.SAMPLERS order; rows given no image are left out. ``seeds``: rows
    keep their PNG's seed (the first image of each replays it)."""
    blocks: dict[tuple[str, str], list[dict]] = {}
    for label in classes:
        mine = [r for r in rows if r["label"] == label]
        for row, count in zip(mine, split_counts(images_per_class, [1] * len(mine)), strict=True):
            if count:
                cell = {k: row[k] for k in _ROW_KEYS} | {"count": int(count)}
                if seeds and row["seed"] is not None:
                    cell["seed"] = int(row["seed"])
                blocks.setdefault((label, row["sampler"]), []).append(cell)
    order = {name: i for i, name in enumerate(SAMPLERS)}
    ranked = sorted(blocks, key=lambda b: (list(classes).index(b[0]), order[b[1]]))
    return {b: blocks[b] for b in ranked}


def grid_from_config(cfg: dict) -> dict | None:
    """The (label, sampler) blocks of a full config whose ``generate.from_pngs`` is set, else None."""
    g = cfg["generate"]
    if not g.get("from_pngs"):
        return None
    rows = read_folder(g["from_pngs"], cfg["classes"], g.get("from_pngs_samplers"))
    return block_grid(rows, cfg["classes"], g["images_per_class"], bool(g.get("from_pngs_seeds")))


def grid_samplers(blocks: dict) -> list[str]:
    """The samplers of a block grid, in pipeline.SAMPLERS order."""
    used = {sampler for _, sampler in blocks}
    return [name for name in SAMPLERS if name in used]
