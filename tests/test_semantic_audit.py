import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermsynth import filter, io, semantic_audit
from dermsynth.config import section
from dermsynth.errors import ConfigError
from dermsynth.imaging import contact_sheet

DATA = Path("/work/shared/data/isic")
OFF = {"activate": False}
# the semantic audit alone (exact copies and blanks are always checked)
CFG = {
    **{k: OFF for k in ("clipped", "cast", "noise", "tiling", "blur", "lesion", "duplicates")},
    "memorization": {"min_similarity": 0.997},
}
N_TRAIN = 24
SIZE = 64


def _images(n: int, size: int = SIZE) -> list[np.ndarray]:
    """Real ISIC dermoscopy (centre square), or textured blobs where the data is absent."""
    files = sorted(DATA.rglob("*.jpg"))[:n]
    if len(files) == n:
        return [semantic_audit.load_square(f, size) for f in files]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        yy, xx = np.mgrid[:size, :size]
        r = np.hypot(yy - size / 2 + rng.normal(0, 6), xx - size / 2 + rng.normal(0, 6))
        w = np.clip((size * rng.uniform(0.2, 0.4) - r) / 4, 0, 1)[..., None]
        tex = cv2.GaussianBlur(rng.normal(0, 30, (size, size, 3)), (0, 0), 2)
        img = np.array([215, 165, 145]) * (1 - w) + np.array([105, 70, 50]) * w + tex
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def _crop(a, side, oy, ox):
    s = a.shape[0]
    c = int(round(s * side))
    y, x = int(oy * (s - c)), int(ox * (s - c))
    return cv2.resize(a[y : y + c, x : x + c], (s, s), interpolation=cv2.INTER_AREA)


def _rotate(a, deg):
    s = a.shape[0]
    m = cv2.getRotationMatrix2D((s / 2, s / 2), deg, 1.0)
    return cv2.warpAffine(a, m, (s, s), borderMode=cv2.BORDER_REFLECT_101)


def _recolour(a, hue, sat, val):
    hsv = cv2.cvtColor(a, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + hue / 2) % 180
    hsv[..., 1:] *= (sat, val)
    return cv2.cvtColor(np.clip(hsv, 0, [179, 255, 255]).astype(np.uint8), cv2.COLOR_HSV2RGB)


def _jpeg(a, q, path):
    Image.fromarray(a).save(path, "JPEG", quality=q)
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """24 fine-tune images, near copies of four of them that the pixel audit misses, 6 distinct
    lesions; the filter (semantic audit, calibrated on the 24) runs once with its report."""
    tmp = tmp_path_factory.mktemp("semantic")
    imgs = _images(N_TRAIN + 6)
    train, distinct = imgs[:N_TRAIN], imgs[N_TRAIN:]
    trows = []
    for i, a in enumerate(train):
        p = tmp / "train" / f"t{i}.png"
        trows.append({"path": str(p), "label": "benign", "sha256": io.save_png(p, a)})
    pd.DataFrame(trows).to_csv(tmp / "finetune.csv", index=False)
    planted = {
        "crop_t3": _crop(train[3], 0.85, 0.2, 0.8),
        "rotate_t7": _rotate(train[7], 10),
        "recolour_t11": _rotate(_recolour(train[11], 12, 1.25, 0.85), 6),  # recolour alone: pixel audit
        "combo_t15": _jpeg(_rotate(_crop(train[15], 0.9, 0.5, 0.5), -8), 50, tmp / "c.jpg"),
    }
    rows = []
    for name, a in [*planted.items(), *((f"distinct_{i}", a) for i, a in enumerate(distinct))]:
        p = tmp / "syn" / f"{name}.png"
        rows.append({"path": str(p), "label": "benign", "sampler": "euler", "sha256": io.save_png(p, a)})
    m = tmp / "m.csv"
    pd.DataFrame(rows).to_csv(m, index=False)
    out = tmp / "out"
    sheets = [str(out / f"sheet_{r}.png") for r in filter.REASONS]
    kept, rej = filter.filter_stage(
        [str(m)],
        tmp / "finetune.csv",
        out / "k.csv",
        out / "r.csv",
        out / "nn.csv",
        out / "filter.md",
        out / "hist.png",
        out / "pairs.png",
        sheets,
        CFG,
        threads=2,
        semantic_path=out / "sem.csv",
        calibration_path=out / "cal.json",
        semantic_png=out / "sem_pairs.png",
    )
    return {
        "kept": kept,
        "rej": rej.set_index(rej["path"].map(lambda p: Path(p).stem)),
        "sem": io.read_csv(out / "sem.csv"),
        "pixel": io.read_csv(out / "nn.csv"),
        "md": (out / "filter.md").read_text(),
        "out": out,
        "train": train,
    }


