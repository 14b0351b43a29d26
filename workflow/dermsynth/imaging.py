"""Geometry: centre-crop or pad to a square, Lanczos resize, the contact sheet; a thread pool for images."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from . import io
from .errors import ConfigError, ImageError
from .progress import Bar


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


POLICIES = ("crop", "pad")


def lanczos(rgb: np.ndarray, size: int) -> np.ndarray:
    """Square ``rgb`` to ``size`` x ``size`` with PIL's Lanczos filter.

    PIL widens the Lanczos kernel by the shrink factor, so downscaling is antialiased. Measured on a
    zone plate, 2048 -> 256 px: PIL LANCZOS leaves no alias (grey-level std 0.0 where the pattern is
    above the new Nyquist), cv2 INTER_AREA 3.5, cv2 INTER_LANCZOS4 67 (it does not widen its kernel).
    PIL takes ~110 ms for 2048x1536 -> 512 on one core against INTER_AREA's 13 ms: once per image.
    """
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb.copy()
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(rgb)).resize((size, size), Image.Resampling.LANCZOS)
    )


def square(rgb: np.ndarray, policy: str = "crop") -> np.ndarray:
    """The central square (``crop``) or the whole image centred on a square (``pad``).

    Padding uses the median colour of the image's outermost pixels, so the border reads as
    background (skin or the dermoscope's dark frame) rather than as a black bar.
    """
    if policy not in POLICIES:
        raise ConfigError(f"preprocess.resize.policy is '{policy}'; allowed: {', '.join(POLICIES)}")
    h, w = rgb.shape[:2]
    if h == w:
        return rgb
    if policy == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return np.ascontiguousarray(rgb[top : top + s, left : left + s])
    s = max(h, w)
    edge = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).reshape(
        -1, rgb.shape[2] if rgb.ndim == 3 else 1
    )
    colour = np.median(edge, axis=0).round().astype(rgb.dtype)
    out = np.empty((s, s) + rgb.shape[2:], rgb.dtype)
    out[:] = colour if rgb.ndim == 3 else colour[0]
    top, left = (s - h) // 2, (s - w) // 2
    out[top : top + h, left : left + w] = rgb
    return out


def square_resize(rgb: np.ndarray, size: int, policy: str = "crop") -> np.ndarray:
    """:func:`square` then antialiased Lanczos to ``size`` x ``size`` (uint8 in, uint8 out)."""
    size = int(size)
    if size < 1:
        raise ConfigError(f"resize size must be a positive number of pixels, got {size}")
    return lanczos(square(rgb, policy), size)


def center_square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Crop the central square (side = short side) and resize it to ``size`` x ``size`` (Lanczos)."""
    return square_resize(rgb, size, "crop")


def check_unique_stems(paths, what) -> list[str]:
    """File stems of ``paths``; ConfigError when two share one (their outputs would overwrite)."""
    stems = [Path(p).stem for p in paths]
    seen: set[str] = set()
    for s in stems:
        if s in seen:
            raise ConfigError(f"{what}: two images share the file name '{s}'; outputs would collide")
        seen.add(s)
    return stems


def resize_dataset(
    manifest_in, out_dir, manifest_out, size: int, threads: int = 1, policy: str = "crop"
) -> pd.DataFrame:
    """Square-resize every image of a manifest to ``out_dir/<stem>.png`` (``policy``: crop | pad).

    ``path, sha256, width, height`` are updated; every other column is kept as it was.
    """
    df = io.read_csv(manifest_in) if not isinstance(manifest_in, pd.DataFrame) else manifest_in.copy()
    out_dir = Path(out_dir)
    stems = check_unique_stems(df["path"], manifest_in)
    square(np.zeros((1, 2, 3), np.uint8), policy)  # a bad policy fails before any image is read

    def one(job: tuple[str, str]) -> tuple[str, str]:
        src, stem = job
        dst = out_dir / f"{stem}.png"
        return io.rel(dst), io.save_png(dst, square_resize(np.asarray(io.load_rgb(src)), size, policy))

    with image_threads(threads) as pmap:
        done = list(
            Bar(
                pmap(one, zip(df["path"], stems, strict=True)),
                total=len(df),
                desc=f"resize {size}",
            )
        )
    df["path"], df["sha256"] = [p for p, _ in done], [s for _, s in done]
    df["width"], df["height"] = int(size), int(size)
    io.write_csv(manifest_out, df)
    return df


def _placeholder(size: int, text: str) -> Image.Image:
    im = Image.new("RGB", (size, size), (200, 200, 200))
    ImageDraw.Draw(im).text((4, size // 2 - 6), text, fill=(90, 0, 0))
    return im


def _cell(image, size: int) -> Image.Image:
    """One grid cell: ``image`` (a path or an RGB / gray array) scaled into a ``size`` square, centred.

    None or an empty path is a deliberate blank cell (padding a row); an unreadable file shows as such.
    """
    if image is None or (isinstance(image, str) and not image):
        return Image.new("RGB", (size, size), (255, 255, 255))
    if isinstance(image, np.ndarray):
        im = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).convert("RGB")
    else:
        try:
            im = io.load_rgb(str(image))
        except ImageError:
            return _placeholder(size, "unreadable")
    if im.size != (size, size):
        # scale to the cell both ways: small generated images are enlarged, large photographs shrunk
        scale = size / max(im.width, im.height)
        im = im.resize(
            (max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS
        )
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return canvas


def contact_sheet(
    images: list,
    out_png,
    ncols: int = 8,
    thumb: int = 96,
    labels: list[str] | None = None,
    title: str | None = None,
    row_labels: list[str] | None = None,
    headers: list[str] | None = None,
    label_w: int = 150,
) -> Path:
    """The one image grid of every stage and the report, saved as PNG.

    ``images`` fill rows of ``ncols`` cells; each is a path or an RGB array (None or "" = blank cell).
    Optional: a caption under each cell (``labels``), a ``title``, a text left of each row
    (``row_labels``, lines split at newlines, in a margin ``label_w`` px wide) and one above each
    column (``headers``). No images: a placeholder that says so.
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    if not len(images):
        io.save_png(out_png, _placeholder(max(thumb, 120), "no images"))
        return Path(out_png)
    ncols = max(1, min(int(ncols), len(images)))
    nrows = -(-len(images) // ncols)
    pad = 2
    caption_h = 14 if labels is not None else 0
    top = (18 if title else 0) + (14 if headers else 0)
    left = label_w if row_labels is not None else 0
    cell_w, cell_h = thumb + pad, thumb + caption_h + pad
    sheet = Image.new("RGB", (left + ncols * cell_w + pad, top + nrows * cell_h + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad + 2, 3), title, fill=(0, 0, 0))
    for c, text in enumerate(headers or []):
        draw.text((left + pad + c * cell_w + 2, top - 13), str(text), fill=(0, 0, 0))
    for r, text in enumerate(row_labels or []):
        y = top + pad + r * cell_h
        for k, line in enumerate(str(text).split("\n")):
            draw.text((4, y + thumb // 2 - 12 + 12 * k), line[: label_w // 6], fill=(0, 0, 0))
    for k, image in enumerate(images):
        r, c = divmod(k, ncols)
        x, y = left + pad + c * cell_w, top + pad + r * cell_h
        sheet.paste(_cell(image, thumb), (x, y))
        if labels is not None:
            draw.text((x + 1, y + thumb + 1), str(labels[k])[: max(4, thumb // 6)], fill=(0, 0, 0))
    io.save_png(out_png, sheet)
    return Path(out_png)


def pairs_sheet(pairs, out_png, right_labels, title: str) -> None:
    """Synthetic | nearest fine-tune image, two cells a pair and two pairs a row: ``pairs`` has
    ``path``, ``nearest`` and ``similarity`` per row, ``right_labels`` what each match is (a view)."""
    paths, labels = [], []
    for r, right in zip(pairs.itertuples(), right_labels, strict=True):
        paths += [r.path, r.nearest]
        labels += [f"syn {r.similarity:.4f}", f"train {right}"]
    contact_sheet(paths, out_png, ncols=4, labels=labels if paths else None, title=title)
