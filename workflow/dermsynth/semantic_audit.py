"""Semantic memorization audit: near copies of fine-tune images that the pixel audit misses.

The pixel audit (``dermsynth.audit``) matches 32x32 thumbnails under flips and quarter turns, so
it misses a copy that is cropped, slightly rotated, recoloured and re-encoded. This audit finds
the nearest fine-tune image of every synthetic image in an embedding (``semantic.features``):

- ``descriptor`` (default, offline, no weights): a band-passed gray thumbnail (difference of two
  Gaussians: drops the smooth "dark blob on skin" layout every lesion shares and keeps its own
  border and pattern, with about zero mean), at unit norm. Each fine-tune image enters the
  gallery under many views: the 8 flips / quarter turns x small rotations x crops (scale and
  offset grid), so a cropped, turned copy meets an aligned view of its source. Similarity = best
  cosine over views.
- ``tiny``, ``dinov2``, ``clip``: the extractors of ``quality.load_extractor``; the gallery holds
  the 8 flips / quarter turns of each fine-tune image, features centred on the fine-tune mean.

Measured on real ISIC dermoscopy (benchmarks/_evaluation_semaudit.py; half of the images
calibrate, the other half measure): the ``tiny`` random conv net, even pooled over the 8 views,
finds few crops or recoloured copies (recall ~0.5 at a 2 % false rate): its pooled statistics
describe colour and texture, not the lesion. The descriptor reaches ~0.95; see the benchmark.

Threshold: calibrated on the run's own fine-tune set (``semantic.calibrate``), because the right
cut depends on the embedding and on how alike the fine-tune lesions are, and it is cheap. A seeded
subset of fine-tune images gets planted near copies (``plant``: crops, small rotations, colour
shifts, JPEG, combinations); the negatives are the fine-tune images themselves, each against the
gallery without itself (and without images of the same lesion when the manifest has
``lesion_id``): distinct lesions. The threshold is the lowest similarity at which at most
``max_false_rate`` of the negatives match; the recall of the planted copies at that threshold is
reported. With fewer than ``min_calibration_images`` fine-tune images ``min_similarity`` is used.

Cost: synthetic x fine-tune images x views x features multiply-adds (BLAS), logged. The descriptor's
default grid (2,760 views of 576 features) takes seconds for hundreds of images, but ~5e16 for
18,000 x 2,000: at that scale use an extractor (8 views) or a coarser grid.
"""

from __future__ import annotations

import io as pyio
import logging
import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from . import io
from .errors import ConfigError, ImageError
from .progress import Bar

log = logging.getLogger("dermsynth.semantic_audit")

NEAREST_COLUMNS = ["path", "nearest", "view", "similarity", "threshold", "memorized_semantic"]
DIHEDRAL = ("id", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")

#: The planted near copies (the calibration's positives and the benchmark's): crop side share,
#: rotation degrees (either sign), hue shift degrees (either sign), saturation and brightness
#: gains, JPEG quality; ``combo`` chains 2-3 of the other kinds.
PLANT_KINDS = ("crop", "rotate", "colour", "jpeg", "combo")
CROP_SIDE = (0.8, 0.9)
ROTATE_DEG = (5.0, 15.0)
HUE_DEG = (5.0, 15.0)
SATURATION = (0.7, 1.3)
BRIGHTNESS = (0.8, 1.2)
JPEG_QUALITY = (30, 70)
#: Descriptor: anti-aliasing sigma, in thumbnail px, before a view is sampled down to the thumbnail.
ANTIALIAS = 0.5


# ---------------------------------------------------------------------------------------------
# images and planted near copies


def load_square(path, size: int) -> np.ndarray | None:
    """RGB uint8 (size, size, 3): the centre square, resized (area); None when unreadable."""
    try:
        im = io.load_rgb(path)
    except ImageError:
        return None
    s = min(im.size)
    left, top = (im.width - s) // 2, (im.height - s) // 2
    im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BOX)
    return np.asarray(im)


