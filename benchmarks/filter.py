"""Artifact filter and memorization audit: measured recall, false rejects and audit speed.

Builds a labelled set from the project's own generator (``dermsynth.data.demo``): clean
synthetic-looking lesions (two domains, both classes, 30 % with hairs, lesions disjoint from the
fine-tune set) plus planted artifacts of each kind, and a fine-tune set whose images are copied
into the synthetic set (exact, flipped, rotated, JPEG-recompressed, recoloured, combinations):

    kind         how it is made                                        expected reason(s)
    noise        + Gaussian noise, sigma 10-30 gray levels, per channel noise
    blank        black / white / one flat colour (+ sigma-1 noise)     black, white, flat
    cast         channel gains (green, blue, magenta, cyan), or 1.8-2.5x over-exposure  cast, clipped
    tiling       a tile (1/2-1/4 of the side) repeated; +-(6-15) checkerboard or
                 period-2/4/8 stripes                                  tiling
    blur         Gaussian blur, sigma 1.5-3 px                          blurry
    no_lesion    skin only (the generator with lesion radius 0)         no_lesion
    unreadable   PNG cut in half                                        unreadable
    memorized    a fine-tune image: exact, flip, rot90/180/270, JPEG q50-90, gains 0.9-1.1,
                 flip/rotation + JPEG + recolour                        memorized
    duplicate    a JPEG q70-95 copy of a clean synthetic image, later in the manifest  duplicate

Split: lesions with an even index form the tuning part, odd ones the held-out part (artifacts are
made from the lesion they belong to, so no image is in both). Thresholds are derived on the tuning
part (each threshold halfway between the 99.5 % quantile of the clean scores and the 2 % quantile
of its artifact kind's scores; the memorization threshold halfway in log(1 - similarity)), printed,
and the filter is then run end to end (``dermsynth.filter.filter_synthetic``) on the held-out part
twice: with the config defaults (the schema's ``filter`` section, what ships) and with the thresholds
just tuned.

Real dermoscopy (the figures the shipped thresholds are calibrated on): the ISIC and HAM10000 images
of shared/data through the workflow's resize and DullRazor, at 512 and 128 px (``--quick`` or
``--size``: that size only). Rulers, rings, bubbles, gel, vignetting and hairs count as clean. Into
each image two artifacts are planted (kinds cycle): noise, blank/flat, casts no dermoscope gives
(green, blue, cyan, yellow-green; over-exposure), tiling (a central tile repeated, checkerboard,
stripes), blur (sigma 1-2.5 % of the side), skin-only crops without a lesion; every fifth image
also gets an exact or JPEG copy. Images alternate tuning / held-back within each class; thresholds
are tuned on the tuning half (all sizes pooled, printed) and the filter runs on the held-back half:
``false_reject_rate_real`` (target <= 0.05), ``recall_planted_real`` (>= 0.95),
``class_reject_gap_real`` (largest difference of the reject rate between classes, <= 0.03) and
``check_reject_rate_real`` (each check's reject rate per class).

Audit speed: ``audit.nearest_neighbours`` on 6,000 x 2,800 random thumbnails with all 8 symmetries
(the full-size problem, measured, not extrapolated), against a peer in the same run: the same
search as a per-pair Python loop over 32x32 correlations (timed on a subsample, extrapolated).
Reading the images is timed on 512 px PNGs and extrapolated to 8,800 reads on ``--threads``.

Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import io as _bio
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from dermsynth import artifacts, audit, filter, hair, imaging, io, splits  # noqa: E402
from dermsynth.data import demo  # noqa: E402

CLASSES = ["benign", "malignant"]
KINDS = ("noise", "blank", "cast", "tiling", "blur", "no_lesion", "unreadable", "memorized", "duplicate")
EXPECTED = {
    "noise": {"noise"},
    "blank": {"black", "white", "flat"},
    "cast": {"cast", "clipped"},
    "tiling": {"tiling"},
    "blur": {"blurry"},
    "no_lesion": {"no_lesion"},
    "unreadable": {"unreadable"},
    "memorized": {"memorized"},
    "duplicate": {"duplicate"},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="128 px, a small set (CPU, < 2 min)")
    p.add_argument("--device", default="auto", help="accepted for symmetry; the filter runs on the CPU")
    p.add_argument("--size", type=int, default=None, help="image side in px (default 128 quick, 512 full)")
    p.add_argument("--clean", type=int, default=None, help="clean synthetic images (default 240 quick, 800)")
    p.add_argument("--per-kind", type=int, default=None, help="per artifact kind (default 40 quick, 120)")
    p.add_argument("--train", type=int, default=None, help="fine-tune images (default 160 quick, 400)")
    p.add_argument("--real-per-class", type=int, default=None, help="real images per class (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------ the labelled set


def lesion_image(ds: str, i: int, size: int, rng: np.random.Generator) -> np.ndarray:
    dom = "ham10000" if i % 3 == 0 else "isic"
    return demo.make_image(11, ds, CLASSES[i % 2], i, 0, size, dom, CLASSES, bool(rng.random() < 0.3))[0]


def skin_only(i: int, size: int) -> np.ndarray:
    rng = demo._rng(12, "skin", i)
    les = demo.lesion_params(rng, "benign")  # malignant colour patches divide by the radius
    les["radius"] = 0.0  # the generator's own skin, vignette, ring and grain, without a lesion
    return demo._to8(demo.render(les, rng, size, "ham10000" if i % 3 == 0 else "isic"))


def jpeg(a: np.ndarray, q: int) -> np.ndarray:
    b = _bio.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=int(q))
    return np.asarray(Image.open(b).convert("RGB"))


def gains(a: np.ndarray, g) -> np.ndarray:
    return np.clip(a.astype(np.float32) * np.asarray(g, np.float32), 0, 255).astype(np.uint8)


def plant(kind: str, i: int, size: int, rng: np.random.Generator, train: list[np.ndarray]) -> np.ndarray:
    """One artifact of ``kind`` made from synthetic lesion ``i`` (or fine-tune image i)."""
    if kind == "memorized":
        return memorized_copy(i, rng, train)
    base = lesion_image("synthetic", i, size, rng)
    if kind == "noise":
        return np.clip(base + rng.normal(0, rng.uniform(10, 30), base.shape), 0, 255).astype(np.uint8)
    if kind == "blank":
        which = i % 3
        if which == 0:
            a = np.clip(rng.normal(4, 2, base.shape), 0, 255)
        elif which == 1:
            a = np.clip(rng.normal(251, 2, base.shape), 0, 255)
        else:
            a = np.clip(rng.uniform(60, 220, 3) + rng.normal(0, 1, base.shape), 0, 255)
        return a.astype(np.uint8)
    if kind == "cast":
        tints = [(0.55, 1.0, 0.55), (0.5, 0.75, 1.35), (1.1, 0.5, 1.15), (0.45, 1.0, 1.0)]
        if i % 5 == 4:
            return gains(base, [rng.uniform(1.8, 2.5)] * 3)
        t = np.asarray(tints[i % 4]) * rng.uniform(0.95, 1.05, 3)
        return gains(base, t)
    if kind == "tiling":
        which = i % 3
        if which == 0:
            k = int(rng.integers(2, 5))
            t = size // k
            y, x = rng.integers(0, size - t, 2)
            return np.tile(base[y : y + t, x : x + t], (k + 1, k + 1, 1))[:size, :size].copy()
        yy, xx = np.mgrid[:size, :size]
        amp = rng.uniform(6, 15)
        if which == 1:
            pat = np.where((yy + xx) % 2 == 0, 1.0, -1.0)
        else:
            period = int(rng.choice([2, 4, 8]))
            pat = np.where((xx if rng.random() < 0.5 else yy) % period < period // 2, 1.0, -1.0)
        return np.clip(base + amp * pat[..., None], 0, 255).astype(np.uint8)
    if kind == "blur":
        s = rng.uniform(1.5, 3.0)
        return cv2.GaussianBlur(base, (0, 0), s)
    if kind == "no_lesion":
        return skin_only(i, size)
    raise ValueError(kind)


def memorized_copy(i: int, rng: np.random.Generator, train: list[np.ndarray]) -> np.ndarray:
    """Fine-tune image i, copied as one of 8 variants; i // 2 picks it, so both parts get every variant."""
    a = train[i % len(train)]
    which = (i // 2) % 8
    if which == 0:
        return a.copy()
    if which == 1:
        return np.ascontiguousarray(a[:, ::-1])
    if which == 2:
        return np.ascontiguousarray(a[::-1])
    if which in (3, 4, 5):
        return np.ascontiguousarray(np.rot90(a, which - 2))
    if which == 6:
        return jpeg(a, rng.integers(50, 91))
    if which == 7 and (i // 2) % 16 == 7:
        return gains(a, rng.uniform(0.9, 1.1, 3))
    flipped = np.rot90(a[:, ::-1], int(rng.integers(0, 4)))
    return jpeg(gains(np.ascontiguousarray(flipped), rng.uniform(0.92, 1.08, 3)), rng.integers(60, 91))


def build_set(root: Path, size: int, n_clean: int, per_kind: int, n_train: int, seed: int):
    """Write the images; return (synthetic manifest rows with 'kind' and 'part', fine-tune manifest)."""
    rng = np.random.default_rng(seed)
    train = [lesion_image("train", i, size, rng) for i in range(n_train)]
    trows = []
    for i, a in enumerate(train):
        p = root / "train" / f"t{i:05d}.png"
        trows.append({"path": str(p), "label": CLASSES[i % 2], "sha256": io.save_png(p, a)})
    rows, clean = [], []

    def add(a, kind, i, name=None):
        p = root / "syn" / f"{name or kind}_{i:05d}.png"
        sha = io.save_png(p, a)
        rows.append(
            {
                "path": str(p),
                "label": CLASSES[i % 2],
                "sampler": "bench",
                "sha256": sha,
                "kind": kind,
                "part": "tune" if i % 2 == 0 else "heldout",
            }
        )
        return p

    for i in range(n_clean):
        a = lesion_image("synthetic", i, size, rng)
        clean.append(a)
        add(a, "clean", i)
    for kind in KINDS:
        for i in range(per_kind):
            j = n_clean + i  # artifacts from lesions the clean set does not use
            if kind == "unreadable":
                p = add(lesion_image("synthetic", j, size, rng), kind, j)
                data = p.read_bytes()
                p.write_bytes(data[: len(data) // 2])
            elif kind == "duplicate":
                src = i % n_clean  # the copy joins its source's part
                add(jpeg(clean[src], rng.integers(70, 96)), kind, src, name=f"dup{i}")
            elif kind == "memorized":
                # fine-tune image j' = i; its parity decides the part, so train images split too
                add(plant(kind, i, size, rng, train), kind, i, name="mem")
            else:
                add(plant(kind, j, size, rng, train), kind, j)
    return pd.DataFrame(rows), pd.DataFrame(trows)


# ------------------------------------------------------------------------------------ scores and tuning


def raw_scores(a: np.ndarray) -> dict:
    """Every per-image check's raw score (independent of thresholds)."""
    g = artifacts.gray_of(a)
    hue, chroma = artifacts.colour_cast(a)
    area, contrast = artifacts.lesion_blob(a)
    return {
        "noise": artifacts.noise_sigma(g),
        "tiling": artifacts.tiling_score(g),
        "sharpness": artifacts.sharpness(g),
        "area": area,
        "contrast": contrast,
        "hue": hue,
        "chroma": chroma,
        "clipped": artifacts.clipped_fraction(a),
    }


def scores(df: pd.DataFrame, train_paths: list[str], threads: int) -> pd.DataFrame:
    """Every check's raw score per image (independent of thresholds)."""
    out = []
    for p in df["path"]:
        try:
            a = np.asarray(io.load_rgb(p))
        except Exception:
            out.append({})
            continue
        out.append(raw_scores(a))
    s = pd.DataFrame(out, index=df.index)
    nn = audit.memorization_audit(df["path"], train_paths, 1.0, threads=threads)
    s["similarity"] = nn["similarity"].to_numpy()
    return s


def _upper(clean, art, q_clean=0.995, q_art=0.02):
    """Reject above: halfway between the clean tail and the artifact body."""
    c, a = float(np.nanquantile(clean, q_clean)), float(np.nanquantile(art, q_art))
    return (c + a) / 2 if a > c else c


def _lower(clean, art, q_clean=0.005, q_art=0.98):
    c, a = float(np.nanquantile(clean, q_clean)), float(np.nanquantile(art, q_art))
    return (c + a) / 2 if a < c else c


def tune(df: pd.DataFrame, s: pd.DataFrame) -> dict:
    clean = s[df["kind"] == "clean"]
    k = lambda kind: s[df["kind"] == kind]  # noqa: E731
    cast = k("cast")
    over = cast[cast["clipped"] > 0.05]
    tinted = cast[cast["clipped"] <= 0.05]
    # casts well outside the clean hue range tune the hue bounds; casts within 15 degrees of it
    # (e.g. magenta, whose hue is that of red skin) tune the chroma bound
    h_lo, h_hi = np.nanquantile(clean["hue"], [0.005, 0.995])
    band = (tinted["hue"] >= h_lo - 15) & (tinted["hue"] <= h_hi + 15)
    below = tinted["hue"][~band & (tinted["hue"] < h_lo)]
    above = tinted["hue"][~band & (tinted["hue"] > h_hi)]
    in_range = tinted["chroma"][band]
    lo_hue = _lower(clean["hue"], below) if len(below) else -30.0
    hi_hue = _upper(clean["hue"], above) if len(above) else 120.0
    mem = k("memorized")["similarity"]
    c_sim = float(np.nanquantile(clean["similarity"], 0.995))
    a_sim = float(np.nanquantile(mem, 0.02))
    mem_thr = 1 - math.sqrt((1 - c_sim) * max(1 - a_sim, 1e-6)) if a_sim > c_sim else c_sim + 1e-4
    r = lambda v, n=3: float(round(v, n))  # noqa: E731
    return {
        "clipped": {"max_fraction": r(_upper(clean["clipped"], over["clipped"]) if len(over) else 0.2)},
        "cast": {
            "min_hue": r(lo_hue, 1),
            "max_hue": r(hi_hue, 1),
            "max_chroma": r(_upper(clean["chroma"], in_range) if len(in_range) else 60.0, 1),
        },
        "noise": {"max_sigma": r(_upper(clean["noise"], k("noise")["noise"]), 2)},
        "tiling": {"max_score": r(_upper(clean["tiling"], k("tiling")["tiling"]))},
        "blur": {"min_sharpness": r(_lower(clean["sharpness"], k("blur")["sharpness"]), 2)},
        "lesion": {"min_contrast": r(_lower(clean["contrast"], k("no_lesion")["contrast"]), 1)},
        "memorization": {"min_similarity": r(mem_thr, 4)},
    }


def evaluate(df: pd.DataFrame, train_csv: Path, cfg: dict, work: Path, threads: int) -> dict:
    m = work / "manifest.csv"
    df.drop(columns=["kind", "part"]).to_csv(m, index=False)
    _, rej = filter.filter_synthetic([str(m)], work / "kept.csv", work / "rej.csv", cfg, threads, train_csv)
    reason = dict(zip(rej["path"], rej["reason"], strict=True))
    got = df["path"].map(reason)
    per_kind, match = {}, {}
    for kind in KINDS:
        sel = df["kind"] == kind
        per_kind[kind] = round(float(got[sel].notna().mean()), 4)
        match[kind] = round(float(got[sel].isin(EXPECTED[kind]).mean()), 4)
    arts = df["kind"] != "clean"
    clean_rej = got[~arts].dropna()
    missed = {k: [Path(p).stem for p in df["path"][(df["kind"] == k) & got.isna()]] for k in KINDS}
    return {
        "recall": round(float(got[arts].notna().mean()), 4),
        "false_reject_rate": round(float(got[~arts].notna().mean()), 4),
        "per_reason_recall": per_kind,
        "reason_match": match,
        "clean_rejected_by": clean_rej.value_counts().to_dict(),
        "missed": {k: v for k, v in missed.items() if v},
        "n_clean": int((~arts).sum()),
        "n_artifacts": int(arts.sum()),
    }


# ------------------------------------------------------------------------------------ real dermoscopy

DATA = ROOT.parent / "shared" / "data"
REAL_KINDS = ("noise", "blank", "cast", "tiling", "blur", "no_lesion")


def dullrazor_cfg() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["preprocess"]["dullrazor"]


def _prep(path: Path, sizes: tuple[int, ...], dr: dict) -> dict:
    """One real image through the workflow's resize and DullRazor at each size, and a skin-only
    crop: the brightest of the four corner squares (0.3 of the short side, inset by 0.1: off the
    lesion, inside the dermoscope's ring) resized the same way."""
    full = np.asarray(io.load_rgb(path))
    h, w = full.shape[:2]
    s, m = int(0.3 * min(h, w)), int(0.1 * min(h, w))
    crops = [full[y : y + s, x : x + s] for y in (m, h - m - s) for x in (m, w - m - s)]
    skin = max(crops, key=lambda c: float(c.mean()))
    out = {}
    for size in sizes:
        a = imaging.square_resize(full, size)
        out[size] = hair.dullrazor(a, **hair.scaled_params(dr, size, size))[0]
        out[("skin", size)] = imaging.square_resize(skin, size)
    return out


def load_real(sizes: tuple[int, ...], threads: int, limit: int | None = None) -> tuple[pd.DataFrame, list]:
    """labels.csv rows (sorted by path, 'part' alternating tune / heldout within each class) and the
    prepared images."""
    from concurrent.futures import ThreadPoolExecutor

    lab = pd.read_csv(DATA / "labels.csv").sort_values("path").reset_index(drop=True)
    if limit:
        lab = lab.groupby("label", group_keys=False).head(limit).reset_index(drop=True)
    lab["part"] = np.where(lab.groupby("label").cumcount() % 2 == 0, "tune", "heldout")
    dr = dullrazor_cfg()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        imgs = list(pool.map(lambda p: _prep(DATA / p, sizes, dr), lab["path"]))
    return lab, imgs


def plant_real(kind: str, a: np.ndarray, skin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An artifact of ``kind`` planted into the real image ``a``; sizes are shares of the side."""
    size = a.shape[0]
    if kind == "noise":
        return np.clip(a + rng.normal(0, rng.uniform(10, 30), a.shape), 0, 255).astype(np.uint8)
    if kind == "blank":
        which = int(rng.integers(0, 3))
        if which == 0:
            b = rng.normal(4, 2, a.shape)
        elif which == 1:
            b = rng.normal(251, 2, a.shape)
        else:
            b = rng.uniform(60, 220, 3) + rng.normal(0, 1, a.shape)
        return np.clip(b, 0, 255).astype(np.uint8)
    if kind == "cast":  # green, blue, cyan, yellow-green: no dermoscope lights skin so; or over-exposed
        tints = [(0.55, 1.0, 0.55), (0.5, 0.75, 1.35), (0.45, 1.0, 1.0), (0.7, 1.0, 0.35)]
        which = int(rng.integers(0, 5))
        if which == 4:
            return gains(a, [rng.uniform(1.8, 2.5)] * 3)
        return gains(a, np.asarray(tints[which]) * rng.uniform(0.95, 1.05, 3))
    if kind == "tiling":
        which = int(rng.integers(0, 3))
        if which == 0:
            k = int(rng.integers(2, 5))
            t = size // k
            y, x = rng.integers(size // 4, size - t - size // 4 + 1, 2) if t < size // 2 else (size // 4,) * 2
            return np.tile(a[y : y + t, x : x + t], (k + 1, k + 1, 1))[:size, :size].copy()
        yy, xx = np.mgrid[:size, :size]
        if which == 1:
            pat = np.where((yy + xx) % 2 == 0, 1.0, -1.0)
        else:
            period = int(rng.choice([2, 4, 8]))
            pat = np.where((xx if rng.random() < 0.5 else yy) % period < period // 2, 1.0, -1.0)
        return np.clip(a + rng.uniform(6, 15) * pat[..., None], 0, 255).astype(np.uint8)
    if kind == "blur":  # sigma 1-2.5 % of the side: 5-13 px at 512, 1.3-3.2 px at 128
        return cv2.GaussianBlur(a, (0, 0), rng.uniform(0.01, 0.025) * size)
    if kind == "no_lesion":
        return skin
    raise ValueError(kind)


def build_real(root: Path, lab: pd.DataFrame, imgs: list, size: int, seed: int) -> pd.DataFrame:
    """Clean real images, two planted artifacts per image (kinds cycle), and an exact or JPEG copy of
    every fifth image, each in its source image's part."""
    rng = np.random.default_rng(seed)
    rows = []

    def add(a, kind, i, name):
        p = root / f"real{size}" / f"{name}_{i:04d}.png"
        rows.append(
            {
                "path": str(p),
                "label": lab["label"].iat[i],
                "sampler": "real",
                "sha256": io.save_png(p, a),
                "kind": kind,
                "part": lab["part"].iat[i],
            }
        )

    for i in range(len(lab)):
        add(imgs[i][size], "clean", i, "clean")
    for i in range(len(lab)):
        for kind in (REAL_KINDS[i % 6], REAL_KINDS[(i + 3) % 6]):
            add(plant_real(kind, imgs[i][size], imgs[i][("skin", size)], rng), kind, i, kind)
        if i % 5 == 0:
            a = imgs[i][size]
            add(a.copy() if i % 10 == 0 else jpeg(a, rng.integers(70, 96)), "duplicate", i, "dup")
    return pd.DataFrame(rows)


def real_scores(df: pd.DataFrame) -> pd.DataFrame:
    out = []
    for p in df["path"]:
        a = np.asarray(io.load_rgb(p))
        out.append(raw_scores(a))
    return pd.DataFrame(out, index=df.index)


def check_rates(df: pd.DataFrame, cfg: dict) -> dict:
    """Each check's reject rate on the clean real images, overall and per class (every failing
    check counts, not only the first)."""
    verdict = artifacts.image_verdict(cfg)
    clean = df[df["kind"] == "clean"]
    fails = [{r for r, _, _ in verdict(np.asarray(io.load_rgb(p)))} for p in clean["path"]]
    out = {}
    for r in ("black", "white", "flat", "clipped", "cast", "tiling", "noise", "blurry", "no_lesion"):
        hit = pd.Series([r in f for f in fails], index=clean.index)
        per = hit.groupby(clean["label"]).mean()
        out[r] = {"all": round(float(hit.mean()), 4), **{k: round(float(v), 4) for k, v in per.items()}}
    return out


def evaluate_real(df: pd.DataFrame, cfg: dict, work: Path, threads: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    m = work / "manifest.csv"
    df.drop(columns=["kind", "part"]).to_csv(m, index=False)
    _, rej = filter.filter_synthetic([str(m)], work / "kept.csv", work / "rej.csv", cfg, threads)
    got = df["path"].map(dict(zip(rej["path"], rej["reason"], strict=True)))
    clean = df["kind"] == "clean"
    per_class = got[clean].notna().groupby(df["label"][clean]).mean()
    real_kinds = (*REAL_KINDS, "duplicate")
    return {
        "false_reject_rate_real": round(float(got[clean].notna().mean()), 4),
        "recall_planted_real": round(float(got[~clean].notna().mean()), 4),
        "class_reject_gap_real": round(float(per_class.max() - per_class.min()), 4),
        "reject_rate_real_per_class": {k: round(float(v), 4) for k, v in per_class.items()},
        "per_kind_recall_real": {k: round(float(got[df["kind"] == k].notna().mean()), 4) for k in real_kinds},
        "clean_real_rejected_by": got[clean].dropna().value_counts().to_dict(),
        "n_clean_real": int(clean.sum()),
        "n_planted_real": int((~clean).sum()),
    }


def tune_real(df: pd.DataFrame, s: pd.DataFrame) -> dict:
    """Thresholds from the tuning half of the real images and the artifacts planted into them."""
    clean = s[df["kind"] == "clean"]
    k = lambda kind: s[df["kind"] == kind]  # noqa: E731
    cast = k("cast")
    over = cast[cast["clipped"] > 0.05]
    tinted = cast[cast["clipped"] <= 0.05]
    h_lo, h_hi = np.nanquantile(clean["hue"], [0.0, 1.0])
    below, above = tinted["hue"][tinted["hue"] < h_lo], tinted["hue"][tinted["hue"] > h_hi]
    r = lambda v, n=3: float(round(v, n))  # noqa: E731
    # every clean tuning image passes (q 0 / 1): ~170 images do not pin down a 99.5 % tail
    return {
        "clipped": {"max_fraction": r(_upper(clean["clipped"], over["clipped"], 1.0) if len(over) else 0.45)},
        "cast": {
            "min_hue": r(_lower(clean["hue"], below, 0.0) if len(below) else -180.0, 1),
            "max_hue": r(_upper(clean["hue"], above, 1.0) if len(above) else 180.0, 1),
            # casts are told by hue; chroma only bounds over-saturation, 10 % above the clean maximum
            "max_chroma": r(1.1 * float(clean["chroma"].max()), 1),
        },
        "noise": {"max_sigma": r(_upper(clean["noise"], k("noise")["noise"], 1.0), 2)},
        "tiling": {"max_score": r(_upper(clean["tiling"], k("tiling")["tiling"], 1.0))},
        "blur": {"min_sharpness": r(_lower(clean["sharpness"], k("blur")["sharpness"], 0.0), 2)},
        # lesion is not tuned here: a few real lesions are faint (contrast ~0) and some skin-only crops
        # hold a dark fold or ring edge, so the quantile rule gives 0; the shipped 22 holds (figures)
    }


# ------------------------------------------------------------------------------------ audit speed


def audit_speed(root: Path, threads: int, n_syn: int = 6000, n_train: int = 2800, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    syn = rng.uniform(0, 255, (n_syn, 32, 32)).astype(np.float32)
    tr = rng.uniform(0, 255, (n_train, 32, 32)).astype(np.float32)
    t, c = time.perf_counter(), time.process_time()
    audit.nearest_neighbours(syn, tr, "dihedral")
    t_match, c_match = time.perf_counter() - t, time.process_time() - c
    # peer: the same search pair by pair in Python (correlation of 32x32 thumbnails, 8 symmetries)
    sub_s, sub_t = syn[:20], audit.dihedral(tr[:100])
    t = time.perf_counter()
    for a in sub_s:
        a = a - a.mean()
        for variants in sub_t:
            for b in variants:
                b = b - b.mean()
                float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))
    t_peer = (time.perf_counter() - t) / (len(sub_s) * len(sub_t)) * n_syn * n_train
    # reading: thumbnails of 512 px PNGs (decode + resize), on the filter's threads
    paths = []
    for i in range(24):
        a = demo.make_image(5, "read", CLASSES[i % 2], i, 0, 512, "isic", CLASSES, False)[0]
        p = root / "read" / f"r{i}.png"
        io.save_png(p, a)
        paths.append(p)
    t, c = time.perf_counter(), time.process_time()
    splits.thumbnails(paths, threads)
    t_read = (time.perf_counter() - t) / len(paths) * (n_syn + n_train)
    c_read = (time.process_time() - c) / len(paths) * (n_syn + n_train)
    pairs = n_syn * n_train
    return {
        "pairs_per_s": round(pairs / t_match),
        "audit_match_s_6000x2800": round(t_match, 2),
        "audit_read_s_8800_png512": round(t_read, 1),
        "audit_total_s_6000x2800": round(t_match + t_read, 1),
        # CPU seconds of this process (all threads): the wall figures above include waiting for a
        # shared machine's cores; cpu / threads is the wall time on otherwise idle cores
        "audit_cpu_s_6000x2800": round(c_match + c_read, 1),
        "peer_python_loop_s_6000x2800": round(t_peer),
        "speedup_vs_python_loop": round(t_peer / t_match, 1),
    }


def sizes_real(args, size: int) -> tuple[int, ...]:
    return (size,) if args.quick or args.size else (512, 128)


def real_part(root: Path, sizes: tuple[int, ...], args) -> dict:
    """Tune on the real tuning half (all sizes pooled: one threshold for every size), report the
    held-back half at each size with the shipped defaults and with the thresholds tuned now."""
    lab, imgs = load_real(sizes, args.threads, args.real_per_class)
    sets = {size: build_real(root, lab, imgs, size, args.seed + size) for size in sizes}
    tune_df = pd.concat([d[d["part"] == "tune"] for d in sets.values()], ignore_index=True)
    tuned = tune_real(tune_df, real_scores(tune_df))
    print("tuned on real images (tuning half):", json.dumps(tuned), flush=True)
    out = {"real_sizes_px": list(sizes), "tuned_real_now": tuned}
    for size, d in sets.items():
        held = d[d["part"] == "heldout"].reset_index(drop=True)
        shipped = evaluate_real(held, {}, root / f"ra{size}", args.threads)
        fresh = evaluate_real(held, tuned, root / f"rb{size}", args.threads)
        rates = check_rates(held, {})
        print(f"real {size} px held-back, defaults:", json.dumps(shipped), flush=True)
        print(f"real {size} px held-back, per-check reject rates:", json.dumps(rates), flush=True)
        print(f"real {size} px held-back, tuned now:", json.dumps(fresh), flush=True)
        key = "" if size == sizes[0] else f"_{size}px"
        for k in ("false_reject_rate_real", "recall_planted_real", "class_reject_gap_real"):
            out[k + key] = shipped[k]
        out["per_kind_recall_real" + key] = shipped["per_kind_recall_real"]
        out["clean_real_rejected_by" + key] = shipped["clean_real_rejected_by"]
        out["check_reject_rate_real" + key] = rates
        out["n_clean_real" + key] = shipped["n_clean_real"]
        out["n_planted_real" + key] = shipped["n_planted_real"]
        out["heldout_real_with_tuned_now" + key] = {
            k: fresh[k] for k in ("false_reject_rate_real", "recall_planted_real", "class_reject_gap_real")
        }
    return out


def main(argv=None):
    args = parse_args(argv)
    cv2.setNumThreads(args.threads)
    size = args.size or (128 if args.quick else 512)
    n_clean = args.clean or (240 if args.quick else 800)
    per_kind = args.per_kind or (40 if args.quick else 120)
    n_train = args.train or (160 if args.quick else 400)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-filter-") as tmp:
        root = Path(tmp)
        df, tdf = build_set(root, size, n_clean, per_kind, n_train, args.seed)
        train_csv = root / "finetune.csv"
        tdf.to_csv(train_csv, index=False)
        t_build = time.perf_counter() - t0
        tune_df = df[df["part"] == "tune"].reset_index(drop=True)
        held = df[df["part"] == "heldout"].reset_index(drop=True)
        tuned = tune(tune_df, scores(tune_df, tdf["path"].tolist(), args.threads))
        print("tuned thresholds (tuning part):", json.dumps(tuned), flush=True)
        (root / "a").mkdir()
        (root / "b").mkdir()
        t = time.perf_counter()
        shipped = evaluate(held, train_csv, {}, root / "a", args.threads)
        t_filter = time.perf_counter() - t
        fresh = evaluate(held, train_csv, tuned, root / "b", args.threads)
        print("held-out, config defaults:", json.dumps(shipped), flush=True)
        print("held-out, thresholds tuned in this run:", json.dumps(fresh), flush=True)
        speed = audit_speed(root, args.threads)
        t = time.perf_counter()
        real = real_part(root, sizes_real(args, size), args)
        t_real = time.perf_counter() - t
    out = {
        "benchmark": "filter",
        "size_px": size,
        "split": "even lesion index: tuning part, odd: held-out; figures: held-out, config defaults",
        "recall": shipped["recall"],
        "false_reject_rate": shipped["false_reject_rate"],
        "per_reason_recall": shipped["per_reason_recall"],
        "reason_match": shipped["reason_match"],
        "clean_rejected_by": shipped["clean_rejected_by"],
        "n_heldout_clean": shipped["n_clean"],
        "n_heldout_artifacts": shipped["n_artifacts"],
        "tuned_now": tuned,
        "heldout_with_tuned_now": {k: fresh[k] for k in ("recall", "false_reject_rate", "per_reason_recall")},
        "filter_img_per_s": round(len(held) / t_filter, 1),
        **speed,
        **real,
        "real_s": round(t_real, 1),
        "threads": args.threads,
        "build_s": round(t_build, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
