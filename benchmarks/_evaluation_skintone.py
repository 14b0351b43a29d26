"""Benchmark part of issue 25 (evaluation): does the skin-tone measure measure skin tone?

- ``ita_error_deg``: ITA of flat skin patches of known L*, b* (CIELAB -> sRGB, 8-bit, a little pixel
  noise) with a dark lesion blob and its mask; the max abs error of the measured ITA against the true
  one over a grid of tones (target <= 1 degree).
- ``ita_modifier_effect``: the project's renderer (dermsynth.data.demo) draws images with the skin
  of Fitzpatrick proxies V-VI and of I-II (ITA uniform in each band); the classical segmenter masks
  them, as the segment stage does, and the ITA difference V-VI minus I-II comes with a bootstrap CI
  (must be negative, the CI excluding 0).

    python benchmarks/_evaluation_skintone.py   # quick, CPU, a few seconds; last line: JSON
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from dermsynth import segment, skintone, transformations  # noqa: E402
from dermsynth.data import demo  # noqa: E402

CLASSES = ["benign", "malignant"]
DARK, FAIR = ("V", "VI"), ("I", "II")


def _patch(lightness: float, b_star: float, size: int, rng: np.random.Generator):
    """A skin patch of the given L*, b* (a* = 12) with a dark round lesion; (uint8 RGB, lesion mask)."""
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.hypot(yy - size * 0.45, xx - size * 0.55) < size * 0.22
    skin = skintone.lab_to_srgb(np.array([lightness, 12.0, b_star]))
    lesion = skintone.lab_to_srgb(np.array([max(5.0, lightness - 35.0), 10.0, b_star * 0.6]))
    img = np.where(mask[..., None], lesion, skin) + rng.normal(0, 0.01, (size, size, 3))
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8), mask


def ita_error(quick: bool) -> dict:
    """Max abs ITA error over a grid of L* x b*, with the true mask and with the classical one."""
    rng = np.random.default_rng(0)
    grid_l = np.linspace(30, 85, 6 if quick else 23)
    grid_b = np.linspace(6, 30, 5 if quick else 25)
    err_true, err_classical = [], []
    for lightness in grid_l:
        for b_star in grid_b:
            img, mask = _patch(lightness, b_star, 96, rng)
            truth = skintone.ita_of_lab(lightness, b_star)
            err_true.append(abs(skintone.ita(img, mask) - truth))
            found, n, other = segment.classical_measure(img)
            err_classical.append(abs(segment.measure_columns(img, found, (found, n, other))["ita"] - truth))
    return {
        "ita_error_deg": round(float(np.max(err_true)), 3),
        "ita_error_deg_classical_mask": round(float(np.nanmax(err_classical)), 3),
        "ita_error_tones": len(err_true),
    }


def _band_itas(types, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` ITAs, evenly over the Fitzpatrick types, each uniform within its ITA band."""
    bands = [skintone.ita_band(t) for t in types]
    return np.array([rng.uniform(*bands[i % len(bands)]) for i in range(n)])


def modifier_effect(quick: bool) -> dict:
    """Renders ``n`` images per arm (both classes and domains), segments them, compares mean ITA."""
    n = 40 if quick else 200
    size = 96 if quick else 128
    rng = np.random.default_rng(1)
    arms, targets = {}, {}
    for name, types in (("dark", DARK), ("fair", FAIR)):
        values = []
        targets[name] = _band_itas(types, n, rng)
        for i, target in enumerate(targets[name]):
            domain = ("isic", "ham10000")[i % 2]
            label = CLASSES[(i // 2) % 2]
            img, _ = demo.make_image(11, f"skin-{name}", label, i, 0, size, domain, CLASSES, False, target)
            measured = segment.classical_measure(img)
            values.append(segment.measure_columns(img, measured[0], measured)["ita"])
        arms[name] = np.array(values)
    e = transformations.effect(arms["dark"], arms["fair"], n_boot=1000, ci=0.95, seed=0)
    return {
        "ita_modifier_effect": round(e["difference"], 2),
        "ita_modifier_effect_lo": round(e["lo"], 2),
        "ita_modifier_effect_hi": round(e["hi"], 2),
        "ita_modifier_rendered_effect": round(float(targets["dark"].mean() - targets["fair"].mean()), 2),
        "ita_modifier_cliffs_delta": round(e["cliffs_delta"], 3),
        "ita_modifier_n_per_arm": n,
        "ita_modifier_mean_dark": round(float(np.nanmean(arms["dark"])), 2),
        "ita_modifier_mean_fair": round(float(np.nanmean(arms["fair"])), 2),
        "ita_modifier_verdict": transformations.verdict(e["lo"], e["hi"], "lower"),
    }


def run(quick: bool = True) -> dict:
    t = time.perf_counter()
    out = {**ita_error(quick), **modifier_effect(quick)}
    out["ita_target_deg"] = 1.0
    out["wall_s"] = round(time.perf_counter() - t, 1)
    return out


if __name__ == "__main__":
    print(json.dumps(run("--full" not in sys.argv)))
