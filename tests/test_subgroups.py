"""Subgroup results: clinical metadata from the data stage to the split manifests, per-group
sensitivity/specificity, the equalized-odds difference, "too few" groups, the demo's metadata."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermsynth import evaluation, io, skin_groups, skintone, splits, subgroups
from dermsynth.data import acquire, demo, folder
from dermsynth.imaging import resize_dataset
from dermsynth.report import subgroups as report_subgroups

CLASSES = ["benign", "malignant"]
LABEL_MAP = {"mel": "malignant", "bcc": "malignant", "akiec": "malignant", "nv": "benign", "bkl": "benign"}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


# ---------------------------------------------------------------- metadata through the data stage


def _ham_folder(root, n=12):
    """A HAM10000-style folder: images/ and HAM10000_metadata.csv, every image a different colour."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    rows = []
    dxs = ["mel", "nv", "bcc", "nv", "akiec", "bkl"]
    for i in range(n):
        image_id = f"ISIC_{i:07d}"
        pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg", quality=95)
        rows.append(
            {
                "lesion_id": f"HAM_{i:07d}",
                "image_id": image_id,
                "dx": dxs[i % len(dxs)],
                "dx_type": "histo",
                "age": "" if i == 3 else f"{20 + 5 * i}.0",
                "sex": ["male", "female", "unknown"][i % 3],
                "localization": ["back", "face", "trunk", "lower extremity"][i % 4],
            }
        )
    meta = pd.DataFrame(rows)
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    return meta


def test_clinical_columns_survive_import_resize_and_split(tmp_path):
    meta = _ham_folder(tmp_path / "ham").set_index("image_id")
    spec = {"source": "folder", "folder": {"path": str(tmp_path / "ham"), "label_map": LABEL_MAP}}
    raw = tmp_path / "raw" / "manifest.csv"
    acquire("ham10000", spec, tmp_path / "raw", raw, tmp_path / "raw" / "rejected.csv", 0, CLASSES)
    cls = tmp_path / "cls" / "manifest.csv"
    resize_dataset(raw, tmp_path / "cls", cls, 16)
    splits.write_split_manifests(
        {"ham10000": str(cls)},
        {"ham10000": str(cls)},
        {"ham10000": {"val": 0.0, "test": 0.5}},
        0,
        ["ham10000"],
        tmp_path / "splits.csv",
        tmp_path / "leakage.csv",
        tmp_path / "finetune.csv",
        tmp_path / "splits",
    )
    test = io.read_csv(tmp_path / "splits" / "ham10000" / "test.csv")
    train = io.read_csv(tmp_path / "splits" / "ham10000" / "train.csv")
    assert len(test) + len(train) == len(meta) and len(test) >= 4
    for df in (test, train):
        assert set(folder.CLINICAL_COLUMNS) <= set(df.columns)
        for r in df.to_dict("records"):
            m = meta.loc[r["source_id"]]
            assert r["dx"] == m["dx"] and r["sex"] == m["sex"] and r["localization"] == m["localization"]
            if m["age"] == "":
                assert pd.isna(r["age"])
            else:
                assert float(r["age"]) == float(m["age"])
    # ... and evaluation groups them
    st = subgroups.strata(test, None, [40, 60])
    for r, s in zip(test.to_dict("records"), st.to_dict("records"), strict=True):
        assert s["dx"] == r["dx"] and s["site"] == r["localization"]
        assert s["sex"] == ("" if r["sex"] == "unknown" else r["sex"])
        age = r["age"]
        want = "" if pd.isna(age) else "<40" if age < 40 else "40-59" if age < 60 else ">=60"
        assert s["age_band"] == want


def test_clinical_of_isic_cli_metadata():
    row = {
        "isic_id": "ISIC_1",
        "diagnosis_1": "Malignant",
        "diagnosis_3": "Melanoma Invasive",
        "age_approx": "55",
        "sex": "female",
        "anatom_site_general": "posterior torso",
    }
    assert folder.clinical_of(row) == {
        "dx": "mel",
        "sex": "female",
        "age": "55",
        "localization": "posterior torso",
    }
    assert folder.clinical_of({"diagnosis": "seborrheic keratosis"})["dx"] == "bkl"
    assert folder.clinical_of({})["dx"] == ""


def test_age_band_edges():
    edges = [30, 50, 70]
    got = [subgroups.age_band(a, edges) for a in (5, 29.9, 30, 49, 50, 69, 70, 85, "", None, "x")]
    assert got == ["<30", "<30", "30-49", "30-49", "50-69", "50-69", ">=70", ">=70", "", "", ""]


# ---------------------------------------------------------------- demo renderer


