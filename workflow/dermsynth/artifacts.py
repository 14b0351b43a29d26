"""Per-image artifact checks: one verdict per generated image, shared by generation and the filter.

Generation applies ``image_verdict`` to top up a shard with new seeds; the filter stage
(``dermsynth.filter``) applies the same callable and adds the set-level checks (duplicates,
memorization), which need every image at once. Each check measures one score per image and compares
it with a threshold from the config's ``filter`` section; the reason codes are listed in ``REASONS``
(the set-level ones too, so the priority order lives in one place):

- ``unreadable``, ``sha_mismatch``: the file does not decode, or differs from its manifest's sha256.
- ``black``, ``white``, ``flat``: mostly near-black / near-white pixels, or gray std below
  ``min_std``. A diffusion run that produced NaNs decodes to an all-black image and lands here.
- ``clipped``: share of saturated pixels (a channel at 0 or 255) inside the central disc, where
  the dermoscope ring cannot be.
- ``cast``: hue of the mean colour in CIELAB outside the skin range, or too saturated overall.
- ``noise``: noise sigma, the robust (median) Immerkaer estimate: the 3x3 kernel
  [[1,-2,1],[-2,4,-2],[1,-2,1]] cancels smooth structure, and the median of its magnitude ignores
  the few edge pixels.
- ``tiling``: repeated pattern. Autocorrelation ``r(d)`` of the high-pass residual (via FFT); a
  period shows as ``r(d)`` high while ``r(d/2)`` is not, so ``max_d r(d) - r(d/2)`` is high for tiles
  and checkerboards (d = 2: Nyquist) but not for hairs or edges, whose autocorrelation falls off
  monotonically along the line.
- ``blurry``: RMS of the Laplacian (gray levels) below ``blur.min_sharpness``, measured after
  area-averaging to ``ANALYSIS_SIZE`` px, so the threshold is a blur as a share of the side at any
  size from 128 px up (smaller images are measured as they are, which is lenient).
- ``no_lesion``: no central dark blob: Otsu on the smoothed blue channel inside the central disc,
  the dark component at (or nearest to) the centre must cover ``lesion.min_area`` of the disc and be
  ``lesion.min_contrast`` gray levels darker than its surroundings.

Thresholds are calibrated by ``benchmarks/filter.py`` on real ISIC / HAM10000 dermoscopy (through
the workflow's resize and DullRazor, 512 and 128 px pooled; rulers, rings, bubbles, gel, vignetting
and hairs are clean images) and artifacts planted into it. Noise and tiling are per-pixel artifacts
and are scored at the native resolution; one threshold holds at 128 and 512 px on real images.
"""

from __future__ import annotations

import hashlib
import math
from functools import partial

import cv2
import numpy as np

from . import config, io
from .errors import ConfigError, ImageError

#: Reasons in priority order: the first that applies is a row's reason.
REASONS = (
    "unreadable",
    "sha_mismatch",
    "black",
    "white",
    "flat",
    "memorized",
    "memorized_semantic",
    "clipped",
    "cast",
    "tiling",
    "noise",
    "blurry",
    "no_lesion",
    "duplicate",
)

BLACK_LEVEL = 10  # gray value below which a pixel counts as black (0-255)
WHITE_LEVEL = 245  # gray value above which a pixel counts as white
ANALYSIS_SIZE = 128  # side (px) at which sharpness is measured, whatever the image size
DISC = 0.45  # radius of the central disc (share of the shorter side): inside any dermoscope ring

_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def thresholds(cfg: dict | None) -> dict:
    """The config's ``filter`` section with the schema's defaults for keys left out, checked; also the
    one rule the schema cannot state (``cast.min_hue`` <= ``cast.max_hue``)."""
    out = config.section("filter", cfg)
    if float(out["cast"]["min_hue"]) > float(out["cast"]["max_hue"]):
        raise ConfigError(
            f"filter.cast.min_hue = {out['cast']['min_hue']} exceeds max_hue = {out['cast']['max_hue']}"
        )
    return out


# ---------------------------------------------------------------------------------------------
# measures: each maps an RGB uint8 array to one score


def gray_of(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) @ _GRAY


def _disc(h: int, w: int) -> np.ndarray:
    y, x = np.ogrid[:h, :w]
    return (y - (h - 1) / 2) ** 2 + (x - (w - 1) / 2) ** 2 <= (DISC * min(h, w)) ** 2


