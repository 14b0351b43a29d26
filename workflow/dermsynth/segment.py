"""Lesion masks for real and synthetic images, how good they are, and the lesion shape they describe.

Two segmenters, one interface (``rgb uint8 (H, W, 3) -> bool (H, W)``):

- ``classical``: the lesion is darker and bluer-poor than skin, so the blue channel is used. Thin
  dark hairs are closed away, the dark dermoscope frame (very dark pixels joined to the image border)
  is left out, and the channel is divided by a smooth skin-brightness surface (a quadratic fit to the
  skin, which removes vignetting and uneven lighting). Otsu then gives the lesion core, which grows
  by hysteresis into its paler rim (annotators draw around it); morphology cleans the mask, the
  connected component nearest the centre is kept (dermoscopy centres the lesion; vignette corners
  and rings touch the border) and its outline is smoothed. Runs everywhere, needs no weights.
- ``sam``: Segment Anything zero-shot through transformers' ``SamModel`` with one prompt per image
  (the centre point, or the full-image box), the mask with the best predicted IoU kept.

Masks are *measured*: Dice and IoU with bootstrap CIs against ground truth (HAM10000's lesion masks,
or the demo generator's exact lesion shape). From each mask come shape statistics in the spirit of the
ABCD rule (area fraction, asymmetry, border irregularity, colour variegation, diameter), and the
report compares their distributions synthetic vs real per class. Each image also gets the ITA of its
skin (every lesion and the dermoscope's frame left out) and its lesion count, which
``transformations`` sets against the prompt modifiers.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import config, io, metrics, skintone
from .config import TINY_PREFIX
from .errors import ConfigError, ImageError, ModelNotFoundError
from .imaging import contact_sheet
from .progress import Bar

log = logging.getLogger("dermsynth.segment")

METHODS = ("classical", "sam")
PROMPTS = ("center_point", "full_box")
SHAPE_STATS = ("area_fraction", "asymmetry", "border_irregularity", "colour_variegation", "diameter")
SHAPE_LABELS = {
    "area_fraction": "area fraction (lesion px / image px)",
    "asymmetry": "asymmetry (1 - IoU with its mirror images)",
    "border_irregularity": "border irregularity (perimeter² / 4π area)",
    "colour_variegation": "colour variegation (RGB std inside / 255)",
    "diameter": "diameter (max Feret / image side)",
}
MASK_COLUMNS = [
    *["path", "label", "set", "sampler", "method", "mask_path", "status", "reason"],
    *SHAPE_STATS,
    *["ita", "ita_group", "components"],  # skin tone around the lesion, lesions before the central one
]

FRAME_DARK = 0.25  # grey level (0-1) below which border-connected pixels are the dermoscope's frame
FRAME_DARK_SKIN = 0.5  # ... or below this share of the median grey, if lower: dark skin is no frame
WORK_SIDE = 300  # classical masks are computed with the short side at most this long, then upsampled


# ---------------------------------------------------------------- classical


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing that treats the outside of the image as background (no border artefacts)."""
    from scipy import ndimage as ndi
    from skimage import morphology

    return ndi.binary_closing(np.pad(mask, radius), morphology.disk(radius))[radius:-radius, radius:-radius]


