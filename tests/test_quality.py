"""Distribution metrics: FID/KID, precision/recall/density/coverage, MS-SSIM diversity, n/a on tiny sets."""

import numpy as np
import pytest
import torch

from dermsynth import quality
from dermsynth.data import demo
from dermsynth.errors import ModelNotFoundError

CLASSES = ["benign", "malignant"]


@pytest.fixture(scope="module")
def images():
    torch.set_num_threads(1)
    ims = [
        demo.make_image(1, "isic", lab, i, 0, 64, "isic", CLASSES, False)[0]
        for lab in CLASSES
        for i in range(16)
    ]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def encoder():
    return quality.TinyEncoder(seed=0, size=64)


def _noisy(x, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (x.float() + sigma * torch.randn(x.shape, generator=g)).clamp(0, 255).to(torch.uint8)


def test_fid_kid_of_a_set_with_itself_is_zero_and_grow_with_noise(images, encoder):
    f = encoder(images).double().numpy()
    assert quality.fid(f, f) < 1e-6
    assert abs(quality.kid(f, f, subsets=5)[0]) < 1e-3
    fids, kids = [], []
    for sigma in (10, 30, 80):
        fn = encoder(_noisy(images, sigma)).double().numpy()
        fids.append(quality.fid(f, fn))
        kids.append(quality.kid(f, fn, subsets=5)[0])
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids
    assert kids[-1] > kids[0] and kids[-1] > 10 * abs(quality.kid(f, f, subsets=5)[0])
    assert fids[0] > 0


def test_encoder_is_deterministic(images):
    a = quality.TinyEncoder(seed=3)(images[:4])
    b = quality.TinyEncoder(seed=3)(images[:4])
    assert torch.allclose(a, b)


def test_precision_drops_when_shifted_recall_drops_when_collapsed():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 16))
    same = rng.normal(size=(200, 16))
    base = quality.prdc(real, same, k=5)
    assert base["precision"] > 0.8 and base["recall"] > 0.8
    shifted = quality.prdc(real, same + 2.5, k=5)
    assert shifted["precision"] < base["precision"] - 0.5
    collapsed = quality.prdc(real, np.repeat(same[:4], 50, axis=0), k=5)
    assert collapsed["recall"] < base["recall"] - 0.5
    assert collapsed["coverage"] < base["coverage"] - 0.5
    assert collapsed["precision"] > 0.5  # the few images it keeps are still realistic


def test_ms_ssim_diversity_sees_duplicates(images):
    varied = quality.pairwise_ms_ssim(images, max_pairs=40)
    dup = quality.pairwise_ms_ssim(images[:2].repeat(5, 1, 1, 1), max_pairs=40)
    assert varied.mean() < 0.9
    assert (dup >= 0.95).mean() > 0.4  # same-image pairs are exact duplicates
    assert quality._ms_ssim_betas(64) == pytest.approx(quality._ms_ssim_betas(64))
    assert len(quality._ms_ssim_betas(64)) == 3 and len(quality._ms_ssim_betas(512)) == 5


def test_three_images_give_na_not_a_crash(images, encoder):
    f = encoder(images).double().numpy()
    res = quality.compare(f, f[:3], images[:3], images, {"min_images": 10})
    assert res["status"] == "n/a" and res["fid"] is None and "3" in res["reason"]
    # a set just above the minimum: KID's subset shrinks to fit
    res = quality.compare(f, f[:12], images[:12], None, {"min_images": 10, "kid_subsets": 5})
    assert res["status"] == "ok" and res["kid_subset_size"] == 12


def test_inception_offline_is_one_line(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        quality.inception_weights_path(str(tmp_path / "missing.pth"))
    msg = str(e.value)
    assert "\n" not in msg and quality.INCEPTION_FILE in msg and "quality.inception_weights" in msg
