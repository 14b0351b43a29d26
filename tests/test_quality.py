from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermsynth import io
from dermsynth.errors import ConfigError
from dermsynth.quality import contact_sheet, filter_synthetic

DATA = Path("/work/shared/data")
CFG = {"min_std": 4.0, "max_black_fraction": 0.9, "max_white_fraction": 0.9, "max_nonfinite_fraction": 0.0}


def _lesion(seed: int, size: int = 64) -> np.ndarray:
    """A noise-textured brown blob on skin tone, like a small generated image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2 + rng.normal(0, 3), xx - size / 2 + rng.normal(0, 3))
    skin = np.array([220, 170, 150], np.float32)
    lesion = np.array([110, 70, 50], np.float32)
    w = np.clip((size * 0.3 - r) / 4, 0, 1)[..., None]
    img = skin * (1 - w) + lesion * w + rng.normal(0, 8, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _real(k: int, size: int = 64) -> np.ndarray:
    files = sorted((DATA / "isic" / "benign").glob("*.jpg"))
    if not files:
        return _lesion(1000 + k, size)
    im = io.load_rgb(files[k % len(files)]).resize((size, size))
    return np.asarray(im)


def _row(path: Path, label: str, sampler: str, sha: str | None = None) -> dict:
    return {
        "path": str(path),
        "label": label,
        "dataset": "synthetic",
        "source_id": path.stem,
        "sha256": sha if sha is not None else io.sha256_file(path),
        "seed": 1,
        "prompt": "p",
        "sampler": sampler,
        "steps": 20,
    }


@pytest.fixture()
def planted(tmp_path):
    d = tmp_path / "img"
    rows_a, rows_b, normal = [], [], []
    for k in range(4):
        p = d / f"normal_{k}.png"
        io.save_png(p, _lesion(k) if k % 2 else _real(k))
        rows_a.append(_row(p, "benign" if k < 2 else "malignant", "euler"))
        normal.append(str(p))
    black = _lesion(10)
    black[:60] = 0
    io.save_png(d / "black.png", black)
    io.save_png(d / "white.png", np.full((64, 64, 3), 252, np.uint8))
    io.save_png(d / "flat.png", np.full((64, 64, 3), (180, 120, 100), np.uint8))
    rows_b += [
        _row(d / "black.png", "benign", "plms"),
        _row(d / "white.png", "benign", "plms"),
        _row(d / "flat.png", "malignant", "plms"),
    ]
    # truncated PNG: the manifest sha is of the full file, the file on disk is cut short
    io.save_png(d / "trunc.png", _lesion(11))
    full_sha = io.sha256_file(d / "trunc.png")
    data = (d / "trunc.png").read_bytes()
    (d / "trunc.png").write_bytes(data[: len(data) // 2])
    rows_b.append(_row(d / "trunc.png", "malignant", "plms", sha=full_sha))
    # valid image whose manifest sha does not match (edited after generation)
    io.save_png(d / "edited.png", _lesion(12))
    rows_b.append(_row(d / "edited.png", "benign", "euler_a", sha="0" * 64))
    # same pixels as normal_1 saved again (re-encoded: different bytes, same pixels)
    Image.fromarray(_lesion(1)).save(d / "dup.png", compress_level=1)
    rows_b.append(_row(d / "dup.png", "benign", "euler_a"))
    rows_b.append(_row(d / "missing.png", "benign", "euler_a", sha=""))
    ma, mb = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame(rows_a).to_csv(ma, index=False)
    pd.DataFrame(rows_b).to_csv(mb, index=False)
    return [str(ma), str(mb)], normal


def test_filter_rejects_planted_artifacts(tmp_path, planted):
    manifests, normal = planted
    out, rej_path = tmp_path / "out" / "filtered.csv", tmp_path / "out" / "rejected.csv"
    kept, rej = filter_synthetic(manifests, out, rej_path, CFG)
    assert sorted(kept["path"]) == sorted(normal)
    reasons = {Path(p).name: r for p, r in zip(rej["path"], rej["reason"], strict=True)}
    assert reasons == {
        "black.png": "black",
        "white.png": "white",
        "flat.png": "flat",
        "trunc.png": "unreadable",
        "edited.png": "sha_mismatch",
        "dup.png": "duplicate",
        "missing.png": "unreadable",
    }
    # all manifest columns survive; the files on disk equal the returned frames
    assert list(kept.columns) == list(pd.read_csv(manifests[0]).columns)
    on_disk = pd.read_csv(out)
    assert on_disk["path"].tolist() == kept["path"].tolist()
    rej_disk = pd.read_csv(rej_path)
    assert {"path", "label", "sampler", "reason", "score"} <= set(rej_disk.columns)
    assert rej_disk.set_index("reason").loc["black", "score"] > 0.9
    assert rej_disk.set_index("reason").loc["flat", "sampler"] == "plms"
    assert not list((tmp_path / "out").glob(".tmp-*"))


def test_filter_threads_same_result(tmp_path, planted):
    manifests, _ = planted
    k1, r1 = filter_synthetic(manifests, tmp_path / "k1.csv", tmp_path / "r1.csv", CFG, threads=1)
    k2, r2 = filter_synthetic(manifests, tmp_path / "k2.csv", tmp_path / "r2.csv", CFG, threads=3)
    assert k1["path"].tolist() == k2["path"].tolist()
    assert r1["reason"].tolist() == r2["reason"].tolist()


def test_filter_thresholds_from_config(tmp_path, planted):
    manifests, _ = planted
    loose = dict(CFG, max_black_fraction=1.0, max_white_fraction=1.0, min_std=0.0)
    _, rej = filter_synthetic(manifests, tmp_path / "k.csv", tmp_path / "r.csv", loose)
    # with the artifact thresholds off, black/white/flat images are kept; the other checks still reject
    assert set(rej["reason"]) == {"unreadable", "sha_mismatch", "duplicate"}
    with pytest.raises(ConfigError):
        filter_synthetic(manifests, tmp_path / "k.csv", tmp_path / "r.csv", dict(CFG, max_black_fraction=2))


def test_filter_empty_rejected_has_header(tmp_path):
    p = tmp_path / "ok.png"
    io.save_png(p, _lesion(3))
    m = tmp_path / "m.csv"
    pd.DataFrame([_row(p, "benign", "euler")]).to_csv(m, index=False)
    kept, rej = filter_synthetic([str(m)], tmp_path / "k.csv", tmp_path / "r.csv", CFG)
    assert len(kept) == 1 and len(rej) == 0
    assert pd.read_csv(tmp_path / "r.csv").columns[:5].tolist() == [
        "path",
        "label",
        "sampler",
        "reason",
        "score",
    ]


def test_contact_sheet(tmp_path, planted):
    _, normal = planted
    paths = normal + [str(tmp_path / "img" / "trunc.png")]
    out = contact_sheet(paths, tmp_path / "sheet.png", ncols=3, thumb=32, labels=[f"l{i}" for i in range(5)])
    im = Image.open(out)
    assert im.width == 3 * 34 + 2 and im.height == 2 * (32 + 14 + 2) + 2
    empty = contact_sheet([], tmp_path / "empty.png")
    assert Image.open(empty).width > 0