def image_stats(arr: np.ndarray) -> dict:
    """Gray-level statistics of an RGB uint8 array used by the blank checks."""
    gray = gray_of(arr)
    return {
        "std": float(gray.std()),
        "black": float(np.mean(gray < BLACK_LEVEL)),
        "white": float(np.mean(gray > WHITE_LEVEL)),
    }


def clipped_fraction(arr: np.ndarray) -> float:
    """Share of central-disc pixels with a channel at 0 or 255."""
    inside = arr[_disc(*arr.shape[:2])]
    return float(np.mean(((inside >= 255) | (inside <= 0)).any(axis=1)))


def colour_cast(arr: np.ndarray) -> tuple[float, float]:
    """(hue in degrees, chroma) of the mean colour of the central disc in CIELAB (a*, b*)."""
    mean = arr[_disc(*arr.shape[:2])].astype(np.float32).mean(axis=0) / 255.0
    lab = cv2.cvtColor(mean.reshape(1, 1, 3), cv2.COLOR_RGB2LAB)[0, 0]
    a, b = float(lab[1]), float(lab[2])
    hue = math.degrees(math.atan2(b, a))  # skin: red-to-yellow, about 20-80 degrees
    return hue, math.hypot(a, b)


_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)


def noise_sigma(gray: np.ndarray) -> float:
    """Robust noise sigma (gray levels): median |kernel response| / 0.6745 / 6 (the kernel's norm)."""
    resp = cv2.filter2D(gray, cv2.CV_32F, _IMMERKAER, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    return float(np.median(np.abs(resp)) / 0.6745 / 6.0)


def analysis_gray(gray: np.ndarray, size: int = ANALYSIS_SIZE) -> np.ndarray:
    """``gray`` area-averaged down to ``size`` x ``size``; a smaller image is left as it is.

    Upsampling would smooth a small image and make it read as blurred; measured at its own size a
    small image only scores sharper (a coarser grid), so the check stays lenient below ``size``.
    """
    h, w = gray.shape
    if min(h, w) <= size:
        return gray
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


def sharpness(gray: np.ndarray) -> float:
    """RMS of the 4-neighbour Laplacian (gray levels) at the fixed analysis size: falls when an image
    is blurred. Measured at ``ANALYSIS_SIZE`` so that a threshold means the same blur, as a share of
    the image side, at 128 and at 512 px (native 512 px dermoscopy is smooth pixel to pixel)."""
    gray = analysis_gray(gray)
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    return float(np.sqrt(np.mean(lap * lap)))


def tiling_score(gray: np.ndarray, max_side: int = 512) -> float:
    """max over lags d (2 <= |d| <= N/2) of r(d) - r(d/2), r = normalised autocorrelation of the residual."""
    h, w = gray.shape
    if max(h, w) > max_side:  # crop, never resize: resampling would blur away the period
        gray = gray[:max_side, :max_side]
        h, w = gray.shape
    res = gray - cv2.GaussianBlur(gray, (0, 0), 1.5, borderType=cv2.BORDER_REFLECT)
    res = res - res.mean()
    f = np.fft.rfft2(res)
    r = np.fft.irfft2(f * np.conj(f), s=res.shape)
    if r[0, 0] <= 1e-6:
        return 0.0
    r = r / r[0, 0]
    dy = np.fft.fftfreq(h, 1.0 / h).round().astype(int)[:, None]  # signed lags
    dx = np.fft.fftfreq(w, 1.0 / w).round().astype(int)[None, :]
    half = r[np.round(dy / 2).astype(int) % h, np.round(dx / 2).astype(int) % w]
    cheb = np.maximum(np.abs(dy), np.abs(dx))
    valid = (cheb >= 2) & (np.abs(dy) <= h // 2) & (np.abs(dx) <= w // 2)
    return float((r - half)[valid].max()) if valid.any() else 0.0


def lesion_blob(arr: np.ndarray) -> tuple[float, float]:
    """(area share of the central disc, contrast in gray levels) of the central dark blob."""
    h, w = arr.shape[:2]
    blue = cv2.GaussianBlur(arr[..., 2].astype(np.float32), (0, 0), max(1.0, min(h, w) / 64))
    disc = _disc(h, w)
    vals = np.clip(blue[disc], 0, 255).astype(np.uint8)
    thr, _ = cv2.threshold(vals.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = ((blue <= thr) & disc).astype(np.uint8)
    n, lab, stats, cents = cv2.connectedComponentsWithStats(dark, connectivity=8)
    if n <= 1:
        return 0.0, 0.0
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    k = int(lab[h // 2, w // 2])
    if k == 0:  # no blob on the centre pixel: the largest one whose centroid is near the centre
        near = [i for i in range(1, n) if np.hypot(*(cents[i] - centre)) <= 0.25 * min(h, w)]
        if not near:
            return 0.0, 0.0
        k = max(near, key=lambda i: stats[i, cv2.CC_STAT_AREA])
    blob = lab == k
    rest = disc & ~blob
    area = float(blob.sum() / disc.sum())
    contrast = float(blue[rest].mean() - blue[blob].mean()) if rest.any() else 0.0
    return area, contrast


def pixel_hash(arr: np.ndarray) -> str:
    """Hash of decoded pixels (with the shape): equal for the same image saved twice in any format."""
    h = hashlib.sha256(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def artifact_reasons(arr: np.ndarray, thr: dict) -> list[tuple[str, float, str]]:
    """Every artifact check that fails on ``arr``: (reason, score, detail), in ``REASONS`` order."""
    out = []
    st = image_stats(arr)
    if st["black"] > thr["max_black_fraction"]:
        out.append(("black", st["black"], f"{st['black']:.3f} of pixels < {BLACK_LEVEL}"))
    if st["white"] > thr["max_white_fraction"]:
        out.append(("white", st["white"], f"{st['white']:.3f} of pixels > {WHITE_LEVEL}"))
    if st["std"] < thr["min_std"]:
        out.append(("flat", st["std"], f"gray std {st['std']:.2f} < {thr['min_std']}"))
    if out:  # a blank image fails everything below for that reason alone
        return out
    t = thr["clipped"]
    if t["activate"]:
        c = clipped_fraction(arr)
        if c > t["max_fraction"]:
            out.append(("clipped", c, f"{c:.3f} of central pixels saturated > {t['max_fraction']}"))
    t = thr["cast"]
    if t["activate"]:
        hue, chroma = colour_cast(arr)
        if chroma > t["max_chroma"]:
            out.append(("cast", chroma, f"mean chroma {chroma:.1f} > {t['max_chroma']}"))
        elif not t["min_hue"] <= hue <= t["max_hue"]:
            out.append(("cast", hue, f"mean hue {hue:.0f} deg outside [{t['min_hue']}, {t['max_hue']}]"))
    gray = gray_of(arr)
    t = thr["noise"]
    if t["activate"]:
        s = noise_sigma(gray)
        if s > t["max_sigma"]:
            out.append(("noise", s, f"noise sigma {s:.2f} > {t['max_sigma']}"))
    t = thr["tiling"]
    if t["activate"]:
        s = tiling_score(gray)
        if s > t["max_score"]:
            out.append(("tiling", s, f"periodic autocorrelation {s:.2f} > {t['max_score']}"))
    t = thr["blur"]
    if t["activate"]:
        s = sharpness(gray)
        if s < t["min_sharpness"]:
            out.append(("blurry", s, f"Laplacian RMS {s:.2f} < {t['min_sharpness']}"))
    t = thr["lesion"]
    if t["activate"]:
        area, contrast = lesion_blob(arr)
        if area < t["min_area"]:
            out.append(
                ("no_lesion", area, f"central dark blob covers {area:.3f} < {t['min_area']} of the disc")
            )
        elif contrast < t["min_contrast"]:
            out.append(("no_lesion", contrast, f"central blob contrast {contrast:.1f} < {t['min_contrast']}"))
    return out


def image_verdict(cfg: dict | None):
    """The filter's per-image verdict as one callable: RGB uint8 array -> every failing artifact check
    as (reason, score, detail), in ``REASONS`` order; empty when the image passes.

    ``cfg`` is the config's ``filter`` section. Generation applies this same callable to top up a
    shard; the set-level checks (duplicates, memorization) need all images and stay the filter's.
    """
    return partial(artifact_reasons, thr=thresholds(cfg))


def check_image(path: str, expected_sha: str | None, verdict) -> dict:
    """One image's verdict: {'reasons': [(reason, score, detail)...], 'pixel_hash': str | None}."""
    try:
        arr = np.asarray(io.load_rgb(path))
    except ImageError as e:
        return {"reasons": [("unreadable", float("nan"), str(e))], "pixel_hash": None}
    if expected_sha:
        actual = io.sha256_file(path)
        if actual != expected_sha:
            detail = f"file sha256 {actual[:12]} != manifest {expected_sha[:12]}"
            return {"reasons": [("sha_mismatch", float("nan"), detail)], "pixel_hash": None}
    return {"reasons": verdict(arr), "pixel_hash": pixel_hash(arr)}
