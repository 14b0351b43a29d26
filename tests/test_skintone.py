import math

import numpy as np
import pytest
from skimage.color import rgb2lab

from dermsynth import skintone


def test_lab_matches_scikit_image():
    rgb = np.random.default_rng(0).integers(0, 256, (50, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        skintone.srgb_to_lab(rgb), rgb2lab(rgb[None])[0], atol=0.01
    )  # their matrix has fewer digits


def test_ita_uses_only_skin_pixels():
    img = np.zeros((20, 20, 3), np.uint8)
    img[:] = (200, 160, 140)
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    img[mask] = (60, 30, 20)
    lab = skintone.srgb_to_lab(np.array([200, 160, 140], np.uint8))
    expect = math.degrees(math.atan2(lab[0] - 50, lab[2]))
    assert skintone.ita(img, mask) == pytest.approx(expect, abs=1e-9)
    assert skintone.ita(img) < expect  # the dark lesion pulls the whole-image ITA down
    assert math.isnan(skintone.ita(img, np.ones((20, 20), bool)))


@pytest.mark.parametrize(
    "value,group",
    [
        (60, "very_light"),
        (55, "very_light"),
        (50, "light"),
        (30, "intermediate"),
        (20, "tan"),
        (0, "brown"),
        (-30, "brown"),
        (-31, "dark"),
    ],
)
def test_groups(value, group):
    assert skintone.ita_group(value) == group
    assert skintone.FITZPATRICK[group] in {"I", "II", "III", "IV", "V", "VI"}