def test_demo_metadata_consistent_with_labels_and_images_unchanged(tmp_path):
    spec = {"n_per_class": 8, "domain": "isic", "size": 32, "images_per_lesion": 2}
    m, _ = demo.generate("d", spec, tmp_path / "demo", 3, CLASSES)
    assert set(folder.CLINICAL_COLUMNS) <= set(m.columns)
    for r in m.to_dict("records"):
        assert r["dx"] in demo.DEMO_DX[r["label"]]
        assert r["sex"] in demo.DEMO_SEXES and r["localization"] in demo.DEMO_SITES
        assert 5 <= r["age"] <= 85 and r["age"] % 5 == 0
    # views of one lesion share the patient's metadata; lesions differ
    per_lesion = m.groupby("lesion_id")[folder.CLINICAL_COLUMNS].nunique()
    assert (per_lesion == 1).all().all()
    assert m.drop_duplicates("lesion_id")["age"].nunique() > 1
    # the images are those of make_image: metadata took no draw from the images' streams
    for r in m.head(4).to_dict("records"):
        lesion, view = int(r["lesion_id"].rsplit("-", 1)[1]), int(r["source_id"].rsplit("-v", 1)[1])
        img, _ = demo.make_image(3, "d", r["label"], lesion, view, 32, "isic", CLASSES, False)
        assert np.array_equal(np.asarray(Image.open(r["path"]).convert("RGB")), img)


# ---------------------------------------------------------------- per-group numbers


def _toy():
    # group a: 4 malignant (3 found), 4 benign (1 false alarm); group b: 2 malignant (1 found),
    # 4 benign (2 false alarms); group c: 2 images only
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0])
    pred = np.array([1, 1, 1, 0, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0])
    g = np.array(["a"] * 8 + ["b"] * 6 + ["c"] * 2, dtype=object)
    return y, pred, g


def test_group_sensitivity_specificity_by_hand():
    y, pred, g = _toy()
    rows, eod = subgroups.group_results(y, pred.astype(float), g, min_size=3, n_boot=50, seed=1)
    by = {r["group"]: r for r in rows}
    assert by["a"]["sensitivity"]["value"] == pytest.approx(3 / 4)
    assert by["a"]["specificity"]["value"] == pytest.approx(3 / 4)
    assert by["a"]["accuracy"]["value"] == pytest.approx(6 / 8)
    assert by["b"]["sensitivity"]["value"] == pytest.approx(1 / 2)
    assert by["b"]["specificity"]["value"] == pytest.approx(2 / 4)
    assert (by["a"]["n"], by["a"]["n_pos"], by["b"]["n"], by["b"]["n_pos"]) == (8, 4, 6, 2)
    assert by["c"]["too_few"] and "sensitivity" not in by["c"] and by["c"]["n"] == 2
    for r in (by["a"], by["b"]):
        s = r["sensitivity"]
        assert s["lo"] <= s["value"] <= s["hi"]
    # the gap leaves c out: TPR 3/4 vs 1/2, FPR 1/4 vs 2/4 -> max(0.25, 0.25)
    assert eod["groups"] == ["a", "b"]
    assert eod["value"] == pytest.approx(0.25)
    assert eod["tpr_gap"] == pytest.approx(0.25) and eod["fpr_gap"] == pytest.approx(0.25)
    assert eod["lo"] <= eod["value"] <= eod["hi"]


def _fairlearn_eod(y, pred, g):
    """fairlearn's equalized_odds_difference (between_groups), written out from its definition."""
    tpr = [pred[(g == k) & (y == 1)].mean() for k in np.unique(g)]
    fpr = [pred[(g == k) & (y == 0)].mean() for k in np.unique(g)]
    return max(max(tpr) - min(tpr), max(fpr) - min(fpr))


def test_equalized_odds_difference_by_hand_and_fairlearn():
    y, pred, g = _toy()
    # three groups: TPR 3/4, 1/2, 0 -> 0.75; FPR 1/4, 1/2, 0 -> 0.5
    assert subgroups.equalized_odds_difference(y, pred, g) == pytest.approx(0.75)
    rng = np.random.default_rng(4)
    for _ in range(20):
        yy, pp = rng.integers(0, 2, 60), rng.integers(0, 2, 60)
        gg = rng.choice(np.array(["x", "y", "z"], dtype=object), 60)
        want = _fairlearn_eod(yy, pp, gg)
        assert subgroups.equalized_odds_difference(yy, pp, gg) == pytest.approx(want)
    try:
        from fairlearn.metrics import equalized_odds_difference
    except ImportError:
        return
    assert subgroups.equalized_odds_difference(yy, pp, gg) == pytest.approx(
        equalized_odds_difference(yy, pp, sensitive_features=gg)
    )


