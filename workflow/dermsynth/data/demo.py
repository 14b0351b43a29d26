"""Project-owned generator of dermoscopy-like images for the offline demo.

The two classes follow the ABCD rule of dermoscopy, so a small classifier can learn them:

- benign: round and point-symmetric outline (only an even harmonic), a sharp regular border, one even
  brown colour, smaller;
- malignant: asymmetric outline (odd harmonics), an irregular and partly blurred border, several
  colours (dark brown, black, blue-grey, red patches placed off-centre), larger.

Each lesion is drawn from its own random stream, so ``images_per_lesion > 1`` gives several views of
the same lesion (rotation, shift, illumination, noise) and lesion-grouped splits have work to do.
Two ``domain`` values stand in for ISIC and HAM10000 (skin tone, colour balance, vignetting, and a
dark circular dermoscope border in the ISIC one). Hairs are drawn on top of a copy; the hair-free
image is kept as ground truth so hair removal can be scored. Each lesion also gets clinical metadata
(a HAM10000 dx of its class, sex, age, site) from a stream of its own, for the subgroup results.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .. import io
from ..errors import ConfigError
from ..progress import Bar

#: the demo's images are drawn by this module from seeds, nobody's data: public domain
DEMO_LICENSE = "CC0-1.0"
DOMAINS = {
    # skin colour (RGB 0-1), colour-balance gains, vignette strength, dermoscope ring
    "isic": {"skin": (0.87, 0.70, 0.66), "gain": (1.00, 1.00, 1.04), "vignette": 0.15, "ring": True},
    "ham10000": {"skin": (0.82, 0.60, 0.47), "gain": (1.05, 0.99, 0.90), "vignette": 0.35, "ring": False},
}

_MALIGNANT_COLOURS = np.array(
    [
        (0.30, 0.17, 0.11),  # dark brown
        (0.09, 0.07, 0.07),  # black
        (0.42, 0.47, 0.58),  # blue-grey
        (0.72, 0.28, 0.27),  # red
        (0.62, 0.43, 0.30),  # light brown
    ],
    dtype=np.float32,
)


#: HAM10000's diagnoses of each demo class, with draw weights flatter than HAM10000's (67 % nv) so
#: that the demo's subgroup tables have several diagnoses; a class not listed is its own dx
DEMO_DX = {
    "benign": {"nv": 0.55, "bkl": 0.25, "df": 0.1, "vasc": 0.1},
    "malignant": {"mel": 0.5, "bcc": 0.3, "akiec": 0.2},
}
DEMO_SITES = ("back", "lower extremity", "trunk", "upper extremity", "face", "abdomen")
DEMO_SEXES = ("male", "female")
#: the random stream of a lesion's metadata: a key no image stream uses, so images stay as they were
_META_KEY = 0x6D657461


def _rng(seed: int, dataset: str, *keys: int) -> np.random.Generator:
    # crc32, not hash(): str hashes are salted per process and would break determinism
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(dataset.encode()), *keys])


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x, y


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field, zero mean, unit-ish std."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


def lesion_params(rng: np.random.Generator, label: str) -> dict:
    """Shape and colour of one lesion; every view of the lesion shares these."""
    malignant = label == "malignant"
    if malignant:
        harmonics = [(1, rng.uniform(0.10, 0.20)), (2, rng.uniform(0.04, 0.12)), (3, rng.uniform(0.06, 0.14))]
        harmonics += [(k, rng.uniform(0.015, 0.045)) for k in rng.choice(np.arange(5, 14), 4, replace=False)]
        n_col = int(rng.integers(2, 5))
        colours = _MALIGNANT_COLOURS[rng.choice(len(_MALIGNANT_COLOURS), n_col, replace=False)]
        return {
            "malignant": True,
            "radius": rng.uniform(0.21, 0.32),
            "harmonics": [(k, a, rng.uniform(0, 2 * math.pi)) for k, a in harmonics],
            "edge": rng.uniform(0.02, 0.05),
            "edge_var": rng.uniform(0.5, 0.9),
            "base": np.array((0.48, 0.31, 0.21), np.float32) * rng.uniform(0.85, 1.1),
            "colours": colours,
            "patch_seed": int(rng.integers(1 << 31)),
            "patch_offsets": rng.uniform(-0.5, 0.5, (n_col, 2)),
        }
    return {
        "malignant": False,
        "radius": rng.uniform(0.13, 0.24),
        "harmonics": [(2, rng.uniform(0.0, 0.07), rng.uniform(0, 2 * math.pi))],
        "edge": rng.uniform(0.006, 0.012),
        "edge_var": 0.0,
        "base": np.array((0.55, 0.36, 0.24), np.float32) * rng.uniform(0.8, 1.1),
        "colours": np.zeros((0, 3), np.float32),
        "patch_seed": int(rng.integers(1 << 31)),
        "patch_offsets": np.zeros((0, 2)),
    }


def _outline(lesion: dict, rng: np.random.Generator, size: int):
    """Pose and soft outline of one view: the first draws of the view's random stream.

    Shared by ``render`` and ``lesion_mask`` so the ground-truth mask is the drawn outline by
    construction. Returns (x, y, rot, cx, cy, rho, radius, alpha).
    """
    x, y = _grid(size)
    s = float(size)
    rot = rng.uniform(0, 2 * math.pi)
    cx, cy = s / 2 + rng.uniform(-0.06, 0.06) * s, s / 2 + rng.uniform(-0.06, 0.06) * s
    dx, dy = x - cx, y - cy
    rho = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx) - rot
    radius = np.full_like(rho, lesion["radius"] * s)
    for k, a, p in lesion["harmonics"]:
        radius += lesion["radius"] * s * a * np.cos(k * theta + p)
    edge = lesion["edge"] * s * (1 + lesion["edge_var"] * np.cos(3 * theta + 1.0))
    alpha = np.clip((radius - rho) / np.maximum(edge, 0.6) + 0.5, 0, 1)
    return x, y, rot, cx, cy, rho, radius, alpha


def skin_at(ita_deg: float, domain: str) -> tuple[np.ndarray, float]:
    """(skin RGB 0-1, pigment factor) that ``render`` draws so that the skin *measures* ``ita_deg``.

    The colour is ``skintone.skin_lab``'s, divided by the mean light the domain puts on the skin
    (colour balance, vignette averaged over the square, the mean random gains), so that the measured
    ITA lands near the requested one. The lesion darkens with the skin (factor <= 1): pigment stays
    darker than the skin around it, as on dark skin it does.
    """
    from ..skintone import lab_to_srgb, skin_lab

    dom = DOMAINS[domain]
    target = lab_to_srgb(skin_lab(ita_deg))
    light = np.asarray(dom["gain"]) * (1 - dom["vignette"] / 3) * 0.99 * 0.99  # E[r^2] = 1/6 on a square
    skin = np.clip(target / light, 0, 1).astype(np.float32)
    return skin, float(min(1.0, skin.mean() / np.mean(dom["skin"])))


def render(
    lesion: dict, rng: np.random.Generator, size: int, domain: str, skin_ita: float | None = None
) -> np.ndarray:
    """One hair-free view of ``lesion`` as float32 RGB in [0, 1]; ``skin_ita``: the skin's ITA in
    degrees (see ``skin_at``), None for the domain's own skin colour."""
    dom = DOMAINS[domain]
    x, y, rot, cx, cy, rho, radius, alpha = _outline(lesion, rng, size)
    s = float(size)
    skin, pigment = (
        (np.asarray(dom["skin"], np.float32), 1.0) if skin_ita is None else skin_at(skin_ita, domain)
    )

    # skin: smooth mottling and fine grain
    img = np.empty((size, size, 3), np.float32)
    img[:] = skin * rng.uniform(0.94, 1.04, 3).astype(np.float32)
    img *= (1 + 0.05 * _lowfreq(rng, size, 5))[..., None]

    colour = np.empty_like(img)
    colour[:] = lesion["base"]
    # darker centre, plus a pigment texture: fine for benign, coarser for malignant
    centre = np.clip(1 - rho / np.maximum(radius, 1), 0, 1)
    colour *= (1 - 0.12 * centre)[..., None]
    tex = _lowfreq(rng, size, 24 if not lesion["malignant"] else 12)
    colour *= (1 + (0.04 if not lesion["malignant"] else 0.08) * tex)[..., None]
    if lesion["malignant"]:
        prng = np.random.default_rng(lesion["patch_seed"])
        cos_r, sin_r = math.cos(rot), math.sin(rot)
        for col, (ox, oy) in zip(lesion["colours"], lesion["patch_offsets"], strict=True):
            # patch centre rotates with the lesion so views stay consistent
            px = cx + lesion["radius"] * s * (ox * cos_r - oy * sin_r)
            py = cy + lesion["radius"] * s * (ox * sin_r + oy * cos_r)
            d = np.sqrt((x - px) ** 2 + (y - py) ** 2) / (lesion["radius"] * s)
            field = 0.6 - d + 0.25 * _lowfreq(prng, size, 6)
            m = np.clip(field / 0.15, 0, 1) * rng.uniform(0.6, 0.85)
            colour += (col - colour) * m[..., None]
    if skin_ita is not None:
        colour *= pigment

    img += (colour - img) * alpha[..., None]

    # illumination: global gain, vignette, colour balance of the domain
    r_img = np.sqrt((x - s / 2) ** 2 + (y - s / 2) ** 2) / s
    vig = 1 - 2 * dom["vignette"] * rng.uniform(0.8, 1.2) * r_img**2
    img *= (vig * rng.uniform(0.92, 1.06))[..., None]
    img *= np.asarray(dom["gain"], np.float32)
    if dom["ring"]:
        r_ring = s * rng.uniform(0.49, 0.56)
        ring = np.clip((r_ring - r_img * s) / (0.02 * s), 0, 1)
        img *= (0.06 + 0.94 * ring)[..., None]
    img += rng.normal(0, 0.012, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


#: hair colours (RGB 0-1): dark brown, black, brown, grey-brown (light/thin hairs in real images)
_HAIR_COLOURS = np.array(
    [(0.12, 0.08, 0.06), (0.04, 0.035, 0.03), (0.22, 0.15, 0.10), (0.30, 0.25, 0.22)], np.float32
)
_HAIR_SS = 2  # supersampling of the hair canvas: sub-pixel widths and anti-aliased edges


def _hair_path(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (m, 2) of one hair and its half-width per point, in pixels of a ``size`` image.

    The heading drifts smoothly (constant bend plus a slow wave), so hairs curve like real ones; the
    width tapers towards the tips. Start points lie slightly outside the image too, so hairs enter it.
    """
    length = rng.uniform(0.25, 1.1) * size
    m = 32
    t = np.linspace(0, 1, m)
    heading = rng.uniform(0, 2 * math.pi) + rng.uniform(-1.2, 1.2) * t
    heading += rng.uniform(0, 0.35) * np.sin(2 * math.pi * rng.uniform(0.5, 1.5) * t + rng.uniform(0, 6.3))
    step = length / (m - 1)
    pts = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], 1) * step, 0)
    pts += rng.uniform(-0.1, 1.1, 2) * size - pts[m // 2] * rng.uniform(0, 1)
    # width: about 1.5-5 px at 512 (hairs of 50-120 um in a ~15 mm field), tapering at the tips
    width = size / 512 * np.exp(rng.normal(math.log(2.6), 0.35))
    taper = np.clip(np.sin(math.pi * t) ** 0.35, 0.3, 1.0)
    return pts, 0.5 * width * taper


def draw_hairs(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dark thin curved hairs over ``img`` (float RGB); returns (hairy image, hair coverage 0-1).

    Hair count varies a lot between images (sparse, medium, dense), and so do colour (dark brown to
    black, some lighter), opacity, width and curvature. Drawn on a supersampled canvas and averaged
    down, so hairs narrower than a pixel look faint, as they do in a downscaled photograph.
    """
    size = img.shape[0]
    big = size * _HAIR_SS
    n = int(rng.choice([rng.integers(1, 6), rng.integers(6, 16), rng.integers(16, 36)], p=[0.3, 0.45, 0.25]))
    out = img.copy()
    total = np.zeros((size, size), np.float32)
    # hairs in up to three colour groups, each group one canvas: per-hair colour at bounded cost
    groups = rng.integers(0, 3, n)
    for g in range(3):
        members = np.nonzero(groups == g)[0]
        if not len(members):
            continue
        canvas = np.zeros((big, big), np.uint8)
        for _ in members:
            pts, half = _hair_path(rng, size)
            p = np.round(pts * _HAIR_SS * 16).astype(np.int32)
            thick = np.maximum(1, np.round(2 * half * _HAIR_SS)).astype(int)
            # one polyline per run of equal thickness (the taper changes it a few times per hair)
            cuts = [0, *(np.nonzero(np.diff(thick[:-1]))[0] + 1).tolist(), len(p) - 1]
            for a, b in zip(cuts[:-1], cuts[1:], strict=True):
                cv2.polylines(canvas, [p[a : b + 1]], False, 255, int(thick[a]), cv2.LINE_AA, shift=4)
        cover = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        colour = _HAIR_COLOURS[rng.choice(len(_HAIR_COLOURS), p=[0.4, 0.3, 0.2, 0.1])]
        colour = colour * rng.uniform(0.8, 1.2)
        alpha = cover * rng.uniform(0.8, 0.97)
        out += (colour - out) * alpha[..., None]
        total = np.maximum(total, cover)
    return out, total


def make_image(
    seed: int,
    dataset: str,
    label: str,
    lesion_index: int,
    view: int,
    size: int,
    domain: str,
    classes: list[str],
    hair: bool,
    skin_ita: float | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(image uint8, hair-free truth uint8 or None) for one view of one lesion; pure function of the args.
    ``skin_ita``: render the skin at this ITA (degrees) instead of the domain's colour."""
    c = classes.index(label)
    lesion = lesion_params(_rng(seed, dataset, c, lesion_index), label)
    rng = _rng(seed, dataset, c, lesion_index, view + 1)
    clean = render(lesion, rng, size, domain, skin_ita)
    if not hair:
        return _to8(clean), None
    hairy, _ = draw_hairs(clean, rng)
    return _to8(hairy), _to8(clean)


def clinical_metadata(seed: int, dataset: str, label: str, lesion_index: int, classes: list[str]) -> dict:
    """dx (a HAM10000 diagnosis of ``label``'s class), sex, age (years, a multiple of 5 as in
    HAM10000) and localization of one lesion, drawn from its own stream: every view shares them."""
    rng = _rng(seed, dataset, classes.index(label), lesion_index, _META_KEY)
    dx = DEMO_DX.get(label, {label: 1.0})
    age = int(np.clip(5 * round(rng.normal(52, 17) / 5), 5, 85))
    return {
        "dx": str(rng.choice(list(dx), p=list(dx.values()))),
        "sex": str(rng.choice(DEMO_SEXES)),
        "age": age,
        "localization": str(rng.choice(DEMO_SITES)),
    }


def _to8(img: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def generate(
    dataset: str, cfg: dict, out_dir, seed: int, classes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the demo images of one dataset; return (manifest, rejected).

    cfg keys: n_per_class (int), domain (isic|ham10000), size (px, square), hair_fraction (0-1),
    images_per_lesion (default 1).
    """
    n = int(cfg.get("n_per_class", 40))
    size = int(cfg.get("size", 128))
    domain = cfg.get("domain", "isic")
    per_lesion = max(1, int(cfg.get("images_per_lesion", 1) or 1))
    hair_fraction = float(cfg.get("hair_fraction", 0.0) or 0.0)
    if domain not in DOMAINS:
        raise ConfigError(f"datasets.{dataset}.demo.domain is '{domain}'; allowed: {', '.join(DOMAINS)}")
    if not 0.0 <= hair_fraction <= 1.0:
        raise ConfigError(f"datasets.{dataset}.demo.hair_fraction is {hair_fraction}; it must be in [0, 1]")
    out_dir = Path(out_dir)
    rows = []
    jobs = []
    for c, label in enumerate(classes):
        # an exact share of hairy images per class, not a coin flip per image
        hairy = set(_rng(seed, dataset, c, 1 << 30).permutation(n)[: int(round(hair_fraction * n))].tolist())
        for i in range(n):
            jobs.append((label, i // per_lesion, i % per_lesion, i in hairy))
    for label, lesion, view, hair in Bar(jobs, desc=f"demo {dataset}"):
        lesion_id = f"{dataset}-{label}-{lesion:05d}"
        source_id = lesion_id if per_lesion == 1 else f"{lesion_id}-v{view}"
        img, truth = make_image(seed, dataset, label, lesion, view, size, domain, classes, hair)
        path = out_dir / "images" / f"{source_id}.png"
        sha = io.save_png(path, img)
        truth_path = ""
        if truth is not None:
            tp = out_dir / "truth" / f"{source_id}.png"
            io.save_png(tp, truth)
            truth_path = io.rel(tp)
        rows.append(
            {
                "path": io.rel(path),
                "label": label,
                "dataset": dataset,
                "source_id": source_id,
                "sha256": sha,
                "lesion_id": lesion_id,
                "patient_id": "",
                "width": size,
                "height": size,
                "note": f"demo domain={domain}",
                "license": DEMO_LICENSE,
                "truth_path": truth_path,
                "has_hair": bool(hair),
                **clinical_metadata(seed, dataset, label, lesion, classes),
            }
        )
    return pd.DataFrame(rows), pd.DataFrame(columns=["path", "reason", "detail"])


def lesion_mask(
    seed: int, dataset: str, label: str, lesion_index: int, view: int, size: int, classes: list[str]
) -> np.ndarray:
    """The exact lesion of ``make_image`` with the same arguments, as a bool mask (alpha >= 0.5).

    Replays ``render``'s first draws (``_outline``) from the same random stream, so the mask is the
    generator's own outline, not a segmentation of the image: ground truth for segmenters.
    """
    c = classes.index(label)
    lesion = lesion_params(_rng(seed, dataset, c, lesion_index), label)
    rng = _rng(seed, dataset, c, lesion_index, view + 1)
    return _outline(lesion, rng, size)[-1] >= 0.5
