"""Artifact checks for generated images, and contact sheets for looking at them.

``filter_synthetic`` keeps a generated image only if it reads, matches its manifest's sha256, is not
(nearly) all black, all white or flat, and is not a pixel-exact copy of an image already kept. Every
dropped image becomes one row of ``rejected.csv`` with its reason, so the counts reach the report.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from . import io
from .errors import ConfigError, ImageError

log = logging.getLogger("dermsynth.quality")

REJECTED_COLUMNS = ["path", "label", "sampler", "reason", "score", "detail"]
#: Reasons in the order they are checked: the first that applies is reported.
REASONS = ("unreadable", "sha_mismatch", "black", "white", "flat", "duplicate")

BLACK_LEVEL = 10  # gray value below which a pixel counts as black (0-255)
WHITE_LEVEL = 245  # gray value above which a pixel counts as white

FILTER_DEFAULTS = {"min_std": 4.0, "max_black_fraction": 0.9, "max_white_fraction": 0.9}


def _thresholds(cfg: dict) -> dict:
    out = dict(FILTER_DEFAULTS)
    out.update({k: cfg[k] for k in FILTER_DEFAULTS if cfg.get(k) is not None})
    for key in ("max_black_fraction", "max_white_fraction"):
        if not 0.0 <= float(out[key]) <= 1.0:
            raise ConfigError(f"filter.{key} = {out[key]} must lie in [0, 1]")
    if float(out["min_std"]) < 0:
        raise ConfigError(f"filter.min_std = {out['min_std']} must be >= 0")
    return out


def image_stats(arr: np.ndarray) -> dict:
    """Gray-level statistics of an RGB uint8 array used by the artifact checks."""
    gray = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return {
        "std": float(gray.std()),
        "black": float(np.mean(gray < BLACK_LEVEL)),
        "white": float(np.mean(gray > WHITE_LEVEL)),
    }


def pixel_hash(arr: np.ndarray) -> str:
    """Hash of decoded pixels (with the shape): equal for the same image saved twice in any format."""
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def check_image(path: str, expected_sha: str | None, thr: dict) -> dict:
    """One image's verdict: {'reason': None | str, 'score': float, 'detail': str, 'pixel_hash': str}."""
    try:
        arr = np.asarray(io.load_rgb(path))
    except ImageError as e:
        return {"reason": "unreadable", "score": float("nan"), "detail": str(e), "pixel_hash": None}
    if expected_sha:
        actual = io.sha256_file(path)
        if actual != expected_sha:
            return {
                "reason": "sha_mismatch",
                "score": float("nan"),
                "detail": f"file sha256 {actual[:12]} != manifest {expected_sha[:12]}",
                "pixel_hash": None,
            }
    st = image_stats(arr)
    phash = pixel_hash(arr)
    if st["black"] > thr["max_black_fraction"]:
        return {
            "reason": "black",
            "score": st["black"],
            "detail": f"{st['black']:.3f} of pixels < {BLACK_LEVEL}",
            "pixel_hash": phash,
        }
    if st["white"] > thr["max_white_fraction"]:
        return {
            "reason": "white",
            "score": st["white"],
            "detail": f"{st['white']:.3f} of pixels > {WHITE_LEVEL}",
            "pixel_hash": phash,
        }
    if st["std"] < thr["min_std"]:
        return {
            "reason": "flat",
            "score": st["std"],
            "detail": f"gray std {st['std']:.2f} < {thr['min_std']}",
            "pixel_hash": phash,
        }
    return {"reason": None, "score": st["std"], "detail": "", "pixel_hash": phash}


def _read_manifests(manifests: Sequence[str | os.PathLike]) -> pd.DataFrame:
    if not manifests:
        raise ConfigError("filter_synthetic needs at least one generation manifest")
    frames = [io.read_csv(m) for m in manifests]
    df = pd.concat(frames, ignore_index=True, sort=False)
    missing = [c for c in ("path", "label") if c not in df.columns]
    if missing:
        raise ConfigError(f"generation manifests lack column(s) {missing}: regenerate them")
    return df


