"""Centre-crop + resize, per image and over a manifest."""

import numpy as np
import pandas as pd
import pytest

from dermsynth import io
from dermsynth.errors import ConfigError
from dermsynth.imaging import center_square_resize, resize_dataset


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_center_square_resize_crops_the_centre():
    img = np.zeros((60, 100, 3), np.uint8)
    img[:, 20:80] = 100  # the central 60x60 square
    img[25:35, 45:55] = 255  # marker at the centre
    out = center_square_resize(img, 30)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    assert out.min() >= 90  # nothing of the cropped-off black sides
    assert out[13:17, 13:17].mean() > 240 and out[:5].max() < 200  # marker still centred
    tall = center_square_resize(np.zeros((100, 40, 3), np.uint8), 40)
    assert tall.shape == (40, 40, 3)


def test_center_square_resize_grows_and_keeps_same_size():
    y, x = np.mgrid[0:20, 0:20]
    img = np.stack([x * 12, y * 12, (x + y) * 6], -1).astype(np.uint8)
    assert np.array_equal(center_square_resize(img, 20), img)
    big = center_square_resize(img, 80)
    assert big.shape == (80, 80, 3)
    # up then down (area) returns close to the original
    back = center_square_resize(big, 20)
    assert np.abs(back.astype(int) - img).mean() < 2
    with pytest.raises(ConfigError):
        center_square_resize(img, 0)


def test_resize_dataset_updates_geometry_keeps_other_columns(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for i, (h, w) in enumerate([(40, 60), (90, 30), (16, 16)]):
        p = tmp_path / "in" / f"img{i}.png"
        sha = io.save_png(p, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        rows.append({"path": io.rel(p), "label": "benign", "dataset": "d", "source_id": f"s{i}",
                     "sha256": sha,
                     "lesion_id": f"L{i}", "width": w, "height": h, "note": "n", "truth_path": ""})
    io.write_csv(tmp_path / "in.csv", pd.DataFrame(rows))
    df = resize_dataset(tmp_path / "in.csv", tmp_path / "out", tmp_path / "out.csv", 32, threads=1)
    assert list(df.columns) == list(rows[0])
    back = io.read_csv(tmp_path / "out.csv")
    assert list(back["source_id"]) == ["s0", "s1", "s2"] and list(back["lesion_id"]) == ["L0", "L1", "L2"]
    for r in back.itertuples():
        assert r.path == f"out/{r.path.split('/')[-1]}" and r.path.endswith(".png")
        assert np.asarray(io.load_rgb(r.path)).shape == (32, 32, 3)
        assert (r.width, r.height) == (32, 32) and io.sha256_file(r.path) == r.sha256
