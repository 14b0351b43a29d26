"""Same-lesion pairs by descriptor similarity: re-photographs, calibration, chaining guard, config."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from dermsynth import io, lesion_match, splits
from dermsynth.errors import ConfigError

SIFT = {"features": "sift", "shortlist": 3}


def rephotograph(rgb: np.ndarray, angle: float, zoom: float, gain: float, gamma: float) -> np.ndarray:
    """The same lesion photographed again: rotated, zoomed in on the centre, re-lit."""
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, zoom)
    out = cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    out = 255.0 * (np.clip(out.astype(np.float64) * gain, 0, 255) / 255.0) ** gamma
    return out.round().astype(np.uint8)


@pytest.fixture
def photos(tmp_path, shared_data):
    """One real lesion twice (original + re-photograph) and six other real lesions, at 300 px."""
    src = sorted((shared_data / "isic" / "benign").glob("*.jpg"))[:7]
    rgbs = [np.asarray(io.load_rgb(p).resize((300, 225))) for p in src]
    rgbs.insert(1, rephotograph(rgbs[0], angle=25, zoom=1.25, gain=1.15, gamma=0.9))
    paths = []
    for k, rgb in enumerate(rgbs):
        p = tmp_path / f"img{k}.jpg"
        cv2.imwrite(str(p), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def test_rephotograph_pairs_only_itself(photos):
    pairs = lesion_match.find_pairs(photos, SIFT)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1)]
    assert pairs[0][2] >= lesion_match.validate(SIFT)["min_inliers"]


def test_rephotograph_one_split_group_with_leakage_row(tmp_path, photos):
    rows = [
        {"path": str(p), "label": "benign", "source_id": f"ISIC_{k}", "lesion_id": f"L{k}", "sha256": ""}
        for k, p in enumerate(photos)
    ]
    import pandas as pd

    for seed in range(4):
        out = splits.make_splits(
            {"d": pd.DataFrame(rows)},
            {"d": {"val": 0.3, "test": 0.3}},
            seed,
            tmp_path / "s.csv",
            tmp_path / "l.csv",
            embedding=SIFT,
        )
        assert out["split"].iat[0] == out["split"].iat[1]
    assert out["split"].nunique() > 1  # the others are free to go anywhere
    leak = io.read_csv(tmp_path / "l.csv")
    assert list(leak.columns) == splits.LEAKAGE_COLUMNS
    assert leak[["source_id_a", "source_id_b", "kind", "action"]].values.tolist() == [
        ["ISIC_0", "ISIC_1", "embedding", "grouped"]
    ]
    assert float(leak["similarity"].iat[0]) >= lesion_match.validate(SIFT)["min_inliers"]
    # off by default: the pHash path alone does not see a rotated, zoomed copy
    splits.make_splits({"d": pd.DataFrame(rows)}, {"d": {}}, 0, tmp_path / "s.csv", tmp_path / "l.csv")
    assert len(io.read_csv(tmp_path / "l.csv")) == 0


def test_calibrate_by_hand():
    # the counts as observed (tail=False); the fitted tail is tested below
    # scores best first: pos .9, neg .8, pos .7, neg .6, pos .5; 5 same-lesion pairs exist in all
    s = [0.5, 0.9, 0.6, 0.8, 0.7]
    pos = [True, True, False, False, True]
    # 1,000 images, 1 false pair allowed: .7 keeps one negative (.8), .6 would be the second
    got = lesion_match.calibrate(s, pos, n_images=1000, n_positive=5, false_per_1000=1, tail=False)
    assert got == {"threshold": 0.7, "recall": 2 / 5, "false_pairs": 1, "false_pairs_per_1000_images": 1.0}
    # 999 images: no false pair allowed, only .9 stays
    got = lesion_match.calibrate(s, pos, n_images=999, n_positive=5, false_per_1000=1, tail=False)
    assert (got["threshold"], got["recall"], got["false_pairs"]) == (0.9, 1 / 5, 0)
    # 3,000 images: 3 allowed, every score passes
    got = lesion_match.calibrate(s, pos, n_images=3000, n_positive=5, false_per_1000=1, tail=False)
    assert (got["threshold"], got["recall"], got["false_pairs"]) == (0.5, 3 / 5, 2)


def test_calibrate_counts_only_proven_false_pairs_scaled():
    # .8 is two lesion ids nobody can tell apart (a re-photograph?): not counted; .7 is proven
    # different and, with half of all false pairs provable, stands for two
    s, pos, neg = [0.9, 0.8, 0.7, 0.6], [True, False, False, True], [False, False, True, False]
    got = lesion_match.calibrate(s, pos, 2000, 2, 1.0, negative=neg, false_scale=2.0, tail=False)
    assert (got["threshold"], got["recall"], got["false_pairs"]) == (0.6, 1.0, 2.0)
    got = lesion_match.calibrate(s, pos, 1999, 2, 1.0, negative=neg, false_scale=2.0, tail=False)
    assert (got["threshold"], got["recall"], got["false_pairs"]) == (0.8, 0.5, 0.0)


def test_tail_estimate_sees_the_false_pairs_chance_hides():
    # different-lesion scores fall 4x per step: 64 at >= 6, 16 at >= 7, 4 at >= 8, none seen at 9
    neg = [6] * 48 + [7] * 12 + [8] * 4
    np.testing.assert_allclose(lesion_match.tail_estimate(neg, [6, 7, 8, 9, 10]), [64, 16, 4, 1, 0.25])
    assert lesion_match.tail_estimate([8, 9], [9, 10]).tolist() == [1, 0]  # too few to fit: as seen
    s = neg + [9, 10, 11]
    pos = [False] * len(neg) + [True] * 3
    # 500 images allow 0.5 false pairs: 9 shows none, but one is expected there
    got = lesion_match.calibrate(s, pos, n_images=500, n_positive=3, sigmas=0)
    assert (got["threshold"], got["recall"]) == (10, 2 / 3)
    assert got["false_pairs"] == pytest.approx(0.25)
    # with one Poisson standard deviation on top, 10 (0.25 + 0.5) is over the budget too
    got = lesion_match.calibrate(s, pos, n_images=500, n_positive=3)
    assert (got["threshold"], got["recall"]) == (11, 1 / 3)
    assert got["false_pairs"] == pytest.approx(0.0625 + 0.25)
    got = lesion_match.calibrate(s, pos, n_images=500, n_positive=3, tail=False)
    assert (got["threshold"], got["false_pairs"]) == (9, 0)


def _disc(size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    rgb = np.full((h, w, 3), (225, 180, 170), np.uint8)
    rgb[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2] = (90, 50, 40)
    return rgb


def test_lesion_view_puts_the_lesion_at_one_size():
    # one lesion from afar (radius 12, off-centre) and close up (radius 40): one size in the view
    sizes = []
    for centre, radius in (((60, 50), 12), ((100, 75), 40)):
        view, valid = lesion_match.lesion_view(_disc((150, 200), centre, radius), 128, 0.25, 4)
        dark = view.sum(2) < 300
        ys, xs = np.nonzero(dark & (valid > 0))
        assert abs(xs.mean() - 63.5) < 2 and abs(ys.mean() - 63.5) < 2
        sizes.append(xs.max() - xs.min() + 1)
    # the classical mask takes in a rim of the edge, so the disc is a little under 128 / 1.5
    assert abs(sizes[0] - sizes[1]) <= 4 and 0.85 * 128 / 1.5 < sizes[0] < 128 / 1.5 + 2
    # a tiny lesion is enlarged at most max_upscale times; the outside of the image is not valid
    view, valid = lesion_match.lesion_view(_disc((150, 200), (100, 75), 8), 128, 0.25, 3)
    ys, xs = np.nonzero((view.sum(2) < 300) & (valid > 0))
    assert xs.max() - xs.min() + 1 == pytest.approx(17 * 3, abs=4)
    # no lesion found: the whole image, fitted; the outside of the image is not valid
    view, valid = lesion_match.lesion_view(np.full((150, 200, 3), 200, np.uint8), 128, 0.25, 3)
    assert (valid[64] > 0).sum() == pytest.approx(200 * 128 / 300, abs=8)
    assert valid[0, 0] == 0 and valid[64, 64] == 255


def test_inliers_refuse_an_implausible_zoom():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 200, (40, 2)).astype(np.float32)
    desc = rng.uniform(0, 1, (40, 128)).astype(np.float32)
    a = (pts, desc)
    b = (pts * 0.1 + 5, desc)  # every match agrees, but on a tenth of the size: RANSAC collapsing
    assert lesion_match.inliers(a, b, max_zoom=4) == 0
    assert lesion_match.inliers(a, b, max_zoom=20) == 40
    assert lesion_match.inliers(a, (pts * 1.5 + 5, desc), max_zoom=4) == 40


def test_votes_rank_images_that_share_keypoints_first():
    rng = np.random.default_rng(1)
    descs = [rng.uniform(0, 1, (30, 128)).astype(np.float32) for _ in range(6)]
    descs[4] = np.concatenate([descs[1][:10] + 0.01, descs[4][10:]])  # 1 and 4 share 10 structures
    v = lesion_match.votes(descs, neighbours=2, checks=64, threads=2)
    assert (v != v.T).nnz == 0
    dense = v.toarray()
    assert dense[1].argmax() == 4 and dense[4].argmax() == 1
    # the randomised kd-trees are the same whatever drew from OpenCV's RNG before
    cv2.randu(np.zeros(100, np.float32), 0, 1)
    assert (lesion_match.votes(descs, neighbours=2, checks=64) != v).nnz == 0
    ii, jj = lesion_match.shortlist(v, 1)
    assert (1, 4) in set(zip(ii.tolist(), jj.tolist(), strict=True))
    assert len(ii) <= 6


def test_mutual_knn_and_group_cap():
    # 0-1 mutual nearest; 2's nearest is 1 but 1's is 0: 1-2 is not mutual at k=1
    emb = np.array([[1, 0, 0], [0.99, 0.14, 0], [0.9, 0.44, 0], [0, 0, 1]], np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ii, jj, ss = lesion_match.candidates(emb, k=1)
    assert list(zip(ii.tolist(), jj.tolist(), strict=True)) == [(0, 1)]
    assert ss[0] == pytest.approx(float(emb[0] @ emb[1]), abs=1e-6)
    ii, jj, _ = lesion_match.candidates(emb, k=2)
    assert {(0, 1), (1, 2), (0, 2)} == set(zip(ii.tolist(), jj.tolist(), strict=True))
    # a chain 0-1-2-3 stops at 3 images: the weakest link that would make 4 is dropped
    got = lesion_match.capped_pairs([0, 1, 2], [1, 2, 3], [0.9, 0.8, 0.7], 0.5, n=4, max_group=3)
    assert got == [(0, 1, 0.9), (1, 2, 0.8)]
    got = lesion_match.capped_pairs([0, 2], [1, 3], [0.9, 0.4], 0.5, n=4, max_group=3)
    assert got == [(0, 1, 0.9)]


def test_colour_descriptor_ignores_rotation_and_flip(shared_data):
    rgb = np.asarray(io.load_rgb(shared_data / "ham10000_200x150" / "images" / "ISIC_0024306.jpg"))
    a = lesion_match.colour_descriptor(rgb)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5)
    for t in (np.rot90(rgb), rgb[:, ::-1], rgb[::-1]):
        assert float(a @ lesion_match.colour_descriptor(np.ascontiguousarray(t))) == pytest.approx(
            1.0, abs=1e-6
        )


@pytest.mark.parametrize(
    "cfg, key",
    [
        ({"features": "pixels"}, "features"),
        ({"k": 0}, "k"),
        ({"max_group": 1}, "max_group"),
        ({"min_similarity": 1.5}, "min_similarity"),
        ({"threshold": 0.9}, "threshold"),
    ],
)
def test_config_validation(cfg, key):
    with pytest.raises(ConfigError, match=key):
        lesion_match.validate(cfg)
    assert lesion_match.validate({})["features"] in lesion_match.FEATURES


def test_network_features_go_through_quality_extractor(photos):
    cfg = lesion_match.validate({"features": "tiny", "k": 1, "min_similarity": -1.0})
    emb, kps = lesion_match.describe(photos, cfg, device="cpu")
    assert kps is None and emb.shape[0] == len(photos)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # every mutual nearest pair passes a threshold of -1; each image in at most one such pair
    pairs = lesion_match.find_pairs(photos, cfg, device="cpu")
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    nearest = sim.argmax(1)
    assert [(i, j) for i, j, _ in pairs] == [
        (i, int(j)) for i, j in enumerate(nearest) if nearest[j] == i and i < j
    ]


def test_sift_views_on_threads_in_a_fresh_interpreter(shared_data):
    # scikit-image loads submodules lazily: threads segmenting at once found skimage.morphology
    # half made (about one run in two before describe() imported it first)
    import subprocess
    import sys

    code = (
        "import glob, sys; sys.path.insert(0, sys.argv[1]);"
        "from dermsynth import lesion_match as lm;"
        "paths = sorted(glob.glob(sys.argv[2] + '/*.jpg'))[:24];"
        "_, kps = lm.describe(paths, lm.validate({}), threads=4);"
        "print(sum(len(v[1][0]) > 0 for v in kps))"
    )
    images = str(shared_data / "ham10000_200x150" / "images")
    workflow = str(Path(lesion_match.__file__).parents[1])
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", code, workflow, images], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stderr.strip().splitlines()[-1]
        assert int(out.stdout.strip()) == 24  # every lesion view has keypoints
