"""Centre-crop + resize, per image and over a manifest."""

import numpy as np
import pandas as pd
import pytest

from dermsynth import io
from dermsynth.errors import ConfigError
from dermsynth.imaging import center_square_resize, resize_dataset, square, square_resize


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_center_square_resize_crops_the_centre():
    img = np.zeros((60, 100, 3), np.uint8)
    img[:, 20:80] = 100  # the central 60x60 square
    img[25:35, 45:55] = 255  # marker at the centre
    out = center_square_resize(img, 30)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    assert out.min() >= 80  # nothing of the cropped-off black sides (Lanczos rings a little at the marker)
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
        rows.append(
            {
                "path": io.rel(p),
                "label": "benign",
                "dataset": "d",
                "source_id": f"s{i}",
                "sha256": sha,
                "lesion_id": f"L{i}",
                "width": w,
                "height": h,
                "note": "n",
                "truth_path": "",
            }
        )
    io.write_csv(tmp_path / "in.csv", pd.DataFrame(rows))
    df = resize_dataset(tmp_path / "in.csv", tmp_path / "out", tmp_path / "out.csv", 32, threads=1)
    assert list(df.columns) == list(rows[0])
    back = io.read_csv(tmp_path / "out.csv")
    assert list(back["source_id"]) == ["s0", "s1", "s2"] and list(back["lesion_id"]) == ["L0", "L1", "L2"]
    for r in back.itertuples():
        assert r.path == f"out/{r.path.split('/')[-1]}" and r.path.endswith(".png")
        assert np.asarray(io.load_rgb(r.path)).shape == (32, 32, 3)
        assert (r.width, r.height) == (32, 32) and io.sha256_file(r.path) == r.sha256


def _centroid(mask):
    ys, xs = np.nonzero(mask > 127)
    return np.array([xs.mean() / mask.shape[1], ys.mean() / mask.shape[0]])


@pytest.mark.parametrize("policy", ["crop", "pad"])
def test_square_resize_keeps_real_lesions_centred(shared_data, policy):
    """Real HAM10000 lesion masks (200x150): the lesion centroid moves exactly as the geometry says."""
    ids = ["ISIC_0024306", "ISIC_0024320", "ISIC_0024333", "ISIC_0024400"]
    for i in ids:
        m = np.asarray(io.load_rgb(shared_data / "ham10000_200x150" / "masks" / f"{i}_segmentation.png"))
        img = np.asarray(io.load_rgb(shared_data / "ham10000_200x150" / "images" / f"{i}.jpg"))
        for size in (224, 64):
            out, mout = square_resize(img, size, policy), square_resize(m, size, policy)
            assert out.shape == mout.shape == (size, size, 3) and out.dtype == np.uint8
            cx, cy = _centroid(m[..., 0])
            h, w = m.shape[:2]
            if policy == "crop":  # 150x150 from the middle: x shifts by 25 px, y unchanged
                want = np.array([(cx * w - (w - h) / 2) / h, cy])
            else:  # on a 200x200 square: y shifts by 25 px, x unchanged
                want = np.array([cx, (cy * h + (w - h) / 2) / w])
            assert np.abs(_centroid(mout[..., 0]) - want).max() < 0.02
            # the lesion of a centred dermoscopy image stays near the middle
            assert np.abs(_centroid(mout[..., 0]) - 0.5).max() < 0.25


def test_pad_policy_keeps_everything_and_fills_with_edge_colour():
    img = np.full((40, 100, 3), (200, 150, 120), np.uint8)
    img[15:25, 45:55] = 0
    sq = square(img, "pad")
    assert sq.shape == (100, 100, 3)
    assert (sq[:30] == (200, 150, 120)).all() and (sq[70:] == (200, 150, 120)).all()
    assert (sq[45:55, 45:55] == 0).all()  # the centre stays the centre
    with pytest.raises(ConfigError, match="crop, pad"):
        square(img, "stretch")


def test_downscaling_is_antialiased():
    """A zone plate above the new Nyquist frequency must average to grey, not alias into rings."""
    n = 1024
    y, x = np.mgrid[0:n, 0:n] / n
    zp = (127.5 + 127.5 * np.cos(np.pi * n * 0.9 * ((x - 0.5) ** 2 + (y - 0.5) ** 2) * 2)).astype(np.uint8)
    out = square_resize(np.repeat(zp[..., None], 3, 2), 128).astype(float)
    yy, xx = np.mgrid[0:128, 0:128] / 128
    ring = (np.hypot(xx - 0.5, yy - 0.5) > 0.3) & (np.hypot(xx - 0.5, yy - 0.5) < 0.45)
    assert out[ring].std() < 2 and abs(out[ring].mean() - 127.5) < 3
