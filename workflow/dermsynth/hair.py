"""DullRazor hair removal (Lee et al. 1997, in its common OpenCV form).

Hairs are thin dark lines: a morphological black-hat (closing minus image) with a structuring element
wider than a hair but narrower than a lesion lights them up; a threshold turns that into a mask, and
inpainting fills the masked pixels from their surroundings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import io
from .errors import ConfigError
from .imaging import check_unique_stems, image_threads

log = logging.getLogger("dermsynth")

METHODS = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
SHAPES = {"cross": cv2.MORPH_CROSS, "ellipse": cv2.MORPH_ELLIPSE, "rect": cv2.MORPH_RECT}
OUT_COLUMNS = ["path", "sha256", "mask_path", "hair_fraction", "psnr_before", "psnr_after"]
#: image side (px) at which ``kernel_size`` in the config is meant
REFERENCE_SIZE = 512


def dullrazor(rgb: np.ndarray, kernel_size: int = 17, threshold: float = 10, inpaint_radius: int = 5,
              method: str = "telea", blur: int = 3, shape: str = "cross",
              dilate: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Remove dark hairs from a uint8 RGB image; return (clean uint8 RGB, hair mask uint8 0/255).

    ``kernel_size`` is used as given (no scaling here). ``blur`` is a Gaussian kernel size (0: none)
    applied to the black-hat response before thresholding, which joins broken hair segments and drops
    single-pixel noise. ``dilate`` iterations of a 3x3 dilation cover the hairs' soft edges.
    """
    if method not in METHODS:
        raise ConfigError(f"preprocess.dullrazor.method is '{method}'; allowed: {', '.join(METHODS)}")
    if shape not in SHAPES:
        raise ConfigError(f"dullrazor shape is '{shape}'; allowed: {', '.join(SHAPES)}")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    k = max(3, int(kernel_size) | 1)
    kernel = cv2.getStructuringElement(SHAPES[shape], (k, k))
    response = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, kernel)
    if blur and int(blur) > 1:
        b = int(blur) | 1
        response = cv2.GaussianBlur(response, (b, b), 0)
    mask = np.where(response > threshold, 255, 0).astype(np.uint8)
    if dilate:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)), iterations=int(dilate))
    if not mask.any():
        return rgb.copy(), mask
    clean = cv2.inpaint(rgb, mask, float(inpaint_radius), METHODS[method])
    return clean, mask


def scaled_kernel(kernel_size: int, height: int, width: int) -> int:
    """``kernel_size`` is defined at 512 px; scale it with the image's short side (odd, >= 3).

    The short side is what the later centre crop keeps, so a hair that is k px wide at 512 px
    is treated alike in a 3000 px original and a 128 px demo image.
    """
    k = int(round(kernel_size * min(height, width) / REFERENCE_SIZE))
    return max(3, k | 1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def remove_hair_dataset(manifest_in, out_dir, manifest_out, cfg: dict, threads: int = 1) -> pd.DataFrame:
    """DullRazor over a manifest; images to ``out_dir/images/<stem>.png``, masks to ``out_dir/masks/``.

    cfg is ``preprocess.dullrazor``: activate, kernel_size (defined at 512 px and scaled to each
    image's short side, see :func:`scaled_kernel`), threshold, inpaint_radius, method, blur (optional:
    shape, dilate). With ``activate: false`` images are written through unchanged with an empty mask,
    so downstream paths do not depend on the switch. Adds ``mask_path, hair_fraction`` and, where a
    ``truth_path`` is given, ``psnr_before, psnr_after``. ``threads`` images are processed at once.
    """
    df = io.read_csv(manifest_in) if not isinstance(manifest_in, pd.DataFrame) else manifest_in.copy()
    out_dir = Path(out_dir)
    active = bool(cfg.get("activate", True))
    keys = ("threshold", "inpaint_radius", "method", "blur", "shape", "dilate")
    params = {k: cfg[k] for k in keys if k in cfg}
    if active and params.get("method", "telea") not in METHODS:
        raise ConfigError(f"preprocess.dullrazor.method is '{params['method']}'; "
                          f"allowed: {', '.join(METHODS)}")
    stems = check_unique_stems(df["path"], manifest_in)
    truths = df["truth_path"].fillna("").astype(str) if "truth_path" in df.columns else [""] * len(df)

    def one(job: tuple[str, str, str]) -> dict:
        src, stem, truth = job
        rgb = np.asarray(io.load_rgb(src))
        if active:
            k = scaled_kernel(int(cfg.get("kernel_size", 17)), *rgb.shape[:2])
            clean, mask = dullrazor(rgb, kernel_size=k, **params)
        else:
            clean, mask = rgb, np.zeros(rgb.shape[:2], np.uint8)
        dst, mdst = out_dir / "images" / f"{stem}.png", out_dir / "masks" / f"{stem}.png"
        res = {"path": io.rel(dst), "sha256": io.save_png(dst, clean), "mask_path": io.rel(mdst),
               "hair_fraction": round(float(mask.mean() / 255.0), 6), "psnr_before": np.nan,
               "psnr_after": np.nan}
        io.save_png(mdst, mask)
        if truth:
            t = np.asarray(io.load_rgb(truth))
            res["psnr_before"], res["psnr_after"] = round(psnr(rgb, t), 4), round(psnr(clean, t), 4)
        return res

    with image_threads(threads) as pmap:
        jobs = zip(df["path"], stems, truths, strict=True)
        done = pd.DataFrame(list(tqdm(pmap(one, jobs), total=len(df), desc="dullrazor", disable=None)),
                            columns=OUT_COLUMNS)
    for col in ("path", "sha256", "mask_path", "hair_fraction"):
        df[col] = done[col].to_numpy()
    if "truth_path" in df.columns:
        df["psnr_before"], df["psnr_after"] = done["psnr_before"].to_numpy(), done["psnr_after"].to_numpy()
        scored = done["psnr_before"].notna()
        if scored.any():
            mean = done.loc[scored, ["psnr_before", "psnr_after"]].mean()
            log.info("dullrazor PSNR vs hair-free truth: %.2f -> %.2f dB (mean over %d images)",
                     mean["psnr_before"], mean["psnr_after"], scored.sum())
    io.write_csv(manifest_out, df)
    return df