def _dark_frame(gray: np.ndarray) -> np.ndarray:
    """The dermoscope's dark frame or vignette corners: very dark pixels connected to the image border."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(gray < min(FRAME_DARK, FRAME_DARK_SKIN * float(np.median(gray))))
    if n == 0:
        return np.zeros(gray.shape, bool)
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return np.isin(lab, edge[edge > 0])


def _powers(order: int) -> list[tuple[int, int]]:
    """Exponents (degree, power of y) of the monomials x^(d-i) y^i of a 2-D polynomial up to ``order``."""
    return [(d, i) for d in range(order + 1) for i in range(d + 1)]


def _skin_surface(ch: np.ndarray, seed: np.ndarray, valid: np.ndarray, order: int) -> np.ndarray:
    """Skin brightness as a smooth surface: a polynomial of ``order`` in (x, y) fitted to ``seed`` pixels,
    refitted a few times on the valid pixels that are not clearly darker than the fit (lesion, shadows)."""
    h, w = ch.shape
    step = max(1, int(math.sqrt(h * w / 20000)))  # ~20k points are plenty for a handful of coefficients
    yy, xx = np.mgrid[0:h:step, 0:w:step]
    y, x = (yy / h - 0.5).ravel(), (xx / w - 0.5).ravel()
    a = np.stack([x ** (d - i) * y**i for d, i in _powers(order)], 1)
    v = ch[::step, ::step].ravel()
    ok = valid[::step, ::step].ravel()
    use = seed[::step, ::step].ravel() & ok
    if use.sum() < 4 * a.shape[1]:
        return np.full_like(ch, float(np.median(ch[valid])) if valid.any() else 1.0)
    for _ in range(4):
        au = a[use]
        coef = np.linalg.lstsq(au.T @ au, au.T @ v[use], rcond=None)[0]  # normal equations: 6x6
        res = v - a @ coef
        keep = ok & (res > -res[use].std())
        if keep.sum() < 4 * a.shape[1]:
            break
        use = keep
    yy, xx = np.mgrid[0:h, 0:w]
    y, x = yy / h - 0.5, xx / w - 0.5
    return sum(cf * x ** (d - i) * y**i for cf, (d, i) in zip(coef, _powers(order), strict=True))


def load_skimage() -> None:
    """Import the scikit-image submodules of the classical path now, before worker threads need them:
    scikit-image loads submodules lazily, and two threads importing one at once can find it half made
    (``AttributeError: partially initialized module 'skimage.morphology'``)."""
    import skimage.filters  # noqa: F401
    import skimage.measure  # noqa: F401
    import skimage.morphology  # noqa: F401
    import skimage.transform  # noqa: F401


def classical_mask(rgb: np.ndarray, cfg: dict | None = None) -> np.ndarray:
    """Blue channel, lighting-corrected, Otsu + hysteresis + morphology + the central component (bool mask,
    empty if none). See the module docstring for the steps; the knobs are ``segment.*`` config keys."""
    return classical_measure(rgb, cfg)[0]


def classical_measure(rgb: np.ndarray, cfg: dict | None = None) -> tuple[np.ndarray, int, np.ndarray]:
    """(lesion mask, components, not skin): ``classical_mask``'s mask, the number of lesion components
    of at least ``min_area_fraction`` before the central one is kept, and the pixels that are no skin
    (bool): the dermoscope's dark frame and every one of those components."""
    c = config.section("segment", cfg)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"expected an RGB image (H, W, 3), got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    if min(h, w) <= WORK_SIDE:
        return _classical(rgb, c)
    # the outline is smoothed at ~1/40 of the image: no need for megapixels
    from skimage.transform import resize

    k = WORK_SIDE / min(h, w)
    small = resize(rgb, (round(h * k), round(w * k)), anti_aliasing=True, preserve_range=True)
    m, n, other = _classical(np.clip(np.round(small), 0, 255).astype(np.uint8), c)
    up = [resize(a.astype(np.float64), (h, w), order=1) > 0.5 for a in (m, other)]
    return up[0], n, up[1]


