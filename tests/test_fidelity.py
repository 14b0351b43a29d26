"""Metrics beside FID: Fréchet distance, CMMD, the classifier two-sample test, DINOv2/CLIP extractors."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dermsynth import embeddings, fidelity, quality, tiny
from dermsynth.data import demo

CLASSES = ["benign", "malignant"]


def _with_moments(z: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """``z`` moved so that its sample mean and (n - 1) covariance are exactly ``mean`` and ``cov``."""
    z = z - z.mean(axis=0)
    white = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)
    return white @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_equals_the_gaussian_formula_by_hand():
    rng = np.random.default_rng(0)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.5, 1.0, 0.5])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    a = _with_moments(rng.normal(size=(300, 3)), mu_a, np.diag(var_a))
    b = _with_moments(rng.normal(size=(200, 3)), mu_b, np.diag(var_b))
    # diagonal covariances commute: tr sqrt(Sa Sb) = sum sqrt(var_a var_b)
    by_hand = np.sum((mu_a - mu_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
    assert fidelity.frechet_distance(a, b) == pytest.approx(by_hand, rel=1e-9)
    assert fidelity.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # full covariances: the same number as torchmetrics' FID on the same features
    x, y = rng.normal(size=(120, 6)), rng.normal(size=(100, 6)) @ rng.normal(size=(6, 6)) + 0.3
    assert fidelity.frechet_distance(x, y) == pytest.approx(quality.fid(x, y), rel=1e-6)


def _mmd_by_hand(x, y, sigma=10.0):
    def k(p, q):
        return np.exp(-np.sum((p[:, None, :] - q[None, :, :]) ** 2, axis=-1) / (2 * sigma**2))

    return 1000 * (k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def test_cmmd_is_the_biased_rbf_mmd_times_1000():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 8)) * 3
    y = rng.normal(size=(30, 8)) * 3 + 1.0
    assert fidelity.cmmd(x, y) == pytest.approx(_mmd_by_hand(x, y), rel=1e-9)
    assert fidelity.cmmd(x, y, block=7) == pytest.approx(fidelity.cmmd(x, y), rel=1e-12)
    assert fidelity.cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    shifts = [fidelity.cmmd(x, x + s) for s in (0.5, 2.0, 8.0)]
    assert 0 < shifts[0] < shifts[1] < shifts[2]


def test_c2st_auroc_is_half_for_one_distribution_and_one_for_two():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(150, 16)), rng.normal(size=(150, 16))
    same = fidelity.c2st(a, b, bootstrap=300, seed=0)
    assert abs(same["c2st_auroc"] - 0.5) < 0.1
    assert same["c2st_lo"] < 0.5 < same["c2st_hi"]
    far = fidelity.c2st(a, b + 1.5, bootstrap=300, seed=0)
    assert far["c2st_auroc"] > 0.97 and far["c2st_lo"] > 0.9
    assert fidelity.c2st(a, b + 1.5, bootstrap=300, seed=0) == far  # seeded
    # a shift in one feature of 16 is found too, and in unequal set sizes
    c = rng.normal(size=(90, 16))
    c[:, 3] += 2.0
    assert fidelity.c2st(a, c, bootstrap=0)["c2st_auroc"] > 0.85
    assert fidelity.c2st(a, c, bootstrap=0)["c2st_lo"] is None


def test_c2st_ci_covers_half_under_the_null_in_high_dimension():
    # 256 features, 60 + 60 images: where pooled k-fold scores drift below 0.5
    runs = []
    for s in range(20):
        rng = np.random.default_rng(50 + s)
        runs.append(
            fidelity.c2st(rng.normal(size=(60, 256)), rng.normal(size=(60, 256)), bootstrap=200, seed=s)
        )
    assert abs(np.mean([r["c2st_auroc"] for r in runs]) - 0.5) < 0.05
    assert np.mean([r["c2st_lo"] <= 0.5 <= r["c2st_hi"] for r in runs]) >= 0.85


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {k: tiny.build(k, root / f"tiny-{k}", seed=0, image_size=32) for k in embeddings.KINDS}


@pytest.fixture(scope="module")
def images():
    torch.set_num_threads(1)
    ims = [
        demo.make_image(1, "isic", lab, i, 0, 64, "isic", CLASSES, False)[0]
        for lab in CLASSES
        for i in range(6)
    ]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("kind", embeddings.KINDS)
def test_tiny_embeddings_load_offline_with_their_processor(kind, tiny_models, images):
    ex = quality.load_extractor(kind, model_dir=tiny_models[kind], device="cpu")
    f = ex(images)
    assert tuple(f.shape) == (len(images), 32) and ex.size == 32 and torch.isfinite(f).all()
    if kind == "clip":
        assert torch.allclose(f.norm(dim=1), torch.ones(len(images)), atol=1e-5)
    # the torch preprocessing matches the saved image processor's (PIL bicubic, within resampling)
    from transformers import AutoImageProcessor

    ref = AutoImageProcessor.from_pretrained(tiny_models[kind])
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images[:3]]
    want = ref(pil, return_tensors="pt")["pixel_values"]
    got = embeddings.preprocess_of(kind, str(tiny_models[kind]))(images[:3])
    assert got.shape == want.shape
    assert (got - want).abs().mean() < 0.05


def test_preprocess_resizes_the_shortest_edge_then_crops_the_centre():
    p = embeddings.Preprocess(resize=8, crop=4, mean=(0.0,) * 3, std=(1.0,) * 3)
    x = torch.zeros((1, 3, 8, 8), dtype=torch.uint8)
    x[..., 2:6, 2:6] = 255  # the centre 4 x 4 is white, the border black
    assert torch.equal(p(x), torch.ones((1, 3, 4, 4)))


def _write_set(folder, label, n, shift, seed):
    paths = []
    for i in range(n):
        im = demo.make_image(seed, "isic", label, i, 0, 32, "isic", CLASSES, False)[0].astype(np.int16)
        path = folder / f"{label}_{seed}_{i}.png"
        Image.fromarray(np.clip(im + shift, 0, 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_quality_table_has_the_new_columns_and_they_match_the_metrics(tmp_path, tiny_models):
    real = _write_set(tmp_path, "benign", 16, 0, 1)
    fake = _write_set(tmp_path, "benign", 12, 60, 2)
    pd.DataFrame({"label": "benign", "path": real}).to_csv(tmp_path / "train.csv", index=False)
    synth = pd.DataFrame({"label": "benign", "sampler": "euler", "path": fake})
    synth.to_csv(tmp_path / "synth.csv", index=False)
    cfg = {"features": "tiny", "image_size": 32, "min_images": 6, "kid_subsets": 3, "max_pairs": 20}
    cfg["c2st"] = {"bootstrap": 50}
    models = {k: str(v) for k, v in tiny_models.items()}
    res = quality.quality_job(
        [tmp_path / "train.csv"], tmp_path / "synth.csv", "benign", "euler", tmp_path / "q.json", cfg,
        run="r", device="cpu", feature_models=models,
    )  # fmt: skip
    quality.reference_job(
        [tmp_path / "train.csv"], {}, ["benign"], tmp_path / "ref.json", {**cfg, "gap_datasets": []},
        device="cpu", feature_models=models,
    )  # fmt: skip
    # the row's numbers are the metrics of the extracted features
    dino = quality.load_extractor("dinov2", model_dir=models["dinov2"], device="cpu")
    fr, ff = quality.extract(real, dino), quality.extract(fake, dino)
    assert res["fd_dinov2"] == pytest.approx(fidelity.frechet_distance(fr, ff), rel=1e-5)
    assert res["c2st_auroc"] == pytest.approx(fidelity.c2st(fr, ff, 0.5, 0.1, 0, 0.95, 0)["c2st_auroc"])
    assert res["c2st_lo"] <= res["c2st_auroc"] <= res["c2st_hi"]
    clip = quality.load_extractor("clip", model_dir=models["clip"], device="cpu")
    want = fidelity.cmmd(quality.extract(real, clip), quality.extract(fake, clip))
    assert res["cmmd_clip"] == pytest.approx(want, rel=1e-4) and res["cmmd_clip"] > 0
    df = quality.section_quality(
        tmp_path / "ref.json", [tmp_path / "q.json"], tmp_path / "t.csv", tmp_path / "s.md", cfg
    )
    assert set(fidelity.MODERN) <= set(df.columns) and "fid" in df.columns
    syn = df[df["kind"] == "synthetic"].iloc[0]
    floor = df[df["kind"] == "real_floor"].iloc[0]
    assert syn["fd_dinov2"] == pytest.approx(res["fd_dinov2"])
    assert floor["status"] == "ok" and floor["coverage_dinov2"] is not None
    # the shifted set is further from the real one than one real half from the other
    assert syn["cmmd_clip"] > floor["cmmd_clip"] and syn["c2st_auroc"] > floor["c2st_auroc"]
    md = (tmp_path / "s.md").read_text()
    assert "### Beside FID" in md and "| cmmd_clip |" in md and "0.5" in md
    assert f"{syn['c2st_auroc']:.3f} [{syn['c2st_lo']:.3f}, {syn['c2st_hi']:.3f}]" in md
    gap = json.loads((tmp_path / "ref.json").read_text())["rows"][1]
    assert gap["status"] == "n/a" and gap["cmmd_clip"] is None


def test_kinds_collects_every_extractor_a_job_loads():
    assert fidelity.kinds({"features": "tiny"}) == ["tiny", "dinov2", "clip"]
    assert fidelity.kinds({"features": "tiny", "extra_features": [], "c2st": {"features": "tiny"}}) == [
        "tiny"
    ]
    off = {"features": "inception", "extra_features": ["clip"], "c2st": {"activate": False}}
    assert fidelity.kinds(off) == ["inception", "clip"]
