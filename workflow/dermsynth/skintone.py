"""Skin tone of a dermoscopic image: the Individual Typology Angle (ITA) and its Fitzpatrick proxy.

ITA = atan2(L* - 50, b*) in degrees, on the mean CIELAB colour of the skin, i.e. of the pixels
outside the lesion mask (Chardon et al. 1991). Its usual bands (Del Bino & Bernerd 2013) are the
groups below; each band is read as a Fitzpatrick type, a proxy only: ITA measures colour under the
dermoscope's light, not a person's sun reaction.

CIELAB is the exact CIE 1976 conversion from sRGB (D65 white), not OpenCV's 8-bit rescaled one, so a
patch of known L*, b* gives back its ITA to rounding error.
"""

from __future__ import annotations

import math

import numpy as np

# (lower ITA bound in degrees, group, Fitzpatrick proxy), lightest first; a value on a bound belongs
# to the lighter group.
ITA_GROUPS = (
    (55.0, "very_light", "I"),
    (41.0, "light", "II"),
    (28.0, "intermediate", "III"),
    (10.0, "tan", "IV"),
    (-30.0, "brown", "V"),
    (-math.inf, "dark", "VI"),
)
GROUP_NAMES = tuple(g for _, g, _ in ITA_GROUPS)
FITZPATRICK = {g: f for _, g, f in ITA_GROUPS}
#: ITA of measured skin, darkest to lightest (Del Bino & Bernerd 2013 report about -60 to 75)
ITA_RANGE = (-60.0, 75.0)
#: distance of skin colours from (L* = 50, b* = 0) in the (b*, L*) plane: 28-31 for the demo's skins
SKIN_RADIUS = 28.0

_D65 = np.array([0.95047, 1.0, 1.08883])
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)


def srgb_to_lab(rgb) -> np.ndarray:
    """CIELAB (L*, a*, b*) of sRGB colours (uint8 0-255 or float 0-1), shape (..., 3)."""
    c = np.asarray(rgb, dtype=np.float64)
    if np.asarray(rgb).dtype == np.uint8:
        c = c / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _RGB_TO_XYZ.T / _D65
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_srgb(lab) -> np.ndarray:
    """sRGB (float 0-1, clipped to the gamut) of CIELAB colours, shape (..., 3): the inverse of
    ``srgb_to_lab``."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    eps, kappa = 216 / 24389, 24389 / 27
    xyz = np.where(f**3 > eps, f**3, (116 * f - 16) / kappa) * _D65
    lin = np.clip(xyz @ np.linalg.inv(_RGB_TO_XYZ).T, 0, 1)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055)


def skin_lab(ita_deg: float) -> np.ndarray:
    """A plausible skin colour (L*, a*, b*) of a given ITA: on a circle of radius ``SKIN_RADIUS``
    around (L* = 50, b* = 0), where measured skin lies from very light (ITA 70) to dark (ITA -60),
    with the mild redness (a*) of skin."""
    t = math.radians(ita_deg)
    b_star = SKIN_RADIUS * math.cos(t)
    return np.array([50.0 + SKIN_RADIUS * math.sin(t), 10.0 + 0.2 * b_star, b_star])


def ita_band(fitzpatrick: str) -> tuple[float, float]:
    """(lowest, highest) ITA of the band read as a Fitzpatrick type; the open ends stop at
    ``ITA_RANGE``, where measured skin ends."""
    types = [f for _, _, f in ITA_GROUPS]
    if fitzpatrick not in types:
        raise ValueError(f"Fitzpatrick type {fitzpatrick!r}: use one of {', '.join(types)}")
    i = types.index(fitzpatrick)
    return max(ITA_GROUPS[i][0], ITA_RANGE[0]), ITA_GROUPS[i - 1][0] if i else ITA_RANGE[1]


def ita_of_lab(lightness: float, b_star: float) -> float:
    """ITA in degrees of one CIELAB colour."""
    return math.degrees(math.atan2(lightness - 50.0, b_star))


def ita(rgb: np.ndarray, lesion_mask: np.ndarray | None = None, min_pixels: int = 16) -> float:
    """ITA (degrees) of the skin of an (H, W, 3) uint8 image: the mean L*, b* of the pixels outside
    ``lesion_mask`` (all pixels when None). NaN when fewer than ``min_pixels`` skin pixels remain."""
    lab = srgb_to_lab(rgb).reshape(-1, 3)
    if lesion_mask is not None:
        skin = ~np.asarray(lesion_mask, dtype=bool).reshape(-1)
        if skin.shape[0] != lab.shape[0]:
            raise ValueError(f"mask has {skin.shape[0]} pixels, image {lab.shape[0]}")
        lab = lab[skin]
    if len(lab) < min_pixels:
        return float("nan")
    return ita_of_lab(float(lab[:, 0].mean()), float(lab[:, 2].mean()))


def ita_group(value: float) -> str:
    """The ITA band of a value ('' for NaN)."""
    if not np.isfinite(value):
        return ""
    return next(g for lo, g, _ in ITA_GROUPS if value >= lo)


def skin_columns(rgb: np.ndarray, not_skin: np.ndarray | None) -> dict:
    """masks.csv's skin-tone columns of one image: ``ita`` of the pixels outside ``not_skin`` (the
    lesions, the dermoscope's frame) and its ``ita_group``; NaN and '' when ``rgb`` is None."""
    if rgb is None:
        return {"ita": float("nan"), "ita_group": ""}
    value = ita(rgb, not_skin)
    return {"ita": value, "ita_group": ita_group(value)}
