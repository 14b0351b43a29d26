"""Files: atomic writes, sha256, manifests, image loading with one-line errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ConfigError, ImageError

#: Columns every image manifest carries; stages add their own after these.
MANIFEST_COLUMNS = ["path", "label", "dataset", "source_id", "sha256"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    A job killed mid-write leaves a ``.tmp-*`` file that no later run trusts, never a half file
    under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; swap it in for ``path`` only if the block succeeds.

    A model folder is many files: a job killed while writing them leaves a ``.tmp-*`` folder, never a
    half model under the final name (which a rerun would load).
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_csv(path: str | os.PathLike, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    # keep ids such as "0001" as text: they are identifiers, not numbers
    return pd.read_csv(path, dtype={"source_id": str, "lesion_id": str, "patient_id": str})


def read_manifests(paths) -> pd.DataFrame:
    """The rows of the manifests ``paths``, one after another (columns: their union); none: no rows.

    A manifest lists images (columns ``path`` and ``label`` at least): one without them is a
    ConfigError naming it, before any image is read.
    """
    frames = [read_csv(p) for p in paths]
    for p, df in zip(paths, frames, strict=True):
        missing = [c for c in ("path", "label") if c not in df.columns]
        if missing:
            raise ConfigError(f"manifest {p} lacks column(s) {missing}: regenerate it")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path", "label"])


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB, EXIF orientation applied; raise ImageError with one line."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb8(im)
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image PIL can read") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: unreadable image ({e})") from None


def to_rgb8(im: Image.Image) -> Image.Image:
    """Convert any PIL mode (CMYK, RGBA, P, L, I;16, ...) to 8-bit RGB."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = arr / (65535.0 if hi > 255 else 255.0) * 255.0
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # composite on white: dermoscopy backgrounds are light, black would read as a lesion
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def save_png(path: str | os.PathLike, im: Image.Image | np.ndarray, pnginfo=None) -> str:
    """Save a PNG atomically without EXIF and return its sha256."""
    if isinstance(im, np.ndarray):
        im = Image.fromarray(im)
    with atomic_path(path) as tmp:
        im.save(tmp, format="PNG", pnginfo=pnginfo)
    return sha256_file(path)


def rel(path: str | os.PathLike) -> str:
    """Paths in manifests are relative to the working directory when they live under it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)