def _crop(a: np.ndarray, rng) -> np.ndarray:
    s = a.shape[0]
    c = int(round(s * rng.uniform(*CROP_SIDE)))
    oy, ox = rng.integers(0, s - c + 1, 2)
    return cv2.resize(a[oy : oy + c, ox : ox + c], (s, s), interpolation=cv2.INTER_AREA)


def _rotate(a: np.ndarray, rng) -> np.ndarray:
    s = a.shape[0]
    m = cv2.getRotationMatrix2D((s / 2, s / 2), rng.uniform(*ROTATE_DEG) * rng.choice([-1, 1]), 1.0)
    return cv2.warpAffine(a, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _colour(a: np.ndarray, rng) -> np.ndarray:
    hsv = cv2.cvtColor(a, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(*HUE_DEG) * rng.choice([-1, 1]) / 2) % 180  # OpenCV hue: deg/2
    hsv[..., 1] *= rng.uniform(*SATURATION)
    hsv[..., 2] *= rng.uniform(*BRIGHTNESS)
    return cv2.cvtColor(np.clip(hsv, 0, [179, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2RGB)


def _jpeg(a: np.ndarray, rng) -> np.ndarray:
    buf = pyio.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    return np.asarray(Image.open(buf).convert("RGB"))


_OPS = {"crop": _crop, "rotate": _rotate, "colour": _colour, "jpeg": _jpeg}


def plant(a: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A near copy of RGB uint8 ``a`` of one ``PLANT_KINDS`` kind (random strength from ``rng``)."""
    if kind == "combo":
        for k in rng.choice(list(_OPS), size=int(rng.integers(2, 4)), replace=False):
            a = _OPS[str(k)](a, rng)
        return a
    if kind not in _OPS:
        raise ConfigError(f"unknown near-copy kind {kind!r}; known: {', '.join(PLANT_KINDS)}")
    return _OPS[kind](a, rng)


# ---------------------------------------------------------------------------------------------
# embeddings: queries (n, d) and gallery views (n, v, d), rows unit norm


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def _dihedral(a: np.ndarray):
    for flip in (False, True):
        b = a[:, ::-1] if flip else a
        for k in range(4):
            yield np.ascontiguousarray(np.rot90(b, k))


class Descriptor:
    """Band-passed gray thumbnails; the gallery under dihedral x rotation x crop views."""

    def __init__(self, c: dict):
        self.size = int(c["image_size"])
        self.thumb = int(c["thumb"])
        self.sigmas = sorted(float(s) for s in c["bandpass"])
        self.rotations = [float(r) for r in c["rotations"]]
        self.frames = [(1.0, 0.0, 0.0)]  # (scale, offset x, offset y) as shares of the side
        for s in c["crop_scales"]:
            half = (1.0 - float(s)) / 2
            n = 1 + 2 * math.ceil(half / float(c["crop_step"]) - 1e-9)
            offs = np.linspace(-half, half, n)
            self.frames += [(float(s), float(ox), float(oy)) for oy in offs for ox in offs]
        self.names = [
            f"{d} rot{r:+g} crop{s:g}@{ox:+.2f},{oy:+.2f}"
            for d in DIHEDRAL
            for r in self.rotations
            for s, ox, oy in self.frames
        ]
        self.name = f"band-passed {self.thumb}px gray thumbnail, {len(self.names)} views per fine-tune image"

    def _smooth(self, g: np.ndarray, scale: float) -> np.ndarray:
        """Anti-aliasing before a view of side share ``scale`` is sampled down to the thumbnail
        (the source px of half a thumbnail px: about what area averaging does)."""
        return cv2.GaussianBlur(g, (0, 0), ANTIALIAS * self.size / self.thumb * scale)

    def _bandpass(self, t: np.ndarray) -> np.ndarray:
        """Difference of Gaussians on the thumbnail, after the crop: its borders are treated alike
        in a copy (whose border is a crop's) and in the fine-tune view that matches it."""
        lo, hi = self.sigmas
        return cv2.GaussianBlur(t, (0, 0), lo) - cv2.GaussianBlur(t, (0, 0), hi)

    def _gray(self, a: np.ndarray) -> np.ndarray:
        g = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
        if g.shape != (self.size, self.size):
            g = cv2.resize(g, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return g.astype(np.float32)

    def _warp(self, smooth: np.ndarray, angle: float, scale: float, ox: float, oy: float) -> np.ndarray:
        """The band-passed thumbnail of a view: rotated by ``angle``, the crop of side ``scale``
        centred at (ox, oy) (shares of the side from the middle), sampled from ``smooth``."""
        s = self.size
        m = cv2.getRotationMatrix2D((s / 2, s / 2), angle, 1.0 / scale)
        m[:, 2] -= (ox * s / scale, oy * s / scale)  # bring the crop's centre to the middle
        m *= self.thumb / s
        t = (self.thumb, self.thumb)
        w = cv2.warpAffine(smooth, m, t, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        return self._bandpass(w)

    def queries(self, arrs: list[np.ndarray]) -> np.ndarray:
        if not arrs:
            return np.zeros((0, 1))
        return _unit(
            np.stack([self._warp(self._smooth(self._gray(a), 1.0), 0.0, 1.0, 0.0, 0.0) for a in arrs])
        )

    def _views(self, a: np.ndarray) -> np.ndarray:
        out = []
        scales = sorted({sc for sc, _, _ in self.frames}, reverse=True)
        for base in _dihedral(self._gray(a)):
            bps = {sc: self._smooth(base, sc) for sc in scales}
            for r in self.rotations:
                for sc, ox, oy in self.frames:
                    out.append(self._warp(bps[sc], r, sc, ox, oy))
        return _unit(np.stack(out))

    def gallery(self, arrs: list[np.ndarray], threads: int = 1) -> np.ndarray:
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:  # OpenCV releases the GIL
            return np.stack(list(pool.map(self._views, arrs)))


class Extracted:
    """Features of a ``quality`` extractor; the gallery under the 8 flips and quarter turns."""

    def __init__(self, kind: str, quality_cfg: dict | None, batch_size: int, model=None):
        from . import quality  # imported here: torch, and the hub models, only when asked for

        self.extractor = quality.load_extractor(kind, quality_cfg, model_dir=model)
        self.batch = int(batch_size)
        self.names = list(DIHEDRAL)
        self.name = f"{kind}: {self.extractor.name}, centred on the fine-tune mean, 8 views"
        self.mean = None

    def _features(self, arrs: list[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        for s in range(0, len(arrs), self.batch):
            x = torch.from_numpy(np.stack(arrs[s : s + self.batch])).permute(0, 3, 1, 2).contiguous()
            out.append(self.extractor(x).numpy())
        return np.concatenate(out).astype(np.float32)

    def gallery(self, arrs: list[np.ndarray], threads: int = 1) -> np.ndarray:
        turned = [list(_dihedral(a)) for a in arrs]
        g = np.stack([self._features([t[k] for t in turned]) for k in range(8)], axis=1)  # (n, 8, d)
        self.mean = g[:, 0].mean(axis=0)
        return _unit((g - self.mean).reshape(-1, g.shape[-1])).reshape(g.shape)

    def queries(self, arrs: list[np.ndarray]) -> np.ndarray:
        if self.mean is None:
            raise ConfigError("embed the fine-tune gallery before the queries (its mean centres them)")
        return _unit(self._features(arrs) - self.mean) if arrs else np.zeros((0, 1))


def embedder(c: dict, quality_cfg: dict | None = None, model=None):
    """The embedding of ``filter.memorization.semantic`` (``c``); ``model``: the hub id or folder of a
    dinov2 / clip extractor (``models.<features>``; None: the schema's default)."""
    if c["features"] == "descriptor":
        return Descriptor(c)
    return Extracted(c["features"], quality_cfg, c["batch_size"], model)


def nearest(
    q: np.ndarray,
    gallery: np.ndarray,
    q_group: np.ndarray | None = None,
    g_group: np.ndarray | None = None,
    block: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each query row: (gallery index, view index, cosine) of its best match over all views.

    A query never matches a gallery image of its own group (``q_group == g_group``, -1 = none):
    a fine-tune image is not its own distinct neighbour. Blocked over queries (BLAS products).
    """
    n, (m, v, _) = len(q), gallery.shape
    q_group = np.full(n, -1) if q_group is None else np.asarray(q_group)
    g_group = np.full(m, -2) if g_group is None else np.where(np.asarray(g_group) < 0, -2, g_group)
    flat = gallery.reshape(m * v, -1)
    idx, view, sim = np.zeros(n, np.int64), np.zeros(n, np.int64), np.full(n, -np.inf, np.float32)
    if n == 0 or m == 0:
        return idx - 1, view, sim
    for s in range(0, n, block):
        c = (q[s : s + block] @ flat.T).reshape(-1, m, v)
        per = c.max(axis=2)
        per[q_group[s : s + block, None] == g_group[None, :]] = -np.inf
        j = per.argmax(axis=1)
        idx[s : s + block] = j
        sim[s : s + block] = per[np.arange(len(j)), j]
        view[s : s + block] = c[np.arange(len(j)), j].argmax(axis=1)
    return idx, view, sim


# ---------------------------------------------------------------------------------------------
# calibration


def threshold_for(negatives: np.ndarray, max_false_rate: float) -> float:
    """The lowest threshold t with share(negatives >= t) <= ``max_false_rate``."""
    neg = np.sort(np.asarray(negatives, np.float64)[np.isfinite(negatives)])[::-1]
    if not len(neg):
        raise ConfigError("calibration needs at least one distinct pair")
    allowed = int(math.floor(max_false_rate * len(neg) + 1e-9))
    if allowed >= len(neg):
        return float(neg[-1])
    # similarities are float32: the next float32 above, so a float32 comparison keeps it above
    return float(np.nextafter(np.float32(neg[allowed]), np.float32(np.inf)))


def plant_copies(arrs: list[np.ndarray], n_images: int, seed: int) -> tuple[list, np.ndarray, list[str]]:
    """Near copies of a seeded subset of ``arrs``: one of every ``PLANT_KINDS`` kind per image.
    Returns (copies, source index of each, kind of each)."""
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(arrs))[: min(int(n_images), len(arrs))])
    copies, src, kinds = [], [], []
    for i in chosen:
        for k in PLANT_KINDS:
            copies.append(plant(arrs[i], k, rng))
            src.append(int(i))
            kinds.append(k)
    return copies, np.array(src, np.int64), kinds


def calibrate(
    arrs: list[np.ndarray],
    emb,
    gallery: np.ndarray,
    c: dict,
    groups: np.ndarray | None = None,
) -> dict:
    """Threshold from the fine-tune images themselves (module docstring); ``gallery`` = their views.

    Returns threshold, false rate and recall at it (per kind too), and the counts used.
    """
    groups = np.arange(len(arrs)) if groups is None else np.asarray(groups)
    _, _, neg = nearest(emb.queries(arrs), gallery, groups, groups, int(c["block"]))
    copies, src, kinds = plant_copies(arrs, int(c["calibration_images"]), int(c["seed"]))
    idx, _, pos = nearest(emb.queries(copies), gallery, block=int(c["block"]))
    thr = threshold_for(neg, float(c["max_false_rate"]))
    hit = pos >= thr
    kinds_arr = np.array(kinds)
    return {
        "threshold": thr,
        "calibrated": True,
        "false_rate": float(np.mean(neg[np.isfinite(neg)] >= thr)),
        "recall": float(hit.mean()) if len(hit) else float("nan"),
        "recall_per_kind": {
            k: float(hit[kinds_arr == k].mean()) for k in PLANT_KINDS if (kinds_arr == k).any()
        },
        "top1": float(np.mean(idx == src)) if len(src) else float("nan"),
        "negatives": int(np.isfinite(neg).sum()),
        "copies": len(copies),
    }


# ---------------------------------------------------------------------------------------------
# the audit


def _group_ids(values) -> np.ndarray:
    codes, _ = pd.factorize(pd.Series(values).astype(str))
    return np.asarray(codes, np.int64)


def _match(paths: list[str], emb, gallery: np.ndarray, c: dict, threads: int):
    """(readable indices, gallery index, view, cosine) of the synthetic images, read and embedded
    ``block`` at a time: the images of a large set never sit in memory together."""
    ok, idx, view, sim = [], [], [], []
    block, size = int(c["block"]), int(c["image_size"])
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        bar = Bar(total=len(paths), desc="semantic: synthetic")
        for s in range(0, len(paths), block):
            arrs = list(pool.map(lambda p: load_square(p, size), paths[s : s + block]))
            good = [k for k, a in enumerate(arrs) if a is not None]
            if good:
                i, v, m = nearest(emb.queries([arrs[k] for k in good]), gallery, block=block)
                ok += [s + k for k in good]
                idx.append(i)
                view.append(v)
                sim.append(m)
            bar.update(len(arrs))
        bar.close()
    cat = (lambda x: np.concatenate(x)) if ok else (lambda x: np.zeros(0))
    return ok, cat(idx), cat(view).astype(np.int64), cat(sim)


def semantic_audit(
    synthetic_paths,
    finetune: pd.DataFrame,
    c: dict,
    threads: int = 1,
    quality_cfg: dict | None = None,
    model=None,
) -> tuple[pd.DataFrame, dict]:
    """One row per synthetic image (``NEAREST_COLUMNS``) and the calibration summary.

    ``finetune``: the fine-tune manifest (``path``; ``lesion_id`` groups images of one lesion).
    ``c``: ``filter.memorization.semantic``. Unreadable images get an empty row.
    """
    synthetic_paths = [str(p) for p in synthetic_paths]
    size = int(c["image_size"])
    train_paths = finetune["path"].map(str).tolist()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        t_arr = list(
            Bar(
                pool.map(lambda p: load_square(p, size), train_paths),
                total=len(train_paths),
                desc="semantic: fine-tune",
            )
        )
    keep_t = [i for i, a in enumerate(t_arr) if a is not None]
    if len(keep_t) < len(t_arr):
        log.warning("semantic audit: %d fine-tune images unreadable, left out", len(t_arr) - len(keep_t))
    t_arr = [t_arr[i] for i in keep_t]
    emb = embedder(c, quality_cfg, model)
    gallery = emb.gallery(t_arr, threads) if t_arr else np.zeros((0, 1, 1), np.float32)
    log.info(
        "semantic audit: %d synthetic x %d fine-tune images x %d views of %d features (%.3g multiply-adds)",
        len(synthetic_paths),
        len(t_arr),
        gallery.shape[1],
        gallery.shape[2],
        float(len(synthetic_paths)) * gallery.shape[0] * gallery.shape[1] * gallery.shape[2],
    )
    calib = {"threshold": float(c["min_similarity"]), "calibrated": False, "features": emb.name}
    if c["calibrate"] and len(t_arr) >= int(c["min_calibration_images"]):
        lesion = finetune["lesion_id"].iloc[keep_t] if "lesion_id" in finetune.columns else None
        groups = None
        if lesion is not None and lesion.notna().all():
            groups = _group_ids(lesion)
        calib.update(calibrate(t_arr, emb, gallery, c, groups))
    elif c["calibrate"]:
        log.warning(
            "semantic audit: %d fine-tune images (< min_calibration_images %d): threshold min_similarity %s",
            len(t_arr),
            int(c["min_calibration_images"]),
            c["min_similarity"],
        )
    ok, idx, view, sim = _match(synthetic_paths, emb, gallery, c, threads) if t_arr else ([], [], [], [])
    thr = float(calib["threshold"])
    rows = pd.DataFrame(
        {"path": synthetic_paths, "nearest": "", "view": "", "similarity": np.nan, "threshold": thr}
    )
    if len(ok):
        rows.loc[ok, "nearest"] = [train_paths[keep_t[j]] for j in idx]
        rows.loc[ok, "view"] = [emb.names[v] for v in view]
        rows.loc[ok, "similarity"] = sim.astype(float)
    rows["memorized_semantic"] = rows["similarity"].fillna(-np.inf) >= thr
    sims = rows["similarity"].dropna()
    calib["p95"] = float(sims.quantile(0.95)) if len(sims) else float("nan")
    calib["fraction_above"] = float(rows["memorized_semantic"].mean()) if len(rows) else 0.0
    log.info(
        "semantic audit (%s): threshold %.4f (%s); %d of %d synthetic images at or above it",
        emb.name,
        thr,
        f"calibrated, recall {calib['recall']:.3f} at false rate {calib['false_rate']:.3f}"
        if calib["calibrated"]
        else "min_similarity",
        int(rows["memorized_semantic"].sum()),
        len(rows),
    )
    return rows[NEAREST_COLUMNS], calib


# ---------------------------------------------------------------------------------------------
# report


def section_lines(rows: pd.DataFrame, calib: dict, pairs_png, closest: int, fig_ref: str) -> list[str]:
    """Markdown on the semantic audit (threshold, how it was set, 95th percentile, share above) and
    a contact sheet of the ``closest`` pairs (synthetic | nearest fine-tune image) at ``pairs_png``,
    referenced as ``fig_ref``."""
    from .imaging import contact_sheet, pairs_sheet

    sims = (
        pd.to_numeric(rows["similarity"], errors="coerce").dropna() if len(rows) else pd.Series(dtype=float)
    )
    if not calib.get("threshold") or not len(sims):
        contact_sheet([], pairs_png)
        return ["Semantic memorization audit: off (no fine-tune images or `semantic.activate: false`).", ""]
    thr = float(calib["threshold"])
    above = rows["memorized_semantic"].astype(str).str.lower().eq("true")
    how = (
        f"calibrated on the fine-tune set: {calib['copies']} planted near copies (crops, small rotations, "
        f"colour shifts, JPEG, combinations) found at recall {calib['recall']:.3f}, "
        f"{calib['negatives']} distinct fine-tune lesions matching at false rate {calib['false_rate']:.3f}"
        if calib.get("calibrated")
        else "`semantic.min_similarity` (not calibrated)"
    )
    md = [
        f"Semantic memorization audit ({calib.get('features', '')}): nearest fine-tune image of each"
        f" synthetic image by cosine similarity. Threshold {thr:.4f}, {how}."
        f" 95th percentile of nearest-neighbour similarity {sims.quantile(0.95):.4f}, max {sims.max():.4f};"
        f" {100 * above.mean():.1f} % ({int(above.sum())}) at or above the threshold"
        " (rejected as `memorized_semantic` unless an earlier reason applies).",
        "",
    ]
    top = rows.assign(similarity=pd.to_numeric(rows["similarity"], errors="coerce"))
    top = top.dropna(subset=["similarity"]).nlargest(int(closest), "similarity")
    views = [str(r.view).split(" ")[0] for r in top.itertuples()]
    title = f"semantic audit, closest pairs: synthetic | fine-tune (threshold {thr:.4f})"
    pairs_sheet(top, pairs_png, views, title)
    md += ["| synthetic | nearest fine-tune image | cosine | view |", "|---|---|---:|---|"]
    md += [
        f"| {io.rel(r.path)} | {io.rel(r.nearest)} | {r.similarity:.4f} | {r.view} |"
        for r in top.itertuples()
    ]
    md += ["", f"![semantic audit: closest pairs]({fig_ref})", ""]
    return md
