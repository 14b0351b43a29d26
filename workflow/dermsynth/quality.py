"""Artifact checks for generated images, and contact sheets for looking at them.

``filter_synthetic`` keeps a generated image only if every check passes. Each check measures one
score per image and compares it with a threshold from the config's ``filter`` section; each has a
reason code in ``rejected.csv`` (the first failing reason in ``REASONS`` order is the row's reason,
the others are listed in its detail):

- ``unreadable``, ``sha_mismatch``: the file does not decode, or differs from its manifest's sha256.
- ``black``, ``white``, ``flat``: mostly near-black / near-white pixels, or gray std below
  ``min_std``. A diffusion run that produced NaNs decodes to an all-black image and lands here.
- ``memorized``: a near copy (also flipped / rotated) of a fine-tune image (``dermsynth.audit``).
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
- ``blurry``: RMS of the Laplacian (gray levels) below ``blur.min_sharpness``.
- ``no_lesion``: no central dark blob: Otsu on the smoothed blue channel inside the central disc,
  the dark component at (or nearest to) the centre must cover ``lesion.min_area`` of the disc and be
  ``lesion.min_contrast`` gray levels darker than its surroundings.
- ``duplicate``: same pixels as, or a near copy (pHash + thumbnail correlation, as in the splits) of,
  an image kept earlier in manifest order.

Thresholds are calibrated by ``benchmarks/filter.py`` on the project's generator at a given
resolution; noise, blur and tiling scores depend on resolution, so recalibrate for another size.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from . import audit, io
from .errors import ConfigError, ImageError
from .splits import find_duplicates

log = logging.getLogger("dermsynth.quality")

REJECTED_COLUMNS = ["path", "label", "sampler", "reason", "score", "detail"]
#: Reasons in priority order: the first that applies is a row's reason.
REASONS = (
    "unreadable",
    "sha_mismatch",
    "black",
    "white",
    "flat",
    "memorized",
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
DISC = 0.45  # radius of the central disc (share of the shorter side): inside any dermoscope ring

#: Defaults of the config's ``filter`` section (schema.yaml repeats them; the benchmark tunes them).
FILTER_DEFAULTS = {
    "min_std": 4.0,
    "max_black_fraction": 0.9,
    "max_white_fraction": 0.9,
    "clipped": {"activate": True, "max_fraction": 0.45},
    "cast": {"activate": True, "min_hue": -1.4, "max_hue": 90.6, "max_chroma": 49.6},
    "noise": {"activate": True, "max_sigma": 5.6},
    "tiling": {"activate": True, "max_score": 0.5},
    "blur": {"activate": True, "min_sharpness": 7.4},
    "lesion": {"activate": True, "min_area": 0.01, "min_contrast": 22.0},
    "duplicates": {"activate": True, "phash_threshold": 6, "min_corr": 0.985},
    "memorization": {"activate": True, "min_similarity": 0.997, "transforms": "dihedral", "block": 2048},
}
_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _thresholds(cfg: dict | None) -> dict:
    """The config's filter section over the defaults, checked."""
    out = copy.deepcopy(FILTER_DEFAULTS)
    for k, v in (cfg or {}).items():
        if isinstance(out.get(k), dict) and isinstance(v, dict):
            out[k].update({kk: vv for kk, vv in v.items() if vv is not None})
        elif k in out and v is not None:
            out[k] = v
    for key in ("max_black_fraction", "max_white_fraction"):
        if not 0.0 <= float(out[key]) <= 1.0:
            raise ConfigError(f"filter.{key} = {out[key]} must lie in [0, 1]")
    if float(out["min_std"]) < 0:
        raise ConfigError(f"filter.min_std = {out['min_std']} must be >= 0")
    for sec, key in (("clipped", "max_fraction"), ("lesion", "min_area")):
        if not 0.0 <= float(out[sec][key]) <= 1.0:
            raise ConfigError(f"filter.{sec}.{key} = {out[sec][key]} must lie in [0, 1]")
    if float(out["cast"]["min_hue"]) > float(out["cast"]["max_hue"]):
        raise ConfigError(
            f"filter.cast.min_hue = {out['cast']['min_hue']} exceeds max_hue = {out['cast']['max_hue']}"
        )
    if out["memorization"]["transforms"] not in ("none", "dihedral"):
        raise ConfigError(
            f"filter.memorization.transforms = {out['memorization']['transforms']!r}; allowed: none, dihedral"
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


def sharpness(gray: np.ndarray) -> float:
    """RMS of the 4-neighbour Laplacian (gray levels): falls when an image is blurred."""
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
    return partial(artifact_reasons, thr=_thresholds(cfg))


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


def _near_duplicates(
    thumbs: np.ndarray, pixel_hashes: list[str], thr: dict
) -> dict[int, tuple[int, str, int]]:
    """For image j: (the earlier image i it copies, kind, pHash distance), via the splits' search."""
    d = thr["duplicates"]
    frame = pd.DataFrame(
        {
            "sha256": pixel_hashes,
            "source_id": [str(i) for i in range(len(pixel_hashes))],
            "dataset": "synthetic",
        }
    )
    # exact pixel copies are always duplicates; near copies only when the check is on
    threshold = int(d["phash_threshold"]) if d["activate"] else -1
    pairs = find_duplicates(
        frame, thumbs, audit.hashes(thumbs), threshold=threshold, min_corr=float(d["min_corr"])
    )
    out: dict[int, tuple[int, str, int]] = {}
    for i, j, kind, ham in pairs:
        out.setdefault(j, (i, kind, ham))  # pairs come sorted: the first i is the earliest copy
    return out


def filter_synthetic(
    manifests: list[str],
    out_manifest,
    rejected_path,
    cfg: dict,
    threads: int = 1,
    finetune=None,
    nearest_path=None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check every generated image; write kept rows (all columns) and ``rejected.csv``.

    ``cfg`` is the config's ``filter`` section. With ``finetune`` (a manifest of the fine-tune
    images) every image is also audited for memorization, and ``nearest_path`` receives each
    image's nearest fine-tune image. Returns (kept, rejected) data frames.
    """
    thr = _thresholds(cfg)
    verdict = image_verdict(cfg)
    df = _read_manifests(manifests)
    shas = df["sha256"].map(_text) if "sha256" in df.columns else pd.Series([""] * len(df))
    paths = df["path"].map(str).tolist()
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
        verdicts = list(
            tqdm(
                pool.map(lambda a: check_image(a[0], a[1] or None, verdict), zip(paths, shas, strict=True)),
                total=len(paths),
                desc="filter: checks",
                disable=None,
            )
        )
    thumbs, readable = audit.thumbnails(paths, threads, "filter: thumbnails")

    mem = thr["memorization"]
    nearest = pd.DataFrame(columns=audit.NEAREST_COLUMNS)
    if finetune is not None and mem["activate"]:
        train = io.read_csv(finetune)["path"].map(str).tolist()
        nearest = audit.memorization_audit(
            paths,
            train,
            mem["min_similarity"],
            mem["transforms"],
            int(mem["block"]),
            threads,
            synthetic_thumbs=(thumbs, readable),
        )
        for i in np.flatnonzero(nearest["memorized"].to_numpy()):
            r = nearest.iloc[i]
            detail = f"similarity {r.similarity:.4f} to {r.nearest} ({r.transform})"
            detail += f", pHash distance {r.phash_distance}"
            reasons = verdicts[i]["reasons"]
            if not reasons or reasons[0][0] not in ("unreadable", "sha_mismatch"):
                reasons.append(("memorized", float(r.similarity), detail))
    if nearest_path is not None:
        io.write_csv(nearest_path, nearest)

    # duplicates are judged in manifest order among images that pass every other check:
    # the first copy is kept, later copies are rejected
    ok = [i for i, v in enumerate(verdicts) if not v["reasons"]]
    dups = _near_duplicates(thumbs[ok], [verdicts[i]["pixel_hash"] for i in ok], thr) if ok else {}
    for jj, (ii, kind, ham) in dups.items():
        what = "same pixels as" if "sha256" in kind else f"near copy (pHash distance {ham}) of"
        verdicts[ok[jj]]["reasons"].append(("duplicate", float(ham), f"{what} {paths[ok[ii]]}"))

    order = {r: k for k, r in enumerate(REASONS)}
    sampler = df["sampler"].map(_text) if "sampler" in df.columns else pd.Series([""] * len(df))
    keep, rejected = [], []
    for i, v in enumerate(verdicts):
        if not v["reasons"]:
            keep.append(i)
            continue
        reasons = sorted(v["reasons"], key=lambda r: order[r[0]])
        reason, score, detail = reasons[0]
        if len(reasons) > 1:
            detail += "; also " + ", ".join(r[0] for r in reasons[1:])
        rejected.append(
            {
                "path": paths[i],
                "label": _text(df["label"].iat[i]),
                "sampler": sampler.iat[i],
                "reason": reason,
                "score": score,
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


# ---------------------------------------------------------------------------------------------
# report fragment


def _histogram(nearest: pd.DataFrame, min_similarity: float, out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sims = nearest["similarity"].dropna().to_numpy(float)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if len(sims):
        lo = min(float(sims.min()), float(min_similarity)) - 0.01
        ax.hist(sims, bins=np.linspace(lo, 1.0, 60), color="#4878a8")
    ax.axvline(min_similarity, color="#c03030", ls="--", label=f"memorized at >= {min_similarity}")
    ax.set_xlabel("similarity to the nearest fine-tune image (32x32 gray correlation, best of 8 symmetries)")
    ax.set_ylabel("synthetic images")
    ax.xaxis.label.set_size(8)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_section(
    total: int,
    rej: pd.DataFrame,
    nearest: pd.DataFrame,
    cfg: dict,
    section_md,
    hist_png,
    pairs_png,
    sheets: dict[str, str],
    closest: int = 8,
    per_reason: int = 16,
    targets: pd.DataFrame | None = None,
) -> None:
    """The filter's report fragment: counts per reason, kept vs target per class x sampler
    (``targets``, from ``kept_vs_target``), the audit's histogram and closest pairs, and one contact
    sheet per reason (figures are referenced relative to results/report/)."""
    thr = _thresholds(cfg)
    md = ["## Artifact filter and memorization audit", ""]
    md.append(f"{total - len(rej)} of {total} synthetic images kept; {len(rej)} rejected.")
    md.append("")
    if targets is not None and len(targets):
        md += [
            "Generation replaces an image that fails a per-image check by a new seed, up to "
            "`generate.max_rounds` rounds; duplicates and memorized images are only dropped here.",
            "",
            "| class | sampler | target | generated | kept | short |",
            "|---|---|---:|---:|---:|---:|",
        ]
        md += [
            f"| {r.label} | {r.sampler} | {r.target} | {r.generated} | {r.kept} | {r.short} |"
            for r in targets.itertuples()
        ]
        md.append("")
    counts = rej["reason"].value_counts()
    md += ["| reason | images | check |", "|---|---:|---|"]
    active = {
        "clipped": "clipped",
        "cast": "cast",
        "noise": "noise",
        "tiling": "tiling",
        "blurry": "blur",
        "no_lesion": "lesion",
        "duplicate": "duplicates",
        "memorized": "memorization",
    }
    for r in REASONS:
        state = "on"
        if r in active and not thr[active[r]]["activate"]:
            state = "near copies off (exact copies still)" if r == "duplicate" else "off"
        md.append(f"| {r} | {int(counts.get(r, 0))} | {state} |")
    md.append("")

    def sec(p) -> str:  # figures sit beside the fragment, which is pasted into results/report/
        return f"sections/{Path(p).name}"

    for r in REASONS:
        g = rej[rej["reason"] == r].head(per_reason)
        contact_sheet(
            g["path"].tolist(),
            sheets[r],
            ncols=8,
            labels=[f"{s:.3g}" for s in g["score"]] if len(g) else None,
            title=f"rejected: {r} ({int(counts.get(r, 0))})" if len(g) else None,
        )
        if len(g):
            md += [f"![rejected: {r}]({sec(sheets[r])})", ""]
    _histogram(nearest, float(thr["memorization"]["min_similarity"]), hist_png)
    sims = nearest["similarity"].dropna()
    if len(sims):
        q = sims.quantile([0.5, 0.99]).to_numpy()
        md.append(
            f"Memorization audit: nearest fine-tune image of each synthetic image (flips and quarter turns"
            f" included). Similarity median {q[0]:.3f}, 99th percentile {q[1]:.3f}, max {sims.max():.4f};"
            f" {int(nearest['memorized'].sum())} at or above {thr['memorization']['min_similarity']}"
            f" (rejected as `memorized`)."
            f" Median pHash distance {nearest['phash_distance'].median():.0f} bits."
        )
    else:
        md.append("Memorization audit: off (no fine-tune images or `filter.memorization.activate: false`).")
    md += ["", f"![nearest-neighbour similarity]({sec(hist_png)})", ""]
    top = nearest.dropna(subset=["similarity"]).nlargest(closest, "similarity")
    paths, labels = [], []
    for r in top.itertuples():
        paths += [r.path, r.nearest]
        labels += [f"syn {r.similarity:.4f}", f"train {r.transform}"]
    contact_sheet(
        paths,
        pairs_png,
        ncols=4,
        labels=labels if paths else None,
        title="closest pairs: synthetic | fine-tune",
    )
    md += [f"![closest pairs]({sec(pairs_png)})", ""]
    io.write_text(section_md, "\n".join(md) + "\n")


def filter_stage(
    manifests: list[str],
    finetune,
    kept_path,
    rejected_path,
    nearest_path,
    section_md,
    hist_png,
    pairs_png,
    sheets: list[str],
    cfg: dict,
    threads: int = 1,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The filter rule: filter + audit, then the report fragment (``sheets`` in ``REASONS`` order)."""
    if len(sheets) != len(REASONS):
        raise ConfigError(f"{len(sheets)} contact sheet paths for {len(REASONS)} reasons")
    kept, rej = filter_synthetic(manifests, kept_path, rejected_path, cfg, threads, finetune, nearest_path)
    nearest = io.read_csv(nearest_path)
    targets = kept_vs_target(_read_manifests(manifests), kept)
    for r in targets[targets["short"] > 0].itertuples():
        log.warning("filter: %s/%s keeps %d of its target %d images", r.label, r.sampler, r.kept, r.target)
    write_section(
        len(kept) + len(rej),
        rej,
        nearest,
        cfg,
        section_md,
        hist_png,
        pairs_png,
        dict(zip(REASONS, sheets, strict=True)),
        targets=targets,
    )
    return kept, rej


def kept_vs_target(made: pd.DataFrame, kept: pd.DataFrame) -> pd.DataFrame:
    """Per label x sampler: target (image slots; one per row without an ``index`` column), images
    generated (top-up rounds included), kept, and the shortfall."""
    cols = ["label", "sampler", "target", "generated", "kept", "short"]
    if "sampler" not in made.columns:
        return pd.DataFrame(columns=cols)
    keys = ["label", "sampler"]
    slot = made["index"] if "index" in made.columns else pd.Series(range(len(made)), index=made.index)
    out = (
        made.assign(slot=slot)
        .groupby(keys, sort=False)
        .agg(target=("slot", "nunique"), generated=("slot", "size"))
    )
    out["kept"] = kept.groupby(keys).size().reindex(out.index, fill_value=0) if len(kept) else 0
    out["short"] = (out["target"] - out["kept"]).clip(lower=0)
    return out.reset_index()[cols]


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