def test_near_copies_rejected_distinct_kept(audited):
    rej = audited["rej"]
    planted = ["crop_t3", "rotate_t7", "recolour_t11", "combo_t15"]
    assert {k: rej.loc[k, "reason"] if k in rej.index else None for k in planted} == dict.fromkeys(
        planted, "memorized_semantic"
    )
    for k in planted:  # the detail names the fine-tune image it copies
        src = k.split("_")[1] + ".png"
        assert f"/{src} (" in rej.loc[k, "detail"], rej.loc[k, "detail"]
    # the pixel audit alone misses them (that is what the semantic audit is for)
    pixel = audited["pixel"].set_index(audited["pixel"]["path"].map(lambda p: Path(p).stem))
    assert not pixel.loc[planted, "memorized"].any()
    assert sorted(Path(p).stem for p in audited["kept"]["path"]) == [f"distinct_{i}" for i in range(6)]


def test_nearest_semantic_csv(audited):
    sem = audited["sem"].set_index(audited["sem"]["path"].map(lambda p: Path(p).stem))
    assert list(audited["sem"].columns) == semantic_audit.NEAREST_COLUMNS
    thr = sem["threshold"].iloc[0]
    assert (sem["memorized_semantic"] == (sem["similarity"] >= thr)).all()
    assert Path(sem.loc["rotate_t7", "nearest"]).name == "t7.png"
    assert sem.loc["rotate_t7", "view"].startswith("id rot")
    score = audited["rej"].loc["rotate_t7", "score"]
    assert score == pytest.approx(sem.loc["rotate_t7", "similarity"])


def test_calibration_meets_its_false_rate_target(audited):
    # a coarser view grid than the default: the threshold logic is under test, not the descriptor
    grid = {"rotations": [-6, 0, 6], "crop_scales": [0.9]}
    c = section("filter", {"memorization": {"semantic": grid}})["memorization"]["semantic"]
    train = audited["train"]
    emb = semantic_audit.embedder(c)
    gallery = emb.gallery(train)
    cal = semantic_audit.calibrate(train, emb, gallery, c)
    # brute force: each fine-tune image against every view of every other one
    q = emb.queries(train)
    neg = np.array(
        [
            max(float((gallery[j] @ q[i]).max()) for j in range(len(train)) if j != i)
            for i in range(len(train))
        ]
    )
    allowed = int(np.floor(c["max_false_rate"] * len(train)))
    tol = 1e-5  # float32 sums in another order
    assert (neg >= cal["threshold"] + tol).sum() <= allowed
    assert cal["false_rate"] <= c["max_false_rate"]
    # the lowest such threshold: just above the first distinct pair that would exceed the target
    first_over = np.sort(neg)[::-1][allowed]
    assert (
        cal["threshold"] == pytest.approx(first_over, abs=tol) and (neg >= first_over - tol).sum() > allowed
    )
    assert cal["negatives"] == len(train) and cal["copies"] == len(semantic_audit.PLANT_KINDS) * min(
        c["calibration_images"], len(train)
    )
    # the run's calibration (default view grid) meets the target too
    run = json.loads((audited["out"] / "cal.json").read_text())
    assert run["calibrated"] and run["false_rate"] <= c["max_false_rate"] and run["negatives"] == len(train)


def test_threshold_for_by_hand():
    neg = np.array([0.5, 0.9, 0.7, 0.8, 0.6, 0.95, 0.1, 0.2, 0.3, 0.4], np.float32)
    t = semantic_audit.threshold_for(neg, 0.1)  # one of ten may match: the 0.95, not the 0.9
    assert np.float32(0.9) < t < 0.95 and (neg >= t).sum() == 1
    assert (
        semantic_audit.threshold_for(neg, 0.0) > 0.95
        and (neg >= semantic_audit.threshold_for(neg, 0.0)).sum() == 0
    )
    assert semantic_audit.threshold_for(neg, 1.0) == pytest.approx(0.1)