def _classical(rgb: np.ndarray, c: dict) -> tuple[np.ndarray, int, np.ndarray]:
    from scipy import ndimage as ndi
    from skimage import filters, measure, morphology

    h, w = rgb.shape[:2]
    none = np.zeros((h, w), bool)
    scale = min(h, w) / 150.0  # radii and sigmas are tuned at HAM10000's 200x150; scale with the image
    f = rgb.astype(np.float64) / 255.0
    if c["hair_radius"]:
        # a grey closing fills thin dark hairs (and the dermoscope's scale ticks) with the skin beside them
        fp = morphology.disk(max(1, int(round(c["hair_radius"] * scale))))
        f = np.stack([ndi.grey_closing(f[..., k], footprint=fp) for k in range(3)], axis=-1)
    blue = filters.gaussian(f[..., 2], sigma=max(0.5, c["blur_sigma"] * scale))
    if float(blue.max() - blue.min()) < 1e-3:
        return none, 0, none  # flat image: nothing to separate
    frame = _dark_frame(filters.gaussian(f.mean(axis=2), sigma=max(0.5, scale)))
    valid = np.ones((h, w), bool)
    if frame.mean() < 0.5:  # a frame, not a dark image: leave it (and its soft edge) out
        valid = ~ndi.binary_dilation(frame, iterations=max(1, int(round(2 * scale))))
    frame = ~valid
    # Otsu on the central region: the dark vignette/ring of the dermoscope would pull the threshold down
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2))
    region = valid & (r < 0.9) if (valid & (r < 0.9)).sum() > 16 else valid
    ch = blue
    if c["background_order"]:
        # divide out the skin's lighting (vignetting, uneven illumination), first fitted to the pixels
        # brighter than a plain Otsu threshold so that a large lesion does not bend the surface
        skin = valid & (blue >= filters.threshold_otsu(blue[region]))
        ch = blue / np.maximum(_skin_surface(blue, skin, valid, int(c["background_order"])), 1e-3)
    vals = ch[region]
    if float(vals.max() - vals.min()) < 1e-6:
        return none, 0, frame
    thr = filters.threshold_otsu(vals)
    mask = (ch < thr) & valid
    if c["grow"] and (vals >= thr).any():
        # hysteresis: the Otsu core grows into connected paler pixels up to ``grow`` of the way to skin
        loose = (ch < thr + c["grow"] * (vals[vals >= thr].mean() - thr)) & valid
        lab0, _ = ndi.label(loose)
        keep = np.unique(lab0[mask])
        mask = np.isin(lab0, keep[keep > 0])
    rad = max(1, int(round(c["closing_radius"] * scale)))
    mask = ndi.binary_opening(mask, morphology.disk(max(1, rad // 2)))
    mask = ndi.binary_fill_holes(_closing(mask, rad))
    lab = measure.label(mask)
    if lab.max() == 0:
        return none, 0, frame
    best, best_score, found = 0, -np.inf, []
    min_area = c["min_area_fraction"] * h * w
    for p in measure.regionprops(lab):
        if p.area < min_area:
            continue
        found.append(p.label)
        cy, cx = p.centroid
        dist = math.hypot((cy - h / 2) / h, (cx - w / 2) / w)
        minr, minc, maxr, maxc = p.bbox
        touches = minr == 0 or minc == 0 or maxr == h or maxc == w
        covers_centre = lab[h // 2, w // 2] == p.label
        # prefer big components near the centre; ones that hug the border (vignette, ring) lose
        score = math.log(p.area) - 6.0 * dist - (2.0 if touches and not covers_centre else 0.0)
        if score > best_score:
            best, best_score = p.label, score
    if best == 0:
        return none, 0, frame
    other = frame | np.isin(lab, found)  # the skin's colour is measured without any lesion
    out = lab == best
    if c["dilate_radius"]:
        # lesion masks are drawn around the pigment edge, Otsu cuts inside the soft border
        out = ndi.binary_dilation(out, morphology.disk(max(1, int(round(c["dilate_radius"] * scale)))))
    out = ndi.binary_fill_holes(out)
    if c["smooth_sigma"]:
        # annotators draw smooth outlines: blur the mask and cut at one half
        out = filters.gaussian(out.astype(np.float64), sigma=c["smooth_sigma"] * scale) > 0.5
    if c["convex_hull"] and out.any():
        out = morphology.convex_hull_image(out)
    return out & valid, len(found), other | out


# ---------------------------------------------------------------- SAM


class SamSegmenter:
    """Segment Anything zero-shot: one prompt per image, the best of SAM's three masks kept."""

    def __init__(self, model_ref: str, prompt: str = "center_point", device: str = "auto"):
        import torch
        from transformers import SamModel, SamProcessor

        from .device import resolve_device
        from .hub import load_pretrained

        if prompt not in PROMPTS:
            raise ConfigError(f"segment.prompt = {prompt!r}: use {' or '.join(PROMPTS)}")
        self.device = resolve_device(device)
        self.prompt = prompt
        self.model = load_pretrained(SamModel, str(model_ref)).to(self.device).eval()
        try:
            self.processor = SamProcessor.from_pretrained(str(model_ref))
        except OSError as e:
            raise ModelNotFoundError(
                f"SAM processor for '{model_ref}' not found ({type(e).__name__}): use a folder saved "
                "with SamProcessor.save_pretrained or a filled HF cache"
            ) from None
        self._torch = torch

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        kw = {}
        if self.prompt == "center_point":
            kw["input_points"] = [[[[im.shape[1] / 2, im.shape[0] / 2]]] for im in images]
        else:
            kw["input_boxes"] = [[[0, 0, im.shape[1] - 1, im.shape[0] - 1]] for im in images]
        inputs = self.processor(images=[im for im in images], return_tensors="pt", **kw)
        with torch.inference_mode():
            out = self.model(
                pixel_values=inputs["pixel_values"].to(self.device),
                **{k: inputs[k].to(self.device) for k in ("input_points", "input_boxes") if k in inputs},
            )
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )
        scores = out.iou_scores.float().cpu().numpy()  # (B, prompts, 3)
        result = []
        for i, m in enumerate(masks):
            best = int(np.argmax(scores[i, 0]))
            result.append(np.asarray(m[0, best].numpy(), dtype=bool))
        return result


# ---------------------------------------------------------------- measurement


def load_mask(path: str | Path) -> np.ndarray:
    """A ground-truth lesion mask as booleans (lesion = white once converted to greyscale).

    Read through PIL's ``convert("L")``, never as raw values: some HAM10000 masks are palette PNGs
    whose palette is reversed (index 0 = white), and their raw indices read as an inverted mask.
    """
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127
    except (OSError, ValueError) as e:
        raise ImageError(f"mask {path}: cannot be read as an image ({e})") from None


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    den = pred.sum() + truth.sum()
    return 1.0 if den == 0 else float(2.0 * np.logical_and(pred, truth).sum() / den)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def mean_ci(values, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """Mean with a percentile bootstrap CI over images (the same resampling as the classifier metrics)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": None, "lo": None, "hi": None, "median": None, "n": 0}
    boots = np.array([v[i].mean() for i in metrics.resample_indices(len(v), n_boot, seed)])
    lo, hi = metrics.percentile_ci(boots, ci)
    return {
        "mean": float(v.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "median": float(np.median(v)),
        "n": int(len(v)),
    }


def score_masks(preds, truths, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> dict:
    """Dice and IoU (mean, bootstrap CI, median) of predicted against ground-truth masks."""
    d = [dice(p, t) for p, t in zip(preds, truths, strict=True)]
    j = [iou(p, t) for p, t in zip(preds, truths, strict=True)]
    return {"dice": mean_ci(d, n_boot, ci, seed), "iou": mean_ci(j, n_boot, ci, seed)}


def shape_stats(rgb: np.ndarray, mask: np.ndarray) -> dict:
    """ABCD-style statistics of one lesion mask; all nan for an empty mask."""
    from skimage import measure

    mask = np.asarray(mask, bool)
    h, w = mask.shape
    area = int(mask.sum())
    if area < 4:
        return {k: float("nan") for k in SHAPE_STATS}
    props = measure.regionprops(mask.astype(np.uint8))[0]
    # asymmetry: mirror the lesion about its two principal axes through the centroid (A of ABCD)
    cy, cx = props.centroid
    theta = props.orientation
    ys, xs = np.nonzero(mask)
    u = (xs - cx) * math.sin(theta) + (ys - cy) * math.cos(theta)
    v = (xs - cx) * math.cos(theta) - (ys - cy) * math.sin(theta)
    asym = []
    for mu, mv in ((1, -1), (-1, 1)):
        uu, vv = u * mu, v * mv
        xm = np.round(cx + uu * math.sin(theta) + vv * math.cos(theta)).astype(int)
        ym = np.round(cy + uu * math.cos(theta) - vv * math.sin(theta)).astype(int)
        ok = (xm >= 0) & (xm < w) & (ym >= 0) & (ym < h)
        mirrored = np.zeros_like(mask)
        mirrored[ym[ok], xm[ok]] = True
        inter = np.logical_and(mirrored, mask).sum()
        union = np.logical_or(mirrored, mask).sum()
        asym.append(1.0 - inter / union if union else 0.0)
    perimeter = float(props.perimeter) or 1.0
    inside = np.asarray(rgb, np.float64)[mask]
    return {
        "area_fraction": area / float(h * w),
        "asymmetry": float(np.mean(asym)),
        "border_irregularity": perimeter**2 / (4.0 * math.pi * area),
        "colour_variegation": float(inside.std(axis=0).mean() / 255.0),
        "diameter": float(props.feret_diameter_max) / float(max(h, w)),
    }


# ---------------------------------------------------------------- the stage


def _load(path: str) -> np.ndarray:
    return np.asarray(io.load_rgb(path))


def segment_set(
    df: pd.DataFrame,
    out_dir,
    out_csv,
    rejected_csv,
    method: str,
    set_name: str,
    cfg: dict | None = None,
    sampler: str = "",
    device: str = "auto",
    threads: int = 1,
) -> pd.DataFrame:
    """Mask every image of ``df`` (columns path, label) with ``method``; write masks, a table, rejects.

    An image that cannot be read or segmented gets an empty mask and a row in ``rejected_csv``.
    """
    c = config.section("segment", cfg)
    if method not in METHODS:
        raise ConfigError(f"segment method {method!r}: use {', '.join(METHODS)}")
    if method == "sam":  # the classical baseline never imports torch: its jobs start in a second
        import torch

        torch.set_num_threads(max(1, int(threads)))
    out_dir = Path(out_dir)
    seg = SamSegmenter(c["sam_model"], c["prompt"], device) if method == "sam" else None
    rows, rejects = [], []
    paths = df["path"].astype(str).tolist()
    labels = df["label"].astype(str).tolist()
    bs = int(c["batch_size"]) if seg else 1
    for start in Bar(range(0, len(paths), bs), desc=f"segment {set_name} ({method})"):
        chunk = list(range(start, min(start + bs, len(paths))))
        images, ok = {}, []
        for i in chunk:
            try:
                images[i] = _load(paths[i])
                ok.append(i)
            except ImageError as e:
                rejects.append(
                    {"path": paths[i], "label": labels[i], "reason": "unreadable", "detail": str(e)}
                )
        masks: dict[int, np.ndarray] = {}
        measured: dict[int, tuple] = {}
        try:
            if seg:
                masks = dict(zip(ok, seg([images[i] for i in ok]), strict=True)) if ok else {}
            else:
                measured = {i: classical_measure(images[i], c) for i in ok}
                masks = {i: v[0] for i, v in measured.items()}
        except (RuntimeError, ValueError) as e:  # a failed batch: empty masks, rows in rejects
            for i in ok:
                rejects.append(
                    {
                        "path": paths[i],
                        "label": labels[i],
                        "reason": "segmentation_failed",
                        "detail": f"{type(e).__name__}: {e}"[:300],
                    }
                )
            ok = []
        for i in chunk:
            img = images.get(i)
            h, w = img.shape[:2] if img is not None else (1, 1)
            m = masks.get(i, np.zeros((h, w), bool))
            status, reason = "ok", ""
            if i not in masks:
                status, reason = "failed", "see rejects"
            elif not m.any():
                status, reason = "empty", "no lesion found"
                rejects.append(
                    {
                        "path": paths[i],
                        "label": labels[i],
                        "reason": "empty_mask",
                        "detail": "the segmenter found no lesion",
                    }
                )
            mp = out_dir / f"{Path(paths[i]).stem}.png"
            io.save_png(mp, (m.astype(np.uint8) * 255))
            st = shape_stats(img, m) if img is not None else {k: float("nan") for k in SHAPE_STATS}
            rows.append(
                {
                    "path": paths[i],
                    "label": labels[i],
                    "set": set_name,
                    "sampler": sampler,
                    "method": method,
                    "mask_path": io.rel(mp),
                    "status": status,
                    "reason": reason,
                    **st,
                    **measure_columns(img, m, measured.get(i), c),
                }
            )
    table = pd.DataFrame(rows, columns=MASK_COLUMNS)
    io.write_csv(out_csv, table)
    io.write_csv(rejected_csv, pd.DataFrame(rejects, columns=["path", "label", "reason", "detail"]))
    log.info("%s: %d masks (%s), %d rejects", set_name, len(table), method, len(rejects))
    return table


def count_components(mask: np.ndarray, min_area_fraction: float) -> int:
    """Connected components (8-neighbour) of ``mask`` covering at least ``min_area_fraction`` of it."""
    from skimage import measure

    mask = np.asarray(mask, bool)
    if not mask.any():
        return 0
    areas = np.bincount(measure.label(mask).ravel())[1:]
    return int((areas >= min_area_fraction * mask.size).sum())


def measure_columns(img, mask: np.ndarray, measured: tuple | None = None, cfg: dict | None = None) -> dict:
    """masks.csv's ``ita``, ``ita_group`` and ``components`` of one image (NaN when ``img`` is None).

    ``measured``: ``classical_measure``'s result, whose components and non-skin pixels are used; without
    it (SAM) the mask's own components count, and the skin is all but the mask and the dark frame."""
    if img is None:
        return {**skintone.skin_columns(None, None), "components": float("nan")}
    if measured is not None:
        _, n, not_skin = measured
    else:
        frame = _dark_frame(img.mean(axis=2) / 255.0)
        not_skin = mask | frame if frame.mean() < 0.5 else mask
        n = count_components(mask, config.section("segment", cfg)["min_area_fraction"])
    return {**skintone.skin_columns(img, not_skin | mask), "components": int(n)}


# ---------------------------------------------------------------- report


def shape_distances(table: pd.DataFrame) -> pd.DataFrame:
    """Per class, method and statistic: Wasserstein and KS distance of each synthetic set to the real one."""
    from scipy.stats import ks_2samp, wasserstein_distance

    rows = []
    ok = table[table["status"] == "ok"]
    for (label, method), g in ok.groupby(["label", "method"]):
        real = g[g["set"].str.startswith("real")]
        for (_set, sampler), s in g[~g["set"].str.startswith("real")].groupby(["set", "sampler"]):
            for stat in SHAPE_STATS:
                a, b = real[stat].dropna().to_numpy(), s[stat].dropna().to_numpy()
                if len(a) < 2 or len(b) < 2:
                    w = ks = p = float("nan")
                else:
                    w = float(wasserstein_distance(a, b))
                    res = ks_2samp(a, b)
                    ks, p = float(res.statistic), float(res.pvalue)
                rows.append(
                    {
                        "label": label,
                        "method": method,
                        "sampler": sampler,
                        "statistic": stat,
                        "n_real": len(a),
                        "n_synthetic": len(b),
                        "real_median": _median(a),
                        "synthetic_median": _median(b),
                        "wasserstein": w,
                        "ks": ks,
                        "ks_p": p,
                    }
                )
    return pd.DataFrame(rows)


def _median(a) -> float:
    return float(np.median(a)) if len(a) else float("nan")


def _overlay(rgb: np.ndarray, mask: np.ndarray, colour=(0, 255, 0)) -> np.ndarray:
    from skimage.segmentation import find_boundaries

    out = rgb.copy()
    edge = find_boundaries(mask, mode="inner")
    if max(mask.shape) > 96:
        from scipy import ndimage as ndi

        edge = ndi.binary_dilation(edge)
    out[edge] = colour
    return out


def overlay_grid(table: pd.DataFrame, out_png, n_examples: int = 6, seed: int = 0, thumb: int = 128) -> int:
    """Rows: real then each sampler, per class and method; columns: examples with the mask outline."""
    groups = []
    for (label, method), g in table.groupby(["label", "method"], sort=True):
        real = g[g["set"].str.startswith("real")]
        parts = [("real", real)] + [
            (s, gg) for s, gg in g[~g["set"].str.startswith("real")].groupby("sampler")
        ]
        groups += [(label, method, name, part) for name, part in parts if len(part)]
    rng = np.random.default_rng(seed)
    cells, row_labels, shown = [], [], 0
    for label, method, name, part in groups:
        pick = part.iloc[np.sort(rng.choice(len(part), min(n_examples, len(part)), replace=False))]
        for row in pick.itertuples():
            try:
                rgb = _load(row.path)
                mask = np.asarray(io.load_rgb(row.mask_path))[..., 0] > 127
                cells.append(_overlay(rgb, mask))
                shown += 1
            except ImageError:
                cells.append(str(row.path))  # the sheet shows it as unreadable
        cells += [None] * (n_examples - len(pick))
        row_labels.append(f"{label}\n{name}\n{method}")
    contact_sheet(cells, out_png, ncols=n_examples, thumb=thumb, row_labels=row_labels)
    return shown


def shape_histograms(table: pd.DataFrame, out_png, method: str = "classical") -> None:
    """One panel per class x statistic: real vs each sampler, density histograms on shared bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table[(table["status"] == "ok") & (table["method"] == method)]
    labels = sorted(t["label"].unique()) or ["-"]
    fig, axes = plt.subplots(
        len(labels), len(SHAPE_STATS), figsize=(3.0 * len(SHAPE_STATS), 2.4 * len(labels)), squeeze=False
    )
    for r, label in enumerate(labels):
        g = t[t["label"] == label]
        sets = [("real", g[g["set"].str.startswith("real")])]
        sets += [(s, gg) for s, gg in g[~g["set"].str.startswith("real")].groupby("sampler")]
        for cidx, stat in enumerate(SHAPE_STATS):
            ax = axes[r, cidx]
            vals = g[stat].dropna().to_numpy()
            bins = (
                np.linspace(vals.min(), vals.max(), 16) if len(vals) > 1 and vals.max() > vals.min() else 10
            )
            for name, s in sets:
                v = s[stat].dropna().to_numpy()
                if len(v):
                    ax.hist(
                        v,
                        bins=bins,
                        density=True,
                        histtype="step",
                        linewidth=1.8 if name == "real" else 1.0,
                        label=f"{name} (n={len(v)})",
                        color="black" if name == "real" else None,
                    )
            ax.set_title(f"{label}: {stat}", fontsize=8)
            ax.tick_params(labelsize=6)
            if cidx == 0:
                ax.legend(fontsize=6)
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def section_segment(
    mask_tables: list,
    out_md,
    overlay_png,
    shapes_png,
    distances_csv,
    cfg: dict,
    section_dir_name: str = "sections",
    n_examples: int = 6,
) -> pd.DataFrame:
    """The report fragment: mask overlays per class x sampler, shape histograms, distances table."""
    c = config.section("segment", cfg)
    frames = [io.read_csv(p) for p in mask_tables]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MASK_COLUMNS)
    dist = shape_distances(table)
    io.write_csv(distances_csv, dist)
    shown = overlay_grid(table, overlay_png, n_examples, seed=0)
    main_method = "classical" if "classical" in c["methods"] else c["methods"][0]
    shape_histograms(table, shapes_png, main_method)
    counts = table.groupby(["method", "status"]).size().unstack(fill_value=0)
    n_ok = int((table["status"] == "ok").sum())
    sam_note = ""
    if "sam" in c["methods"]:
        sam_note = f" SAM checkpoint: `{c['sam_model']}`, prompt `{c['prompt']}`."
        if str(c["sam_model"]).startswith(TINY_PREFIX):
            sam_note += (
                " **This is a tiny random-weight SAM built offline: its masks are meaningless** "
                "(they only exercise the code path)."
            )
    ov = Path(overlay_png).name
    sh = Path(shapes_png).name
    lines = [
        "### Lesion masks and shape",
        "",
        f"Every real and kept synthetic image gets a lesion mask ({', '.join(c['methods'])}).{sam_note} "
        f"{n_ok} of {len(table)} masks are non-empty; empty or failed ones are listed in each set's "
        "`rejected.csv` under `results/masks/`. Segmentation accuracy against ground truth (HAM10000 "
        "masks, and the demo generator's exact lesion outlines) is measured by `benchmarks/quality.py` "
        "and the tests.",
        "",
        "| method | " + " | ".join(str(s) for s in counts.columns) + " |",
        "|---|" + "---|" * len(counts.columns),
        *[f"| {m} | " + " | ".join(str(int(v)) for v in counts.loc[m]) + " |" for m in counts.index],
        "",
        f"![mask overlays]({section_dir_name}/{ov})",
        "",
        f"*Mask outlines (green) on {shown} images: for each class and method, a row of real images, then "
        f"a row per sampler (up to {n_examples} random images each); the paper's Fig. 11, for every "
        "sampler.*",
        "",
        f"![shape statistics]({section_dir_name}/{sh})",
        "",
        f"*Distributions of ABCD-style shape statistics from the {main_method} masks, per class: real "
        "(black) vs each sampler; n per set in the legends. "
        + "; ".join(f"{k}: {v}" for k, v in SHAPE_LABELS.items())
        + ".*",
        "",
    ]
    if len(dist):
        lines += [
            f"Synthetic vs real, per class and statistic ({main_method} masks): Wasserstein distance "
            "and KS statistic (0 = same distribution).",
            "",
            "| class | sampler | statistic | real median | synthetic median | Wasserstein | KS |",
            "|---|---|---|---|---|---|---|",
        ]
        for _, r in dist[dist["method"] == main_method].iterrows():
            lines.append(
                f"| {r['label']} | {r['sampler']} | {r['statistic']} | {r['real_median']:.3f} | "
                f"{r['synthetic_median']:.3f} | {r['wasserstein']:.3f} | {r['ks']:.2f} |"
            )
    io.write_text(out_md, "\n".join(lines) + "\n")
    return table


def segment_manifest(
    manifest,
    out_csv,
    rejected_csv,
    method: str,
    dataset: str | None = None,
    label: str | None = None,
    sampler: str | None = None,
    cfg: dict | None = None,
    device: str = "auto",
    threads: int = 1,
) -> pd.DataFrame:
    """The segment stage: a real dataset's manifest, or one class x sampler of the kept synthetic list.

    Masks go to ``masks/`` beside ``out_csv``.
    """
    df = io.read_csv(manifest)
    if label is not None:
        df = df[df["label"].astype(str) == label]
        if sampler is not None and "sampler" in df.columns:
            df = df[df["sampler"].astype(str) == sampler]
        set_name = f"synthetic/{label}/{sampler}"
    else:
        set_name = f"real/{dataset}"
    return segment_set(
        df.reset_index(drop=True),
        Path(out_csv).parent / "masks",
        out_csv,
        rejected_csv,
        method,
        set_name,
        cfg,
        sampler=sampler or "",
        device=device,
        threads=threads,
    )
