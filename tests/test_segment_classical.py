"""The classical segmenter's failure modes on dermoscopy: the dark frame, vignetting, pale rims, size."""

from pathlib import Path

import numpy as np
import pytest

from dermsynth import segment
from dermsynth.data import demo

CLASSES = ["benign", "malignant"]
SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"


def _dermoscope(h=150, w=200, lesion=(0.22, 0.3), core=(120, 75, 55), rim=0.0, seed=0):
    """Skin with strong vignetting inside a black circular frame, a lesion of colour ``core`` at the centre.

    ``rim`` > 0 adds a paler ring of pigment around the dark core (the true outline is the ring's edge).
    Returns the image and the lesion's true extent.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    ry, rx = (yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2)
    r = np.hypot(ry, rx * w / h)  # distance in units of the half height: the scope's circle is round
    skin = np.array([225.0, 175.0, 160.0]) * (1.0 - 0.45 * np.clip(r / 1.2, 0, 1) ** 2)[..., None]
    ell = np.hypot(ry / lesion[0], rx / lesion[1])
    core = np.asarray(core, np.float64)
    img = skin.copy()
    if rim:
        band = ell < 1.0 + rim
        img[band] = 0.5 * skin[band] + 0.5 * core
    inside = ell < 1.0
    img[inside] = core
    img += rng.normal(0, 4, img.shape)
    img[r > 1.15] = 8.0  # the dermoscope's frame
    truth = ell < 1.0 + rim
    return np.clip(img, 0, 255).astype(np.uint8), truth


@pytest.mark.parametrize("core", [(120, 75, 55), (170, 120, 105)])
def test_classical_ignores_dark_frame_and_vignetting(core):
    # a small lesion: Otsu on the raw channel splits bright centre from shaded skin instead
    img, truth = _dermoscope(lesion=(0.12, 0.16), core=core)
    m = segment.classical_mask(img, {"dilate_radius": 0})
    assert segment.dice(m, truth) > 0.9, segment.dice(m, truth)
    assert not m[:10, :10].any() and not m[-10:, -10:].any()  # the black corners are not lesion


def test_classical_keeps_the_pale_rim():
    img, truth = _dermoscope(lesion=(0.18, 0.24), rim=0.35)
    m = segment.classical_mask(img, {"dilate_radius": 0})
    assert segment.dice(m, truth) > 0.85, segment.dice(m, truth)
    plain = segment.classical_mask(img, {"dilate_radius": 0, "grow": 0})
    assert m.sum() > plain.sum()  # the hysteresis step is what reaches the rim


def test_classical_large_image_is_computed_small_and_upsampled():
    im, _ = demo.make_image(3, "isic", "benign", 0, 0, 96, "isic", CLASSES, False)
    truth = demo.lesion_mask(3, "isic", "benign", 0, 0, 96, CLASSES)
    big = np.kron(im, np.ones((4, 4, 1), np.uint8))  # 384 px: above WORK_SIDE
    assert min(big.shape[:2]) > segment.WORK_SIDE
    m = segment.classical_mask(big, {"dilate_radius": 0})
    assert m.shape == big.shape[:2] and m.dtype == bool
    up = np.ones((4, 4), bool)
    assert segment.dice(m, np.kron(truth, up)) > 0.9
    small = segment.classical_mask(im, {"dilate_radius": 0})
    assert segment.dice(m, np.kron(small, up)) > 0.95  # the same outline at either size


def test_classical_knobs_switch_off_and_hull_is_convex():
    im, _ = demo.make_image(3, "ham10000", "benign", 2, 0, 96, "ham10000", CLASSES, False)
    truth = demo.lesion_mask(3, "ham10000", "benign", 2, 0, 96, CLASSES)
    off = {"dilate_radius": 0, "hair_radius": 0, "background_order": 0, "grow": 0, "smooth_sigma": 0}
    assert segment.dice(segment.classical_mask(im, off), truth) > 0.85
    base = segment.classical_mask(im, {"dilate_radius": 0})
    hull = segment.classical_mask(im, {"dilate_radius": 0, "convex_hull": True})
    assert hull.sum() >= base.sum() and not (base & ~hull).any()


@pytest.mark.parametrize("shape", [(40, 40, 3), (150, 200, 3)])
def test_classical_flat_and_frame_only_images_give_empty_masks(shape):
    assert not segment.classical_mask(np.full(shape, 128, np.uint8)).any()
    black = np.zeros(shape, np.uint8)
    assert not segment.classical_mask(black).any()
