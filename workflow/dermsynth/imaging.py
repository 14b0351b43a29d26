"""Geometry: centre-crop to a square and resize, per image and over a manifest; a thread pool for images."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import io
from .errors import ConfigError


@contextlib.contextmanager
def image_threads(threads: int) -> Iterator[Callable]:
    """Yield a ``map(fn, items)`` that runs on ``threads`` threads, results in input order.

    OpenCV, PIL decoding and PNG encoding release the GIL, so images go in parallel; OpenCV's own
    thread pool is set to 1 meanwhile, so ``threads`` is the number of busy cores, not its square.
    """
    threads = max(1, int(threads))
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        if threads == 1:
            yield map
        else:
            with ThreadPoolExecutor(threads) as pool:
                yield pool.map
    finally:
        cv2.setNumThreads(previous)


def center_square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Crop the central square (side = short side) and resize it to ``size`` x ``size``.

    INTER_AREA when shrinking (averages, no aliasing), LANCZOS4 when growing (sharpest).
    """
    size = int(size)
    if size < 1:
        raise ConfigError(f"resize size must be a positive number of pixels, got {size}")
    h, w = rgb.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = np.ascontiguousarray(rgb[top:top + s, left:left + s])
    if s == size:
        return crop.copy()
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LANCZOS4
    return cv2.resize(crop, (size, size), interpolation=interp)


def check_unique_stems(paths, what) -> list[str]:
    """File stems of ``paths``; ConfigError when two share one (their outputs would overwrite)."""
    stems = [Path(p).stem for p in paths]
    seen: set[str] = set()
    for s in stems:
        if s in seen:
            raise ConfigError(f"{what}: two images share the file name '{s}'; outputs would collide")
        seen.add(s)
    return stems


def resize_dataset(manifest_in, out_dir, manifest_out, size: int, threads: int = 1) -> pd.DataFrame:
    """Square-resize every image of a manifest to ``out_dir/<stem>.png``.

    ``path, sha256, width, height`` are updated; every other column is kept as it was.
    """
    df = io.read_csv(manifest_in) if not isinstance(manifest_in, pd.DataFrame) else manifest_in.copy()
    out_dir = Path(out_dir)
    stems = check_unique_stems(df["path"], manifest_in)

    def one(job: tuple[str, str]) -> tuple[str, str]:
        src, stem = job
        dst = out_dir / f"{stem}.png"
        return io.rel(dst), io.save_png(dst, center_square_resize(np.asarray(io.load_rgb(src)), size))

    with image_threads(threads) as pmap:
        done = list(tqdm(pmap(one, zip(df["path"], stems, strict=True)), total=len(df),
                         desc=f"resize {size}", disable=None))
    df["path"], df["sha256"] = [p for p, _ in done], [s for _, s in done]
    df["width"], df["height"] = int(size), int(size)
    io.write_csv(manifest_out, df)
    return df
