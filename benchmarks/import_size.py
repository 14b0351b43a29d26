"""Import size cap (``max_side``), measured: does capping the stored size change what the stages see?

The stages read the cleaned images through :func:`dermsynth.imaging.square_resize` (square crop or
pad, then antialiased Lanczos) at ``preprocess.resize.diffusion`` (512) and ``.classifier`` (224).
For each real image and each candidate ``max_side`` this compares that output from the original with
the output from a copy first downscaled the way the import does it (``cv2.INTER_AREA``, longest side
to ``max_side``): mean absolute difference (grey levels, 0-255, all channels) and PSNR between the
two outputs: mean and worst over the images the cap downscales. An image whose longest side is
already <= ``max_side`` is stored unchanged, so its difference is exactly 0 (counted, left out).

Why the long side: with policy ``crop`` the square is the short side, 0.75 x ``max_side`` for a 4:3
image, so ``max_side`` 768 leaves a 576 px square for a 512 px output. What matters is the ratio of
the stored square to the output; it does not depend on the original's size, so the 1504 px ISIC
originals here stand in for the 3072 px ones of the current archive.

Also reported per ``max_side``: PNG bytes and DullRazor seconds per image (default settings, sizes
scaled as the clean stage does), on the full-resolution images.

Images: ``../shared/data/isic`` (93 full-resolution up to 1504 px, 107 resized to 600 px) and
``../shared/data/ham10000`` (600x450). ``--quick``: all full-resolution images but few of the
others, fewer DullRazor timings (~40 s). Last line: one JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from dermsynth import hair, io  # noqa: E402
from dermsynth.data.folder import downscale  # noqa: E402
from dermsynth.imaging import square_resize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
MAX_SIDES = (768, 1024, 1280, 1536)
SIZES = (512, 224)
POLICIES = ("crop", "pad")
RESAMPLES = ("lanczos", "area")
#: tolerance for "unchanged": mean |diff| over all images and pixels below this many grey levels ...
TOL_MAD = 0.5
#: ... and the worst image's PSNR (capped-path output vs original-path output) at least this many dB.
#: Not the worst image's mean |diff|: the crop offset is rounded on another pixel grid, so a sharp
#: image shifts by up to one output pixel, which moves its |diff| to ~1 without visible change.
TOL_PSNR = 40.0
DULLRAZOR = {"kernel_size": 17, "threshold": 10, "method": "closing", "blur": 3, "guard": True}


def cap(rgb: np.ndarray, max_side: int, resample: str = "lanczos") -> np.ndarray:
    """The import's downscale: ``lanczos`` (dermsynth.data.folder.downscale) or the former ``area``."""
    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    if resample == "lanczos":
        return downscale(rgb, max_side)
    s = max_side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def images(quick: bool) -> list[Path]:
    m = pd.read_csv(DATA / "manifest.csv")
    full = m[(m.dataset == "isic") & (m.encoding == "original_bytes")].path.tolist()
    small = m[(m.dataset == "isic") & (m.encoding != "original_bytes")].path.tolist()
    ham = m[m.dataset == "ham10000"].path.tolist()
    if quick:
        # every full-resolution image: they are the only ones a cap changes, and few exceed 1024 px
        small, ham = small[::20], ham[::20]
    return [DATA / p for p in full + small + ham]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a subset of the images (under 2 minutes)")
    ap.add_argument("--dullrazor", type=int, default=None, help="images timed with DullRazor")
    args = ap.parse_args()
    t0 = time.time()
    paths = images(args.quick)
    stats = {(r, m, p, s): [] for r in RESAMPLES for m in MAX_SIDES for p in POLICIES for s in SIZES}
    unchanged = dict.fromkeys(MAX_SIDES, 0)
    long_sides = []
    big = []
    for path in paths:
        rgb = np.asarray(io.load_rgb(path))
        long_sides.append(max(rgb.shape[:2]))
        if max(rgb.shape[:2]) > min(MAX_SIDES):
            big.append(path)
        ref = {(p, s): square_resize(rgb, s, p) for p in POLICIES for s in SIZES}
        for m in MAX_SIDES:
            if max(rgb.shape[:2]) <= m:  # stored as is: difference exactly 0, left out of the means
                unchanged[m] += 1
                continue
            for rs in RESAMPLES:
                small = cap(rgb, m, rs)
                for (p, s), r in ref.items():
                    out = square_resize(small, s, p)
                    d = float(np.abs(out.astype(np.int16) - r).mean())
                    stats[(rs, m, p, s)].append((d, psnr(out, r)))

    n_time = args.dullrazor if args.dullrazor is not None else (2 if args.quick else 8)
    cost = {}
    timed = big[:n_time]
    for m in (*MAX_SIDES, None):
        nbytes, secs = [], []
        for path in timed:
            rgb = np.asarray(io.load_rgb(path))
            img = rgb if m is None else cap(rgb, m)
            nbytes.append(len(cv2.imencode(".png", img)[1]))
            t = time.process_time()
            hair.dullrazor(img, **hair.scaled_params(DULLRAZOR, *img.shape[:2]))
            secs.append(time.process_time() - t)
        cost["original" if m is None else str(m)] = {
            "png_kb": round(float(np.mean(nbytes)) / 1024, 1) if nbytes else None,
            "dullrazor_s": round(float(np.mean(secs)), 3) if secs else None,
        }

    table = {}
    for rs, m in [(rs, m) for rs in RESAMPLES for m in MAX_SIDES]:
        row = {"unchanged_images": unchanged[m]}
        for p in POLICIES:
            for s in SIZES:
                v = np.array(stats[(rs, m, p, s)] or [(0.0, float("inf"))])
                row[f"{p}{s}"] = {
                    "worst_mad": round(float(v[:, 0].max()), 3),
                    "mean_mad": round(float(v[:, 0].mean()), 3),
                    "worst_psnr_db": round(float(v[:, 1].min()), 2),
                }
        # judged on policy crop, the paper's: pad's border colour is the median of the outermost
        # pixels, which any resampling of a dark-framed edge can flip (see the pad columns)
        row["within_tolerance"] = all(
            row[f"crop{s}"]["mean_mad"] < TOL_MAD and row[f"crop{s}"]["worst_psnr_db"] >= TOL_PSNR
            for s in SIZES
        )
        table[f"{rs}_{m}"] = row
    ok = [m for m in MAX_SIDES if table[f"lanczos_{m}"]["within_tolerance"]]
    for m, row in table.items():
        print(m, json.dumps(row), file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "import_size",
                "quick": args.quick,
                "images": len(paths),
                "downscaled_by_smallest_cap": len(big),
                "long_side_max": int(max(long_sides)),
                "tolerance": {"mean_mad_lt": TOL_MAD, "worst_psnr_db_ge": TOL_PSNR},
                "by_max_side": table,
                "cost_per_image": {"images": len(timed), **cost},
                "smallest_within_tolerance_lanczos": min(ok) if ok else None,
                "seconds": round(time.time() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