def test_nearest_matches_brute_force_with_groups():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(7, 5, 16)).astype(np.float32)
    g /= np.linalg.norm(g, axis=2, keepdims=True)
    q = rng.normal(size=(11, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    qg = np.array([0, 1, 2, -1, -1, 3, 4, 5, 6, -1, 0])
    gg = np.array([0, 1, 2, 3, 4, 5, 6])
    idx, view, sim = semantic_audit.nearest(q, g, qg, gg, block=4)
    for i in range(len(q)):
        s = np.einsum("jvd,d->jv", g, q[i])
        s[gg == qg[i]] = -np.inf
        j, v = np.unravel_index(np.argmax(s), s.shape)
        assert (idx[i], view[i]) == (j, v) and sim[i] == pytest.approx(s[j, v], abs=1e-6)


def test_report_lists_closest_pairs(audited):
    md = audited["md"]
    sem = audited["sem"].sort_values("similarity", ascending=False)
    closest = section("filter")["memorization"]["semantic"]["closest"]
    top = sem.head(closest)
    assert "Semantic memorization audit" in md and "95th percentile" in md
    assert f"{100 * sem['memorized_semantic'].mean():.1f} %" in md
    lines = [
        ln for ln in md.splitlines() if ln.startswith("| ") and ln.count("|") == 5 and "cosine" not in ln
    ]
    pairs = [ln for ln in lines if ".png | " in ln]
    assert len(pairs) == len(top)
    for ln, r in zip(pairs, top.itertuples(), strict=True):  # most similar first
        assert ln.startswith(f"| {io.rel(r.path)} | {io.rel(r.nearest)} | {r.similarity:.4f} |")
    assert "](sections/sem_pairs.png)" in md and "| memorized_semantic | 4 | on |" in md
    # the sheet: synthetic | fine-tune, the closest pairs in order
    paths = [p for r in top.itertuples() for p in (r.path, r.nearest)]
    labels = [
        s for r in top.itertuples() for s in (f"syn {r.similarity:.4f}", f"train {r.view.split(' ')[0]}")
    ]
    thr = sem["threshold"].iloc[0]
    ref = audited["out"] / "ref.png"
    contact_sheet(
        paths,
        ref,
        ncols=4,
        labels=labels,
        title=f"semantic audit, closest pairs: synthetic | fine-tune (threshold {thr:.4f})",
    )
    assert np.array_equal(
        np.asarray(Image.open(ref)), np.asarray(Image.open(audited["out"] / "sem_pairs.png"))
    )


def test_too_few_images_use_min_similarity(tmp_path):
    imgs = _images(4)
    rows = []
    for i, a in enumerate(imgs):
        p = tmp_path / f"t{i}.png"
        io.save_png(p, a)
        rows.append({"path": str(p)})
    c = section("filter", {"memorization": {"semantic": {"min_similarity": 0.5}}})["memorization"]["semantic"]
    rows_out, cal = semantic_audit.semantic_audit([rows[0]["path"]], pd.DataFrame(rows), c)
    assert cal["calibrated"] is False and cal["threshold"] == 0.5
    assert rows_out["similarity"].iloc[0] > 0.999 and bool(rows_out["memorized_semantic"].iloc[0])
    # read and matched a block at a time: the same rows; an unreadable image gets an empty one
    (tmp_path / "bad.png").write_bytes(b"not an image")
    paths = [r["path"] for r in rows][::-1] + [str(tmp_path / "bad.png")]
    whole, _ = semantic_audit.semantic_audit(paths, pd.DataFrame(rows), c)
    blocks, _ = semantic_audit.semantic_audit(paths, pd.DataFrame(rows), {**c, "block": 2})
    pd.testing.assert_frame_equal(whole, blocks)
    assert whole["nearest"].map(lambda p: Path(p).name if p else "").tolist() == [
        "t3.png",
        "t2.png",
        "t1.png",
        "t0.png",
        "",
    ]
    assert np.isnan(whole["similarity"].iloc[-1]) and not whole["memorized_semantic"].iloc[-1]


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"features": "sift"}, "features"),
        ({"max_false_rate": 1.5}, "max_false_rate"),
        ({"bandpass": [1.0, 2.0, 3.0]}, "bandpass"),
        ({"crop_scales": [1.2]}, "crop_scales"),
        ({"min_calibration_images": 1}, "min_calibration_images"),
        ({"threshold": 0.9}, "semantic"),
    ],
)
def test_config_validation(bad, key):
    with pytest.raises(ConfigError, match=key):
        section("filter", {"memorization": {"semantic": bad}})


def test_plant_kinds():
    a = _images(1, 96)[0]
    rng = np.random.default_rng(0)
    for k in semantic_audit.PLANT_KINDS:
        b = semantic_audit.plant(a, k, rng)
        assert b.shape == a.shape and b.dtype == np.uint8 and not np.array_equal(a, b)
    with pytest.raises(ConfigError, match="near-copy kind"):
        semantic_audit.plant(a, "blur", rng)


def test_extractor_embedding_matches_flipped_copies(tmp_path):
    """features: tiny goes through quality.load_extractor (as dinov2 / clip do): the gallery holds
    the 8 flips / quarter turns, so a turned copy is as close as a straight one."""
    imgs = _images(6)
    rows = []
    for i, a in enumerate(imgs):
        p = tmp_path / f"t{i}.png"
        io.save_png(p, a)
        rows.append({"path": str(p)})
    syn = {"same": imgs[2], "turned": np.ascontiguousarray(np.rot90(imgs[4][:, ::-1]))}
    paths = []
    for k, a in syn.items():
        paths.append(str(tmp_path / f"{k}.png"))
        io.save_png(paths[-1], a)
    c = section("filter", {"memorization": {"semantic": {"features": "tiny", "min_similarity": 0.99}}})
    out, cal = semantic_audit.semantic_audit(paths, pd.DataFrame(rows), c["memorization"]["semantic"])
    assert [Path(p).name for p in out["nearest"]] == ["t2.png", "t4.png"]
    assert out["view"].tolist() == ["id", "flip_rot90"]
    assert (out["similarity"] > 0.999).all() and out["memorized_semantic"].all()
    assert cal["features"].startswith("tiny")
