"""Dataset sources: demo generator, folder/CSV/HAM10000 import with bad inputs, isic-cli wiring."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermsynth import io
from dermsynth.data import DATA_COLUMNS, acquire, demo, folder, isic
from dermsynth.errors import ConfigError, DataSourceError

CLASSES = ["benign", "malignant"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _acquire(name, spec, tmp_path, seed=0, out=None):
    out = tmp_path / (out or name)
    m = acquire(name, spec, out / "raw", out / "manifest.csv", out / "rejected.csv", seed, CLASSES)
    return m, io.read_csv(out / "rejected.csv")


# ---------------------------------------------------------------------------------------------- demo


def test_demo_deterministic_per_seed_and_different_across_seeds():
    a, _ = demo.make_image(1, "isic", "malignant", 3, 0, 64, "isic", CLASSES, hair=False)
    b, _ = demo.make_image(1, "isic", "malignant", 3, 0, 64, "isic", CLASSES, hair=False)
    c, _ = demo.make_image(2, "isic", "malignant", 3, 0, 64, "isic", CLASSES, hair=False)
    d, _ = demo.make_image(1, "other", "malignant", 3, 0, 64, "isic", CLASSES, hair=False)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c).mean() > 3
    assert np.abs(a.astype(int) - d).mean() > 3


def test_demo_acquire_manifest_hair_truth_and_lesions(tmp_path):
    spec = {
        "source": "demo",
        "demo": {
            "n_per_class": 6,
            "domain": "ham10000",
            "size": 48,
            "hair_fraction": 0.5,
            "images_per_lesion": 2,
        },
    }
    m, rej = _acquire("isic", spec, tmp_path)
    assert list(m.columns[: len(DATA_COLUMNS)]) == DATA_COLUMNS
    assert {"truth_path", "has_hair"} <= set(m.columns)
    assert len(m) == 12 and m["label"].value_counts().to_dict() == {"benign": 6, "malignant": 6}
    assert rej.empty and list(rej.columns) == ["path", "reason", "detail"]
    assert m.groupby("lesion_id").size().eq(2).all()  # two views per lesion
    assert m["source_id"].is_unique
    hairy = m[m["has_hair"].astype(str) == "True"]
    assert hairy.groupby("label").size().to_dict() == {"benign": 3, "malignant": 3}
    assert (hairy["truth_path"] != "").all() and (m.loc[~m.index.isin(hairy.index), "truth_path"] == "").all()
    for r in hairy.itertuples():
        img, truth = np.asarray(io.load_rgb(r.path)), np.asarray(io.load_rgb(r.truth_path))
        assert img.shape == truth.shape == (48, 48, 3)
        assert (np.abs(img.astype(int) - truth).max(-1) > 20).mean() > 0.005  # hairs drawn
    assert all(io.sha256_file(p) == s for p, s in zip(m["path"], m["sha256"], strict=True))
    # views of one lesion differ (rotation, shift, light) but are the same lesion
    a, b = (np.asarray(io.load_rgb(p)) for p in m[m["has_hair"].astype(str) == "False"]["path"][:2])
    assert not np.array_equal(a, b)
    again, _ = _acquire("isic", spec, tmp_path, out="again")
    assert list(again["sha256"]) == list(m["sha256"])


def _lesion_stats(img):
    """(asymmetry, colour spread) of the lesion: mask vs its 180-degree rotation about the centroid."""
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
    light = cv2.GaussianBlur(lab[..., 0], (5, 5), 0)
    _, dark = cv2.threshold(light, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    n, comp, st, _ = cv2.connectedComponentsWithStats(dark)
    mask = (comp == 1 + np.argmax(st[1:, cv2.CC_STAT_AREA])).astype(np.uint8)  # the lesion: largest blob
    lab = lab.astype(np.float32)
    mu = cv2.moments(mask, binaryImage=True)
    cx, cy = mu["m10"] / mu["m00"], mu["m01"] / mu["m00"]
    rot = cv2.warpAffine(
        mask, cv2.getRotationMatrix2D((cx, cy), 180, 1.0), mask.shape[::-1], flags=cv2.INTER_NEAREST
    )
    asym = np.logical_xor(mask, rot).sum() / mask.sum()
    spread = lab[mask > 0].std(0).mean()
    return asym, spread, mask.mean()


def test_demo_classes_differ_by_abcd_statistics():
    stats = {
        c: np.array(
            [
                _lesion_stats(demo.make_image(5, "d", c, i, 0, 128, "ham10000", CLASSES, False)[0])
                for i in range(16)
            ]
        )
        for c in CLASSES
    }
    ben, mal = stats["benign"].mean(0), stats["malignant"].mean(0)
    assert mal[0] > 1.5 * ben[0]  # asymmetry
    assert mal[1] > 1.5 * ben[1]  # colour variegation
    assert mal[2] > ben[2]  # diameter
    # not trivially separable by one statistic: some overlap in size
    assert stats["benign"][:, 2].max() > stats["malignant"][:, 2].min()


def test_demo_domains_differ_in_colour():
    means = {
        d: np.mean(
            [
                demo.make_image(3, d, c, i, 0, 64, d, CLASSES, False)[0].reshape(-1, 3).mean(0)
                for c in CLASSES
                for i in range(5)
            ],
            axis=0,
        )
        for d in demo.DOMAINS
    }
    assert np.abs(means["isic"] - means["ham10000"]).sum() > 30


def test_demo_speed_and_bad_domain(tmp_path):
    t0 = time.process_time()  # CPU time: other jobs on the machine do not count
    for i in range(20):
        demo.make_image(0, "isic", CLASSES[i % 2], i, 0, 128, "isic", CLASSES, hair=True)
    assert (time.process_time() - t0) / 20 < 0.02
    with pytest.raises(ConfigError, match="domain"):
        demo.generate("x", {"domain": "mars"}, tmp_path, 0, CLASSES)


# ------------------------------------------------------------------------------------------- folder


def test_folder_labels_csv_with_relative_paths_and_filter(tmp_path, shared_data):
    labels = pd.read_csv(shared_data / "labels.csv")
    rows = pd.concat(
        [
            labels[(labels.dataset == "isic") & (labels.label == "benign")].head(2),
            labels[(labels.dataset == "isic") & (labels.label == "malignant")].head(2),
            labels[labels.dataset == "hairy"].head(1),
        ]
    )
    src = tmp_path / "src"
    src.mkdir()
    for sub in ("isic", "hairy"):
        (src / sub).symlink_to(shared_data / sub)
    rows.to_csv(src / "labels.csv", index=False)
    m, rej = _acquire(
        "isic",
        {"source": "folder", "folder": {"csv": str(src / "labels.csv"), "filter_dataset": "isic"}},
        tmp_path,
    )
    assert len(m) == 4
    # the symlinked folders hold all 200 ISIC images; those no row names are reported, not dropped
    named = {Path(p).name for p in rows[rows.dataset == "isic"].path}
    others = {f.name for d in ("benign", "malignant") for f in (shared_data / "isic" / d).iterdir()}
    assert set(rej["reason"]) == {"not_listed"}
    assert {Path(p).name for p in rej["path"]} == others - named
    want = rows[rows.dataset == "isic"].set_index("source_id")["label"]
    assert m.set_index("source_id")["label"].to_dict() == want.to_dict()
    assert (m["lesion_id"] == m["source_id"]).all()  # unknown lesion: one image per lesion
    for r in m.itertuples():
        with Image.open(r.path) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (r.width, r.height)


def test_folder_ham10000_metadata_layout(tmp_path, shared_data):
    meta = pd.read_csv(shared_data / "ham10000" / "metadata.csv")
    pick = pd.concat(
        [
            meta[meta.lesion_id == "HAM_0002450"],
            meta[meta.dx.isin(["mel", "bcc"])].head(4),
            meta[meta.dx == "nv"].head(2),
        ]
    )
    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    for i in pick.image_id:
        (root / "images" / f"{i}.jpg").symlink_to(shared_data / "ham10000" / "images" / f"{i}.jpg")
    pick.to_csv(root / "HAM10000_metadata.csv", index=False)
    label_map = {
        "mel": "malignant",
        "bcc": "malignant",
        "akiec": "malignant",
        "nv": "benign",
        "bkl": "benign",
        "df": "benign",
        "vasc": "benign",
    }
    m, rej = _acquire(
        "ham10000", {"source": "folder", "folder": {"path": str(root), "label_map": label_map}}, tmp_path
    )
    assert rej.empty and len(m) == len(pick)
    by_id = m.set_index("source_id")
    for r in pick.itertuples():
        assert by_id.loc[r.image_id, "label"] == label_map[r.dx]
        assert by_id.loc[r.image_id, "lesion_id"] == r.lesion_id
    assert (by_id.loc[pick[pick.dx == "mel"].image_id, "label"] == "malignant").all()
    assert by_id["lesion_id"].value_counts()["HAM_0002450"] == 2
    assert (m["width"] == 600).all() and (m["height"] == 450).all()
    assert (m["license"] == "CC-BY-NC-4.0").all()  # HAM10000's, as its data paper gives it


@pytest.fixture
def bad_inputs(tmp_path, shared_data):
    """A class-folder tree with one file per kind of trouble; returns (root, expected)."""
    real = Image.open(shared_data / "ham10000" / "images" / "ISIC_0024306.jpg").convert("RGB")
    real = real.resize((64, 48))
    root = tmp_path / "in"
    for d in ("benign", "malignant", "weird"):
        (root / d).mkdir(parents=True)
    real.save(root / "benign" / "good.png")
    (root / "benign" / "zero.jpg").write_bytes(b"")
    buf = (shared_data / "ham10000" / "images" / "ISIC_0024307.jpg").read_bytes()
    (root / "benign" / "trunc.jpg").write_bytes(buf[: len(buf) // 3])
    (root / "benign" / "notes.txt").write_text("not an image\n")
    cmyk = real.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("CMYK")
    cmyk.save(root / "benign" / "cmyk.jpg", quality=95)
    rgba = real.rotate(90, expand=True).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(root / "benign" / "rgba.png")
    real.rotate(180).quantize(64).save(root / "benign" / "palette.png")
    g16 = (np.asarray(real.convert("L"), np.uint16) * 257)[::-1]
    Image.fromarray(g16).save(root / "malignant" / "deep.png")
    assert Image.open(root / "malignant" / "deep.png").mode.startswith("I")
    real.convert("L").save(root / "malignant" / "gray.png")
    rgb16 = np.asarray(real.rotate(270), np.uint16)[..., ::-1] * 257  # 16-bit RGB, BGR for OpenCV
    cv2.imwrite(str(root / "malignant" / "deep_rgb.png"), rgb16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    real.crop((0, 0, 60, 48)).save(root / "malignant" / "rot.jpg", exif=exif, quality=95)
    shutil.copy(root / "benign" / "good.png", root / "malignant" / "copy.png")
    real.save(root / "malignant" / "same_pixels.png", compress_level=1)
    real.crop((0, 0, 32, 32)).save(root / "weird" / "x.png")
    expected_rejected = {
        "zero.jpg": "empty_file",
        "trunc.jpg": "truncated",
        "notes.txt": "not_an_image",
        "copy.png": "duplicate",
        "same_pixels.png": "duplicate",
        "x.png": "unknown_label",
    }
    expected_notes = {
        "cmyk": "CMYK",
        "rgba": "alpha",
        "palette": "palette",
        "deep": "16-bit",
        "deep_rgb": "16-bit",
        "gray": "grayscale",
        "rot": "EXIF orientation 6",
        "good": "",
    }
    return root, expected_rejected, expected_notes


def test_folder_bad_inputs_rejected_or_converted(tmp_path, bad_inputs):
    root, expected_rejected, expected_notes = bad_inputs
    m, rej = _acquire("isic", {"source": "folder", "folder": {"path": str(root)}}, tmp_path)
    got = {p.split("/")[-1]: r for p, r in zip(rej["path"], rej["reason"], strict=True)}
    assert got == expected_rejected
    assert rej["detail"].str.len().gt(0).all()
    notes = m.set_index("source_id")["note"].to_dict()
    assert set(notes) == set(expected_notes)
    for stem, frag in expected_notes.items():
        assert frag in notes[stem] if frag else notes[stem] == ""
    rot = m.set_index("source_id").loc["rot"]
    assert (rot["width"], rot["height"]) == (48, 60)  # EXIF rotation applied
    for r in m.itertuples():
        with Image.open(r.path) as im:
            assert im.mode == "RGB" and not im.getexif()
    deep = np.asarray(io.load_rgb(m.set_index("source_id").loc["deep", "path"]))
    assert deep.max() > 100  # 16-bit range scaled, not clipped to black


def test_folder_threads_and_max_side_give_the_same_result(tmp_path, bad_inputs):
    root, expected_rejected, _ = bad_inputs
    one, rej1 = _acquire("isic", {"source": "folder", "folder": {"path": str(root)}}, tmp_path, out="one")
    two = acquire(
        "isic",
        {"source": "folder", "folder": {"path": str(root)}},
        tmp_path / "two" / "raw",
        tmp_path / "two" / "m.csv",
        tmp_path / "two" / "r.csv",
        0,
        CLASSES,
        threads=3,
    )
    rej2 = io.read_csv(tmp_path / "two" / "r.csv")
    assert list(one["sha256"]) == list(two["sha256"]) and list(rej1["reason"]) == list(rej2["reason"])
    small, _ = _acquire(
        "isic", {"source": "folder", "folder": {"path": str(root), "max_side": 40}}, tmp_path, out="small"
    )
    assert (small[["width", "height"]].max(axis=1) <= 40).all()
    assert small["note"].str.contains("downscaled from").all()


def test_folder_per_class_is_a_seeded_sample_and_the_rest_is_listed(tmp_path, shared_data):
    meta = pd.read_csv(shared_data / "ham10000" / "metadata.csv")
    pick = pd.concat([meta[meta.dx == "mel"].head(5), meta[meta.dx == "nv"].head(3)])
    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    for i in pick.image_id:
        (root / "images" / f"{i}.jpg").symlink_to(shared_data / "ham10000" / "images" / f"{i}.jpg")
    pick.to_csv(root / "metadata.csv", index=False)
    label_map = {"mel": "malignant", "nv": "benign"}
    spec = {"source": "folder", "folder": {"path": str(root), "per_class": 4, "label_map": label_map}}
    a, rej = _acquire("ham10000", spec, tmp_path, seed=1, out="a")
    b, _ = _acquire("ham10000", spec, tmp_path, seed=1, out="b")
    # 4 of 5 melanomas, all 3 nevi (fewer than per_class); the one left out is listed with its reason
    assert a["label"].value_counts().to_dict() == {"malignant": 4, "benign": 3}
    assert rej["reason"].tolist() == ["not_selected"]
    left = Path(rej["path"].iloc[0]).stem
    assert left in set(pick.image_id) - set(a["source_id"])
    assert list(a["source_id"]) == list(b["source_id"])
    melanomas = set(pick[pick.dx == "mel"].image_id)
    c, _ = _acquire("ham10000", spec, tmp_path, seed=0, out="c")
    assert set(a["source_id"]) & melanomas != set(c["source_id"]) & melanomas  # another seed, another sample


def test_folder_unlisted_files_get_not_listed_rows(tmp_path, shared_data):
    labels = pd.read_csv(shared_data / "labels.csv")
    rows = labels[labels.dataset == "isic"].groupby("label").head(2)
    src = tmp_path / "src"
    (src / "img").mkdir(parents=True)
    for p in rows.path:
        shutil.copy(shared_data / p, src / "img")
    extra = labels[labels.dataset == "hairy"].path.iloc[0]
    shutil.copy(shared_data / extra, src / "img" / "stray.jpg")
    (src / "img" / ".hidden.jpg").write_bytes(b"x")
    table = rows.assign(path=["img/" + Path(p).name for p in rows.path])
    table.to_csv(src / "labels.csv", index=False)
    m, rej = _acquire("isic", {"source": "folder", "folder": {"csv": str(src / "labels.csv")}}, tmp_path)
    assert sorted(m["source_id"]) == sorted(rows.source_id)
    assert rej[["reason"]].assign(name=[Path(p).name for p in rej.path]).values.tolist() == [
        ["not_listed", "stray.jpg"]
    ]
    # per_class still samples the listed rows; the stray file keeps its own reason
    spec = {"source": "folder", "folder": {"csv": str(src / "labels.csv"), "per_class": 1}}
    m, rej = _acquire("isic", spec, tmp_path, out="sampled")
    assert m["label"].value_counts().to_dict() == {"benign": 1, "malignant": 1}
    assert sorted(rej["reason"]) == ["not_listed", "not_selected", "not_selected"]
    # HAM10000 layout: an image in images/ without a metadata row
    meta = pd.read_csv(shared_data / "ham10000" / "metadata.csv").head(2)
    ham = tmp_path / "ham"
    (ham / "images").mkdir(parents=True)
    for i in meta.image_id:
        shutil.copy(shared_data / "ham10000" / "images" / f"{i}.jpg", ham / "images")
    shutil.copy(shared_data / extra, ham / "images" / "ISIC_9999999.jpg")
    meta.to_csv(ham / "metadata.csv", index=False)
    label_map = dict.fromkeys(meta.dx, "benign")
    spec = {"source": "folder", "folder": {"path": str(ham), "label_map": label_map}}
    m, rej = _acquire("ham10000", spec, tmp_path)
    assert len(m) == 2 and rej["reason"].tolist() == ["not_listed"]
    assert Path(rej["path"].iloc[0]).name == "ISIC_9999999.jpg"


def test_schema_max_side_default_caps_the_stored_size(tmp_path, shared_data):
    from dermsynth.config import validate

    root = Path(__file__).resolve().parents[1]
    cfg = {"datasets": {"isic": {"source": "folder", "folder": {"path": str(tmp_path / "in")}}}}
    cfg["split"] = {"finetune_datasets": ["isic"], "train_datasets": ["isic"], "test_datasets": ["isic"]}
    spec = validate(cfg, root / "config" / "schema.yaml")["datasets"]["isic"]
    cap = spec["folder"]["max_side"]
    manifest = pd.read_csv(shared_data / "manifest.csv")
    big = manifest[(manifest.dataset == "isic") & (manifest[["w", "h"]].max(axis=1) > cap)].head(2)
    assert len(big) == 2, "the shared set has full-resolution ISIC images above the default cap"
    for r in big.itertuples():
        (tmp_path / "in" / r.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / r.path, tmp_path / "in" / r.label)
    m, _ = _acquire("isic", spec, tmp_path)
    assert (m[["width", "height"]].max(axis=1) == cap).all()
    want = big.set_index("source_id")
    for r in m.itertuples():  # aspect ratio kept
        assert abs(r.width / r.height - want.loc[r.source_id, "w"] / want.loc[r.source_id, "h"]) < 0.01


def test_folder_nothing_usable_raises_one_line(tmp_path):
    (tmp_path / "in" / "benign").mkdir(parents=True)
    (tmp_path / "in" / "benign" / "a.jpg").write_bytes(b"")
    with pytest.raises(DataSourceError) as e:
        _acquire("isic", {"source": "folder", "folder": {"path": str(tmp_path / "in")}}, tmp_path)
    assert "\n" not in str(e.value) and "no usable image" in str(e.value)
    assert io.read_csv(tmp_path / "isic" / "rejected.csv")["reason"].tolist() == ["empty_file"]
    with pytest.raises(DataSourceError, match="does not exist"):
        _acquire("isic", {"source": "folder", "folder": {"path": str(tmp_path / "nope")}}, tmp_path)
    with pytest.raises(ConfigError, match="source"):
        _acquire("isic", {"source": "ftp"}, tmp_path)


def test_resolve_label():
    lm = {"mel": "malignant", "NV": "benign", "odd": "other"}
    assert folder.resolve_label("Malignant", CLASSES, lm) == "malignant"
    assert folder.resolve_label("nv", CLASSES, lm) == "benign"
    assert folder.resolve_label("mel", CLASSES, lm) == "malignant"
    assert folder.resolve_label("odd", CLASSES, lm) is None
    assert folder.resolve_label("Indeterminate", CLASSES, lm) is None


# --------------------------------------------------------------------------------------------- isic


def test_isic_command_line():
    cmd = isic.build_command(
        'diagnosis_1:"Malignant"', "image_type:dermoscopic", 1400, [66, 67], "out/m", executable=["isic"]
    )
    assert cmd == [
        "isic",
        "--no-version-check",
        "image",
        "download",
        "--search",
        'diagnosis_1:"Malignant" AND image_type:dermoscopic',
        "--collections",
        "66,67",
        "--limit",
        "1400",
        "out/m",
    ]
    cmd = isic.build_command("a:1 OR a:2", None, None, None, "o", executable=["isic"])
    assert cmd == [
        "isic",
        "--no-version-check",
        "image",
        "download",
        "--search",
        "(a:1 OR a:2)",
        "--limit",
        "0",
        "o",
    ]
    assert isic.isic_executable()  # the isic-cli entry point (or python -m isic_cli.cli) is found
    dev = isic.build_command("a:1", None, 2, None, "o", executable=["isic"], env="dev")
    assert dev[:3] == ["isic", "--dev", "--no-version-check"]


def test_isic_offline_probe_raises_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(isic, "probe", lambda api=isic.APIS["prod"], **k: "gaierror: name resolution failed")
    spec = {"source": "isic", "isic": {"class_queries": {"benign": "b", "malignant": "m"}}}
    with pytest.raises(DataSourceError) as e:
        _acquire("isic", spec, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "'isic'" in msg and "api.isic-archive.com" in msg and "source: folder" in msg
    with pytest.raises(ConfigError, match="class_queries"):
        _acquire("isic", {"source": "isic", "isic": {"class_queries": {"benign": "b"}}}, tmp_path)


def test_isic_probe_of_closed_port_fails_fast():
    t0 = time.perf_counter()
    assert isic.probe("http://127.0.0.1:9", timeout=1.0) is not None
    assert time.perf_counter() - t0 < 3


def test_isic_run_bounded_and_failure_is_one_line(tmp_path):
    with pytest.raises(DataSourceError, match="did not finish"):
        isic.run_isic([sys.executable, "-c", "import time; time.sleep(30)"], 0.5, tmp_path / "a.log", "x")
    with pytest.raises(DataSourceError, match="boom"):
        isic.run_isic(
            [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], 10, tmp_path / "b.log", "x"
        )


def _isic_fixture(raw, shared_data):
    """isic-cli layout: raw/<label>/<isic_id>.jpg + metadata.csv (current diagnosis_1 schema)."""
    for label in CLASSES:
        d = raw / label
        d.mkdir(parents=True)
        ids = sorted(p.stem for p in (shared_data / "isic" / label).glob("*.jpg"))[:3]
        for i in ids:
            shutil.copy(shared_data / "isic" / label / f"{i}.jpg", d / f"{i}.jpg")
        rows = [
            {
                "isic_id": i,
                "attribution": "Anonymous",
                "copyright_license": "CC-0",
                "diagnosis_1": label.capitalize(),
                "lesion_id": f"IL_{k // 2}{label[0]}",
                "patient_id": f"IP_{label[0]}",
            }
            for k, i in enumerate(ids)
        ]
        if label == "malignant":
            rows[-1]["diagnosis_1"] = "Benign"  # the query said malignant: contradiction
            rows.append({**rows[0], "isic_id": "ISIC_9999999"})  # listed, never downloaded
        pd.DataFrame(rows).to_csv(d / "metadata.csv", index=False)
    (raw / "benign" / "attribution.txt").write_text("Anonymous\n")


def test_isic_postprocessing_of_download_layout(tmp_path, shared_data):
    raw = tmp_path / "out" / "isic_raw"
    _isic_fixture(raw, shared_data)
    m, rej = isic.collect(raw, "isic", tmp_path / "out", CLASSES)
    assert sorted(rej["reason"]) == ["label_mismatch", "missing_file"]
    assert m["label"].value_counts().to_dict() == {"benign": 3, "malignant": 2}
    meta = pd.concat([pd.read_csv(raw / c / "metadata.csv", dtype=str) for c in CLASSES]).set_index("isic_id")
    for r in m.itertuples():
        assert r.lesion_id == meta.loc[r.source_id, "lesion_id"]
        assert r.patient_id == meta.loc[r.source_id, "patient_id"]
        assert r.path.endswith(f"{r.source_id}.png")


def test_isic_download_flow_with_fake_cli(tmp_path, shared_data, monkeypatch):
    fixture = tmp_path / "fixture"
    _isic_fixture(fixture, shared_data)
    calls = []

    def fake_run(cmd, timeout_s, log_path, what):
        calls.append((cmd, timeout_s))
        out = cmd[-1]
        label = out.rstrip("/").split("/")[-1]
        shutil.copytree(fixture / label, out, dirs_exist_ok=True)

    monkeypatch.setattr(isic, "probe", lambda api=isic.APIS["prod"]: None)
    monkeypatch.setattr(isic, "run_isic", fake_run)
    spec = {
        "source": "isic",
        "isic": {
            "search": "image_type:dermoscopic",
            "per_class": 3,
            "timeout_s": 60,
            "class_queries": {"benign": 'diagnosis_1:"Benign"', "malignant": 'diagnosis_1:"Malignant"'},
        },
    }
    m, rej = _acquire("isic", spec, tmp_path)
    assert len(calls) == 2 and all(t == 60 for _, t in calls)
    assert 'diagnosis_1:"Benign" AND image_type:dermoscopic' in calls[0][0]
    assert calls[0][0][-1].endswith("isic_raw/benign")
    assert len(m) == 5 and len(rej) == 2


def test_isic_cli_is_installed():
    out = subprocess.run(isic.isic_executable() + ["--version"], capture_output=True, text=True, timeout=60)
    assert "12.4.0" in out.stdout + out.stderr


def test_data_report_section_counts_rejected_hair_and_leakage(tmp_path, bad_inputs):
    from dermsynth import hair, splits
    from dermsynth.data import summary

    root, expected_rejected, _ = bad_inputs
    _acquire("isic", {"source": "folder", "folder": {"path": str(root)}}, tmp_path, out="real")
    spec = {"source": "demo", "demo": {"n_per_class": 4, "size": 64, "hair_fraction": 0.5}}
    _acquire("demo", spec, tmp_path, out="demo")
    raw = {d: str(tmp_path / d / "manifest.csv") for d in ("real", "demo")}
    rejected = {d: str(tmp_path / d / "rejected.csv") for d in raw}
    clean = {}
    for d in raw:
        clean[d] = str(tmp_path / d / "clean.csv")
        hair.remove_hair_dataset(raw[d], tmp_path / d / "clean", clean[d], {})
    splits.make_splits(
        clean, {d: {"val": 0.2, "test": 0.2} for d in raw}, 0, tmp_path / "s.csv", tmp_path / "l.csv"
    )
    text = summary.section_data(
        raw,
        rejected,
        clean,
        tmp_path / "s.csv",
        tmp_path / "l.csv",
        tmp_path / "data.md",
        tmp_path / "data_x.png",
    )
    assert (tmp_path / "data.md").read_text() == text
    assert f"{len(expected_rejected)} inputs were not used" in text
    for reason in set(expected_rejected.values()):
        assert f"| {reason} |" in text
    assert "| demo | 4 |" in text  # 4 hairy demo images scored against their truth
    assert "sections/data_x.png" in text and "Lesions in more than one split: 0." in text
    sheet = np.asarray(io.load_rgb(tmp_path / "data_x.png"))
    assert sheet.shape[1] > 4 * 150  # before, after, mask, truth
