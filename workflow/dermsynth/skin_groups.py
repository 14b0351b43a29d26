"""The skin-tone group of every image of a test set, measured once per test set (rule skin_tone).

ITA (``skintone.ita``) of the skin around the lesion: the pixels outside every lesion component and
the dark dermoscope frame that ``segment.classical_measure`` finds, as the segment stage measures it.
Kept apart from ``subgroups`` so that the evaluate rule, which only reads this table, does not rerun
when the segmenter changes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from PIL import Image

from . import io, segment, skintone
from .imaging import image_threads
from .progress import Bar

SKIN_COLUMNS = ["path", "ita", "skin_tone", "fitzpatrick"]


def skin_of(rgb: np.ndarray, side: int, segment_cfg: dict | None = None) -> float:
    """ITA (degrees) of one image's skin (see the module docstring), at most ``side`` px on the long
    side (ITA is a mean colour: size barely matters, the mask costs ~10 ms at 128 px)."""
    h, w = rgb.shape[:2]
    if max(h, w) > side:
        k = side / max(h, w)
        size = (max(1, round(w * k)), max(1, round(h * k)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    # the segment stage's own measure (masks.csv's ita): every lesion component and the dermoscope's
    # dark frame are no skin, and would pull the ITA towards "dark"
    lesion, _, not_skin = segment.classical_measure(rgb, segment_cfg)
    return skintone.ita(rgb, lesion | not_skin)


def skin_tone_table(
    paths, side: int = 128, segment_cfg: dict | None = None, threads: int = 1
) -> pd.DataFrame:
    """path, ita, skin_tone (ITA group), fitzpatrick (its proxy type) of every image."""
    paths = [str(p) for p in paths]

    def one(p: str) -> float:
        return skin_of(np.asarray(io.load_rgb(p)), side, segment_cfg)

    with image_threads(threads) as pmap:
        itas = list(Bar(pmap(one, paths), total=len(paths), desc="skin tone"))
    groups = [skintone.ita_group(v) for v in itas]
    return pd.DataFrame(
        {
            "path": paths,
            "ita": [round(v, 3) if math.isfinite(v) else float("nan") for v in itas],
            "skin_tone": groups,
            "fitzpatrick": [skintone.FITZPATRICK.get(g, "") for g in groups],
        },
        columns=SKIN_COLUMNS,
    )