def test_equalized_odds_resampled_matches_one_at_a_time():
    y, pred, g = _toy()
    idx = np.random.default_rng(0).integers(0, len(y), (30, len(y)))
    got = subgroups.equalized_odds_resampled(y, pred, g, ["a", "b"], idx)["eod"]
    for row, v in zip(idx, got, strict=True):
        yy, pp, gg = y[row], pred[row], g[row]
        rates = []
        for k in ("a", "b"):
            pos, neg = (gg == k) & (yy == 1), (gg == k) & (yy == 0)
            rates.append((pp[pos].mean() if pos.any() else np.nan, pp[neg].mean() if neg.any() else np.nan))
        t, f = np.array(rates).T
        gaps = [abs(t[0] - t[1]), abs(f[0] - f[1])]
        gaps = [x for x in gaps if np.isfinite(x)]
        assert (v == pytest.approx(max(gaps))) if gaps else np.isnan(v)


# ---------------------------------------------------------------- evaluate and the report section


def _evaluate(tmp_path, monkeypatch, regime, seed, score, test, st):
    monkeypatch.setattr(evaluation, "predict", lambda *a, **k: score)
    d = tmp_path / regime / str(seed)
    evaluation.evaluate(
        d / "model",
        test,
        CLASSES,
        d / "toy.json",
        d / "toy_predictions.csv",
        n_boot=40,
        seed=seed,
        meta={"model": "vit", "regime": regime, "seed": seed, "testset": "toy"},
        strata=st,
        min_group_size=3,
    )
    return d / "toy.json"


def test_evaluate_writes_groups_and_the_section_hides_small_groups(tmp_path, monkeypatch):
    y, pred, g = _toy()
    test = pd.DataFrame(
        {"path": [f"im{i}.png" for i in range(len(y))], "label": [CLASSES[k] for k in y], "dx": "", "sex": g}
    )
    st = subgroups.strata(test, None, [50])
    assert list(st["sex"]) == list(g)
    jsons = [
        _evaluate(tmp_path, monkeypatch, "real", 0, pred.astype(float), test, st),
        _evaluate(tmp_path, monkeypatch, "hybrid", 0, (1 - pred).astype(float), test, st),
    ]
    d = json.loads(jsons[0].read_text())
    assert set(d["groups_by"]) == {"sex"}  # no other attribute names a group
    by = {r["group"]: r for r in d["groups_by"]["sex"]}
    assert by["b"]["specificity"]["value"] == pytest.approx(0.5) and by["c"]["too_few"]
    assert d["equalized_odds"]["sex"]["value"] == pytest.approx(0.25)
    assert "sex" in pd.read_csv(d["predictions"]).columns

    out = tmp_path / "report"
    text = report_subgroups.write_section(
        [str(p) for p in jsons],
        out / "subgroups.md",
        out / "groups.csv",
        out / "gaps.csv",
        {"bootstrap": 40, "ci": 0.95, "min_group_size": 3},
    )
    line_c = next(x for x in text.splitlines() if x.startswith("| c |"))
    assert "too few (n=2)" in line_c
    assert not any(ch.isdigit() for ch in line_c.replace("(n=2)", "").replace("2 (1)", ""))
    line_a = next(x for x in text.splitlines() if x.startswith("| a |"))
    assert "75.0 / 75.0" in line_a  # real: sensitivity 3/4, specificity 3/4
    gaps = pd.read_csv(out / "gaps.csv").set_index("regime")
    # hybrid predicts the opposite: TPR 1/4 vs 1/2, FPR 3/4 vs 1/2 -> 25 points, as real
    assert gaps.loc["real", "eod"] == pytest.approx(25.0) and gaps.loc["hybrid", "eod"] == pytest.approx(25.0)
    assert gaps.loc["hybrid − real", "eod"] == pytest.approx(0.0)
    assert gaps.loc["real", "groups"] == "a, b"


def test_skin_tone_of_a_plain_patch_is_its_ita(tmp_path):
    # light skin with a dark central lesion: ITA is that of the skin colour alone
    skin = np.array([230, 190, 170], np.uint8)
    img = np.tile(skin, (64, 64, 1))
    yy, xx = np.mgrid[0:64, 0:64]
    img[(yy - 32) ** 2 + (xx - 32) ** 2 < 12**2] = (60, 40, 30)
    Image.fromarray(img).save(tmp_path / "a.png")
    t = skin_groups.skin_tone_table([tmp_path / "a.png"], side=64)
    lab = skintone.srgb_to_lab(skin)
    want = skintone.ita_of_lab(lab[0], lab[2])
    assert t["ita"].iat[0] == pytest.approx(want, abs=0.5)
    assert t["skin_tone"].iat[0] == skintone.ita_group(want)
