import json

import numpy as np
import pandas as pd
import pytest
import torch

from dermsynth import classify, evaluation, io, metrics
from dermsynth.errors import ConfigError, ModelNotFoundError

CLASSES = ["benign", "malignant"]
SIZE = 32


def _disc(bright: bool, rng: np.random.Generator) -> np.ndarray:
    """Noisy skin-toned square with a dark (benign) or bright (malignant) disc at a random place."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.uniform(11, 21, 2)
    r = rng.uniform(6, 10)
    img = np.array([190, 150, 130], np.float32) + rng.normal(0, 10, (SIZE, SIZE, 3))
    disc = np.hypot(yy - cy, xx - cx) < r
    img[disc] = (250, 245, 240) if bright else (60, 40, 30)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _make_set(root, n, seed, origin="real"):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = CLASSES[i % 2]
        p = root / f"{label}_{seed}_{i}.png"
        sha = io.save_png(p, _disc(label == "malignant", rng))
        rows.append(
            {
                "path": str(p),
                "label": label,
                "dataset": "toy",
                "source_id": p.stem,
                "sha256": sha,
                "origin": origin,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    train = pd.concat(
        [_make_set(root, 48, 1, "real"), _make_set(root, 16, 2, "synthetic")], ignore_index=True
    )
    val = _make_set(root, 24, 3)
    test = _make_set(root, 32, 4)
    return train, val, test


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from transformers import (
        MobileNetV2Config,
        MobileNetV2ForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vit = root / "vit"
    ViTForImageClassification(
        ViTConfig(
            image_size=SIZE,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        )
    ).save_pretrained(vit)
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(vit)
    mnv2 = root / "mnv2"
    MobileNetV2ForImageClassification(
        MobileNetV2Config(depth_multiplier=0.35, image_size=SIZE)
    ).save_pretrained(mnv2)
    return {"vit": str(vit), "mobilenet_v2": str(mnv2)}


def _cfg(**kw):
    cfg = {
        "image_size": SIZE,
        "epochs": 8,
        "batch_size": 16,
        "learning_rate": 2e-3,
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "mixed_precision": "fp16",
        "early_stopping_patience": 3,
        "augment": {"hflip": True, "vflip": True, "rotate90": True, "color_jitter": 0.1},
    }
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("arch", ["vit", "mobilenet_v2"])
def test_train_learns_separable_problem(arch, data, tiny_models, tmp_path):
    train, val, test = data
    out = tmp_path / arch
    s = classify.train(
        arch, tiny_models[arch], train, val, out, _cfg(), seed=0, classes=CLASSES, threads=1, device="cpu"
    )
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_auroc",
        "lr",
        "seconds",
        "train_seconds",
    ]
    assert (hist["train_seconds"] <= hist["seconds"]).all()  # the steps alone, without validation
    assert hist["val_accuracy"].max() >= 0.9, hist
    assert s["best_epoch"] == int(hist.loc[hist["val_loss"].idxmin(), "epoch"])
    assert s["n_train"] == 64 and s["n_val"] == 24 and s["n_synthetic"] == 16 and s["device"] == "cpu"
    assert (out / "model" / "model.safetensors").exists()
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["arch"] == arch and summary["mixed_precision"] == "no"  # fp16 only on CUDA

    # the saved model is the best epoch: its validation accuracy matches that epoch's history row
    p_val = classify.predict(out, val, CLASSES, batch_size=7, threads=1, device="cpu")
    y_val = (val["label"] == "malignant").to_numpy()
    best_row = hist.set_index("epoch").loc[s["best_epoch"]]
    assert np.mean((p_val >= 0.5) == y_val) == pytest.approx(best_row["val_accuracy"], abs=1e-9)

    res = evaluation.evaluate(
        out / "model",
        test,
        CLASSES,
        tmp_path / "eval.json",
        tmp_path / "pred.csv",
        n_boot=200,
        seed=0,
        meta={"model": arch, "regime": "real", "seed": 0, "testset": "toy"},
        threads=1,
        device="cpu",
        specificity_targets=(0.9, 0.95),
    )
    pred = pd.read_csv(tmp_path / "pred.csv")
    # operating points: the threshold comes from the validation split's scores, written by train()
    val_pred = pd.read_csv(out / classify.VAL_PREDICTIONS)
    assert np.allclose(val_pred["score"], p_val, atol=1e-6) and list(val_pred["y"]) == list(y_val.astype(int))
    for point, target in zip(res["operating_points"], (0.9, 0.95), strict=True):
        t = metrics.threshold_at_specificity(val_pred["y"], val_pred["score"], target)
        assert point["threshold"] == pytest.approx(t)
        yhat = (pred["score"] >= t).astype(int)
        assert point["sensitivity"]["value"] == pytest.approx(yhat[pred["y"] == 1].mean())
        assert point["specificity"]["value"] == pytest.approx(1 - yhat[pred["y"] == 0].mean())
    cal = res["calibration"]
    assert cal["ece"] == pytest.approx(metrics.expected_calibration_error(pred["y"], pred["score"]))
    assert cal["brier"] == pytest.approx(np.mean((pred["score"] - pred["y"]) ** 2))
    assert sum(b["n"] for b in cal["bins"]) == len(pred)
    assert list(pred.columns) == ["path", "label", "y", "score", "pred"]
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["metrics"]["accuracy"]["value"] == pytest.approx(np.mean(pred["y"] == pred["pred"]))
    assert on_disk["metrics"]["accuracy"]["value"] >= 0.85
    assert on_disk == json.loads(json.dumps(res))
    assert on_disk["model"] == arch and on_disk["testset"] == "toy" and on_disk["n"] == 32
    assert on_disk["n_per_class"] == {"benign": 16, "malignant": 16}
    assert np.array(on_disk["confusion"]).sum() == 32
    for m in ("accuracy", "balanced_accuracy", "auroc", "sensitivity", "specificity", "f1"):
        v = on_disk["metrics"][m]
        assert v["lo"] <= v["value"] <= v["hi"]


def test_train_deterministic_per_seed(data, tiny_models, tmp_path):
    train, val, _ = data
    cfg = _cfg(epochs=2)
    runs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        classify.train(
            "vit",
            tiny_models["vit"],
            train,
            val,
            tmp_path / name,
            cfg,
            seed=seed,
            classes=CLASSES,
            threads=1,
            device="cpu",
        )
        runs.append(pd.read_csv(tmp_path / name / "history.csv"))
    cols = ["train_loss", "val_loss", "val_accuracy"]
    np.testing.assert_allclose(runs[0][cols].to_numpy(), runs[1][cols].to_numpy(), rtol=1e-6)
    assert not np.allclose(runs[0]["train_loss"], runs[2]["train_loss"])


def test_class_balance_sampler_and_early_stopping(data, tiny_models, tmp_path):
    train, val, _ = data
    # lr 1e-30 (the schema wants lr > 0) moves no float32 weight, so the validation loss cannot improve
    # after the first epoch: stops after 1 + patience epochs (ViT: no BatchNorm statistics that move)
    s = classify.train(
        "vit",
        tiny_models["vit"],
        train.iloc[:40],
        val,
        tmp_path / "m",
        _cfg(learning_rate=1e-30, epochs=10, early_stopping_patience=2, class_balance="sampler"),
        seed=0,
        classes=CLASSES,
        threads=1,
        device="cpu",
    )
    assert s["epochs_run"] == 3 and s["best_epoch"] == 1


def test_train_without_validation_keeps_last_epoch(data, tiny_models, tmp_path):
    train, _, _ = data
    s = classify.train(
        "vit",
        tiny_models["vit"],
        train,
        pd.DataFrame(),
        tmp_path / "nv",
        _cfg(epochs=2),
        seed=0,
        classes=CLASSES,
        device="cpu",
    )
    assert s["n_val"] == 0 and s["best_epoch"] == 2 and s["epochs_run"] == 2


def test_single_class_test_set_does_not_crash(data, tiny_models, tmp_path):
    train, val, test = data
    classify.train(
        "vit",
        tiny_models["vit"],
        train,
        val,
        tmp_path / "v",
        _cfg(epochs=1),
        seed=0,
        classes=CLASSES,
        device="cpu",
    )
    only = test[test["label"] == "benign"]
    res = evaluation.evaluate(
        tmp_path / "v", only, CLASSES, tmp_path / "e.json", tmp_path / "p.csv", n_boot=50
    )
    assert res["metrics"]["auroc"]["value"] is None and res["notes"]
    assert res["metrics"]["specificity"]["value"] is not None
    text = (tmp_path / "e.json").read_text()
    assert "NaN" not in text


def test_augment_preserves_shape_and_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    y = classify.augment(x, {"hflip": True, "vflip": True, "rotate90": True, "color_jitter": 0.3}, g)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    # geometric-only augmentation permutes pixels: per-image sorted values are unchanged
    y = classify.augment(x, {"hflip": True, "vflip": True, "rotate90": True, "color_jitter": 0}, g)
    assert torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)


def test_errors(data, tiny_models, tmp_path):
    train, val, _ = data
    with pytest.raises(ModelNotFoundError) as e:
        classify.train("vit", str(tmp_path / "no_such_model"), train, val, tmp_path / "x", _cfg(), 0, CLASSES)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        classify.train("resnet", tiny_models["vit"], train, val, tmp_path / "x", _cfg(), 0, CLASSES)
    with pytest.raises(ConfigError):  # a MobileNetV2 checkpoint named as a ViT
        classify.train("vit", tiny_models["mobilenet_v2"], train, val, tmp_path / "x", _cfg(), 0, CLASSES)
    with pytest.raises(ConfigError):
        classify.train("vit", tiny_models["vit"], train, val, tmp_path / "x", _cfg(image_size=64), 0, CLASSES)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_gpu_mixed_precision(data, tiny_models, tmp_path):
    train, val, _ = data
    s = classify.train(
        "mobilenet_v2",
        tiny_models["mobilenet_v2"],
        train,
        val,
        tmp_path / "g",
        _cfg(mixed_precision="fp16"),
        seed=0,
        classes=CLASSES,
        device="cuda",
    )
    assert s["device"].startswith("cuda") and s["mixed_precision"] == "fp16"
    hist = pd.read_csv(tmp_path / "g" / "history.csv")
    assert hist["val_accuracy"].max() >= 0.9


def test_realism_check_groups_by_sampler(data, tiny_models, tmp_path):
    _, _, test = data
    syn = test.assign(sampler=np.where(np.arange(len(test)) % 4 == 0, "plms", "euler"))
    manifest = tmp_path / "filtered.csv"
    io.write_csv(manifest, syn)
    res = evaluation.realism_check(
        tiny_models["vit"], manifest, CLASSES, tmp_path / "r.json", tmp_path / "r.csv", n_boot=30, seed=0
    )
    pred = pd.read_csv(tmp_path / "r.csv")
    assert res["testset"] == "synthetic" and set(res["groups"]) == {"euler", "plms"}
    for name, g in pred.groupby("sampler"):
        grp = res["groups"][name]
        assert grp["n"] == len(g)
        assert grp["accuracy"]["value"] == pytest.approx((g["y"] == g["pred"]).mean())
        assert grp["accuracy"]["lo"] <= grp["accuracy"]["value"] <= grp["accuracy"]["hi"]
    assert res["metrics"]["accuracy"]["value"] == pytest.approx((pred["y"] == pred["pred"]).mean())
    # mixed precision is a CUDA option: on the CPU predictions stay fp32 and identical
    a = classify.predict(tiny_models["vit"], test.head(8), CLASSES, device="cpu")
    b = classify.predict(tiny_models["vit"], test.head(8), CLASSES, device="cpu", mixed_precision="bf16")
    assert np.array_equal(a, b)


def test_regime_names_fractions_and_sweep_sets():
    from dermsynth import regimes, splits
    from dermsynth.errors import ConfigError

    h = {"synthetic_fraction": 0.75, "regimes": ["real", "hybrid"], "sweep": [0, 0.25, 0.5, 0.75, 0.9]}
    assert regimes.regime_names(h) == ["real", "hybrid", "sweep25", "sweep50", "sweep90"]
    assert [regimes.regime_fraction(r, h) for r in regimes.regime_names(h)] == [0, 0.75, 0.25, 0.5, 0.9]
    assert regimes.regime_names({"regimes": ["real"], "sweep": []}) == ["real"]
    assert regimes.base_regime("sweep25") == "hybrid" and regimes.base_regime("real") == "real"
    with pytest.raises(ConfigError):
        regimes.regime_names({"sweep": [0.5, 0.501]})  # both round to sweep50
    with pytest.raises(ConfigError):
        regimes.regime_fraction("sweep30", h)
    # a sweep point keeps every real image and adds synthetic ones up to its share
    real = pd.DataFrame({"path": [f"r{i}" for i in range(20)], "label": CLASSES * 10})
    syn = pd.DataFrame({"path": [f"s{i}" for i in range(400)], "label": CLASSES * 200})
    for name in ("sweep25", "sweep50", "sweep90"):
        f = regimes.regime_fraction(name, h)
        out = splits.make_regime(real, syn, regimes.base_regime(name), f, 0, CLASSES)
        assert (out["origin"] == "real").sum() == 20
        assert (out["origin"] == "synthetic").mean() == pytest.approx(f, abs=0.02)