def _text(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


def filter_synthetic(
    manifests: list[str], out_manifest, rejected_path, cfg: dict, threads: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every generated image; write kept rows (all columns) and ``rejected.csv``.

    ``cfg`` is the config's ``filter`` section. Returns (kept, rejected) data frames.
    """
    thr = _thresholds(cfg)
    df = _read_manifests(manifests)
    shas = df["sha256"].map(_text) if "sha256" in df.columns else pd.Series([""] * len(df))
    paths = df["path"].map(str).tolist()
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        verdicts = list(
            pool.map(lambda a: check_image(a[0], a[1] or None, thr), zip(paths, shas, strict=True))
        )

    # duplicates are judged in manifest order: the first copy is kept, later copies are rejected
    seen: dict[str, str] = {}
    keep, rejected = [], []
    sampler = df["sampler"].map(_text) if "sampler" in df.columns else pd.Series([""] * len(df))
    for i, v in enumerate(verdicts):
        reason, detail = v["reason"], v["detail"]
        if reason is None and v["pixel_hash"] in seen:
            reason, detail = "duplicate", f"same pixels as {seen[v['pixel_hash']]}"
        if reason is None:
            seen[v["pixel_hash"]] = paths[i]
            keep.append(i)
            continue
        rejected.append(
            {
                "path": paths[i],
                "label": _text(df["label"].iat[i]),
                "sampler": sampler.iat[i],
                "reason": reason,
                "score": v["score"] if reason != "duplicate" else float("nan"),
                "detail": detail,
            }
        )
    kept = df.iloc[keep].reset_index(drop=True)
    rej = pd.DataFrame(rejected, columns=REJECTED_COLUMNS)
    io.write_csv(out_manifest, kept)
    io.write_csv(rejected_path, rej)
    counts = rej["reason"].value_counts().to_dict()
    log.info("filter: kept %d of %d images; rejected %s", len(kept), len(df), counts or "none")
    return kept, rej


def _placeholder(size: int, text: str) -> Image.Image:
    im = Image.new("RGB", (size, size), (200, 200, 200))
    ImageDraw.Draw(im).text((4, size // 2 - 6), text, fill=(90, 0, 0))
    return im


def _thumbnail(path: str, size: int) -> Image.Image:
    if not path:  # an empty path is a deliberate blank cell (padding a row)
        return Image.new("RGB", (size, size), (255, 255, 255))
    try:
        im = io.load_rgb(path)
    except ImageError:
        return _placeholder(size, "unreadable")
    # scale to the cell both ways: small generated images are enlarged, large photographs shrunk
    scale = size / max(im.width, im.height)
    im = im.resize(
        (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS
    )
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return canvas


def contact_sheet(
    paths: list[str],
    out_png,
    ncols: int = 8,
    thumb: int = 96,
    labels: list[str] | None = None,
    title: str | None = None,
) -> Path:
    """A grid of thumbnails (one caption line under each when ``labels`` is given), saved as PNG."""
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} images")
    ncols = max(1, min(int(ncols), max(1, len(paths))))
    nrows = max(1, -(-len(paths) // ncols))
    caption_h = 14 if labels is not None else 0
    title_h = 18 if title else 0
    pad = 2
    cell_w, cell_h = thumb + pad, thumb + caption_h + pad
    sheet = Image.new("RGB", (ncols * cell_w + pad, title_h + nrows * cell_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad + 2, 3), title, fill=(0, 0, 0))
    if not paths:
        sheet = _placeholder(max(thumb, 120), "no images")
    for k, p in enumerate(paths):
        r, c = divmod(k, ncols)
        x, y = pad + c * cell_w, title_h + pad + r * cell_h
        sheet.paste(_thumbnail(str(p), thumb), (x, y))
        if labels is not None:
            draw.text((x + 1, y + thumb + 1), str(labels[k])[: max(4, thumb // 6)], fill=(0, 0, 0))
    io.save_png(out_png, sheet)
    return Path(out_png)
