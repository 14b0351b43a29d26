"""Lesion masks: classical segmentation against known outlines, shape statistics, the stage's rejects."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermsynth import io, segment
from dermsynth.data import demo

CLASSES = ["benign", "malignant"]
HAM = Path("/work/shared/data/ham10000_200x150")


def test_classical_reaches_dice_09_on_demo_lesions():
    d = []
    for dom in ("isic", "ham10000"):
        for lab in CLASSES:
            for i in range(8):
                im, _ = demo.make_image(3, dom, lab, i, 0, 96, dom, CLASSES, False)
                truth = demo.lesion_mask(3, dom, lab, i, 0, 96, CLASSES)
                d.append(segment.dice(segment.classical_mask(im, {"dilate_radius": 0}), truth))
    assert np.mean(d) >= 0.9, np.mean(d)


def test_lesion_mask_is_the_generators_outline():
    im, _ = demo.make_image(5, "isic", "benign", 0, 0, 96, "isic", CLASSES, False)
    m = demo.lesion_mask(5, "isic", "benign", 0, 0, 96, CLASSES)
    gray = im.astype(float).mean(axis=2)
    assert 0.02 < m.mean() < 0.5
    assert gray[m].mean() < gray[~m].mean() - 30  # the lesion is the darker region


@pytest.mark.skipif(not HAM.exists(), reason="shared HAM10000 masks not present")
def test_classical_on_a_few_ham10000_masks():
    ids = sorted(p.name[:12] for p in (HAM / "masks").glob("*.png"))
    ids = list(np.random.default_rng(0).choice(ids, 30, replace=False))
    preds, truths = [], []
    for i in ids:
        preds.append(
            segment.classical_mask(np.asarray(Image.open(HAM / "images" / f"{i}.jpg").convert("RGB")))
        )
        truths.append(segment.load_mask(HAM / "masks" / f"{i}_segmentation.png"))
    s = segment.score_masks(preds, truths, n_boot=200)
    assert s["dice"]["median"] > 0.8 and s["dice"]["mean"] > 0.65
    assert s["dice"]["lo"] <= s["dice"]["mean"] <= s["dice"]["hi"]
    assert s["iou"]["mean"] <= s["dice"]["mean"]


def test_load_mask_reads_a_reversed_palette_png_as_its_picture(tmp_path):
    truth = np.zeros((30, 40), bool)
    truth[10:20, 12:30] = True
    Image.fromarray(np.where(truth, 255, 0).astype(np.uint8), "L").save(tmp_path / "l.png")
    # index 0 = white, 255 = black: the raw indices are the inverse of what the picture shows
    pal = Image.fromarray(np.where(truth, 0, 255).astype(np.uint8), "P")
    pal.putpalette([c for v in range(255, -1, -1) for c in (v, v, v)])
    pal.save(tmp_path / "p.png")
    assert (np.asarray(Image.open(tmp_path / "p.png")) > 127).mean() > 0.5  # a raw reader sees skin
    assert np.array_equal(segment.load_mask(tmp_path / "l.png"), truth)
    assert np.array_equal(segment.load_mask(tmp_path / "p.png"), truth)


@pytest.mark.skipif(not HAM.exists(), reason="shared HAM10000 masks not present")
def test_every_real_palette_mask_reads_with_the_lesion_inside():
    """The 402 palette masks of the shared HAM10000 copy: read right, the lesion is not the border."""
    palette = [p for p in sorted((HAM / "masks").glob("*.png")) if Image.open(p).mode == "P"]
    assert len(palette) == 402
    border = []
    for p in palette:
        m = segment.load_mask(p)
        border.append(np.concatenate([m[0], m[-1], m[:, 0], m[:, -1]]).mean())
    # a lesion filling the whole frame is rare: most masks have skin all round
    assert np.median(border) < 0.05, np.median(border)


def test_shape_stats_separate_round_from_irregular():
    yy, xx = np.mgrid[0:128, 0:128]
    disk = (yy - 64) ** 2 + (xx - 64) ** 2 < 30**2
    theta = np.arctan2(yy - 64, xx - 50)
    blob = np.hypot(yy - 64, xx - 50) < 25 * (1 + 0.35 * np.cos(theta) + 0.15 * np.cos(7 * theta))
    rgb = np.full((128, 128, 3), 200, np.uint8)
    a, b = segment.shape_stats(rgb, disk), segment.shape_stats(rgb, blob)
    assert a["asymmetry"] < 0.05 < b["asymmetry"]
    assert a["border_irregularity"] < b["border_irregularity"]
    assert a["area_fraction"] == pytest.approx(np.pi * 30**2 / 128**2, rel=0.05)
    assert a["diameter"] == pytest.approx(60 / 128, rel=0.05)
    assert a["colour_variegation"] == 0
    assert np.isnan(segment.shape_stats(rgb, np.zeros_like(disk))["area_fraction"])


def test_segment_set_records_unreadable_and_empty(tmp_path):
    im, _ = demo.make_image(1, "isic", "malignant", 0, 0, 64, "isic", CLASSES, False)
    good = tmp_path / "good.png"
    io.save_png(good, im)
    flat = tmp_path / "flat.png"
    io.save_png(flat, np.full((64, 64, 3), 128, np.uint8))
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    df = pd.DataFrame({"path": [str(good), str(flat), str(bad)], "label": ["malignant"] * 3})
    table = segment.segment_set(
        df,
        tmp_path / "masks",
        tmp_path / "masks.csv",
        tmp_path / "rej.csv",
        "classical",
        "test",
        {"dilate_radius": 0},
    )
    assert list(table["status"]) == ["ok", "empty", "failed"]
    rej = pd.read_csv(tmp_path / "rej.csv")
    assert set(rej["reason"]) == {"unreadable", "empty_mask"}
    assert table.loc[0, "area_fraction"] > 0.05
