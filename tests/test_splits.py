"""Lesion-grouped stratified splits, duplicate/leakage handling, split selection, training regimes."""

import logging

import cv2
import pandas as pd
import pytest

from dermsynth import io, splits
from dermsynth.data import demo
from dermsynth.errors import ConfigError

CLASSES = ["benign", "malignant"]
LABEL = {
    "mel": "malignant",
    "bcc": "malignant",
    "akiec": "malignant",
    "nv": "benign",
    "bkl": "benign",
    "df": "benign",
    "vasc": "benign",
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _manifest(rows, dataset, path):
    df = pd.DataFrame(rows)
    df["dataset"] = dataset
    df["sha256"] = [io.sha256_file(p) for p in df["path"]]
    io.write_csv(path, df)
    return path


def _ham_rows(shared_data, image_ids, folder="ham10000_200x150", prefix=""):
    meta = pd.read_csv(shared_data / "ham10000_200x150" / "metadata.csv").set_index("image_id")
    return [
        {
            "path": str(shared_data / folder / "images" / f"{i}.jpg"),
            "label": LABEL[meta.loc[i, "dx"]],
            "source_id": prefix + i,
            "lesion_id": prefix + meta.loc[i, "lesion_id"],
        }
        for i in image_ids
    ]


def _run(tmp_path, manifests, fractions, seed=0, **kw):
    out = splits.make_splits(
        manifests, fractions, seed, tmp_path / "splits.csv", tmp_path / "leakage.csv", **kw
    )
    return out, io.read_csv(tmp_path / "leakage.csv")


def test_phash_survives_resize_and_recompression(shared_data):
    a = shared_data / "ham10000" / "images" / "ISIC_0024320.jpg"
    b = shared_data / "ham10000_200x150" / "images" / "ISIC_0024320.jpg"
    c = shared_data / "ham10000" / "images" / "ISIC_0024321.jpg"
    ha, hb, hc = (int(splits.phash(p), 16) for p in (a, b, c))
    assert bin(ha ^ hb).count("1") <= 4
    assert bin(ha ^ hc).count("1") > 6


def test_lesion_grouped_stratified_and_deterministic(tmp_path, shared_data):
    meta = pd.read_csv(shared_data / "ham10000_200x150" / "metadata.csv")
    multi = meta[meta.lesion_id.duplicated(keep=False)]
    ids = pd.concat(
        [
            multi[multi.lesion_id.isin(multi.lesion_id.unique()[:90])],
            meta[~meta.lesion_id.duplicated(keep=False)].head(160),
        ]
    ).image_id
    m = _manifest(_ham_rows(shared_data, ids), "ham", tmp_path / "m.csv")
    out, _ = _run(tmp_path, {"ham": m}, {"ham": {"val": 0.2, "test": 0.2}}, seed=1)
    assert list(out.columns) == splits.SPLIT_COLUMNS and len(out) == len(ids)
    assert out.groupby("lesion_id")["split"].nunique().max() == 1  # no lesion in two splits
    assert out.groupby("lesion_id").size().max() >= 2
    for _, g in out.groupby("label"):
        frac = g["split"].value_counts(normalize=True)
        assert abs(frac.get("val", 0) - 0.2) < 0.06 and abs(frac.get("test", 0) - 0.2) < 0.06
    again, _ = _run(tmp_path, {"ham": m}, {"ham": {"val": 0.2, "test": 0.2}}, seed=1)
    other, _ = _run(tmp_path, {"ham": m}, {"ham": {"val": 0.2, "test": 0.2}}, seed=2)
    assert list(again["split"]) == list(out["split"])
    assert list(other["split"]) != list(out["split"])
    with pytest.raises(ConfigError, match="val"):
        _run(tmp_path, {"ham": m}, {"ham": {"val": 0.6, "test": 0.6}})


def test_cross_resolution_copies_never_straddle_train_and_test(tmp_path, shared_data):
    full = sorted(p.stem for p in (shared_data / "ham10000" / "images").glob("*.jpg"))
    shared_ids, other_full = full[:14], full[14:22]
    meta = pd.read_csv(shared_data / "ham10000_200x150" / "metadata.csv")
    extra = meta[~meta.image_id.isin(full)].image_id.head(46).tolist()
    small = _manifest(_ham_rows(shared_data, shared_ids + extra), "isic", tmp_path / "small.csv")
    # the full-resolution copies come from "another source": new ids, so only the pixels can tell
    big = _manifest(
        _ham_rows(shared_data, shared_ids + other_full, "ham10000", prefix="copy-"),
        "ham10000",
        tmp_path / "big.csv",
    )
    out, leak = _run(
        tmp_path,
        {"isic": small, "ham10000": big},
        {"isic": {"val": 0.2, "test": 0.2}, "ham10000": {"val": 0, "test": 1.0}},
    )
    split = out.set_index(["dataset", "source_id"])["split"]
    assert set(out.loc[out.dataset == "ham10000", "split"]) <= {"test", "excluded"}
    found = leak[(leak.dataset_a != leak.dataset_b)]
    pairs = {frozenset((a, b)) for a, b in zip(found.source_id_a, found.source_id_b, strict=True)}
    assert {frozenset((i, f"copy-{i}")) for i in shared_ids} <= pairs
    assert found["kind"].str.contains("phash").all()
    for i in shared_ids:
        s, c = split[("isic", i)], split[("ham10000", f"copy-{i}")]
        assert c == ("test" if s == "test" else "excluded")
    assert (split.loc["isic"] == "train").sum() > 20  # train never loses an image
    assert all(split[("ham10000", f"copy-{i}")] == "test" for i in other_full)  # no false alarms
    assert {"excluded_a", "excluded_b"} & set(found["action"])  # the case was exercised


def _demo_files(tmp_path, name, n):
    rows = []
    for i in range(n):
        label = CLASSES[i % 2]
        img, _ = demo.make_image(7, name, label, i, 0, 96, "isic", CLASSES, hair=False)
        p = tmp_path / name / f"{name}-{i}.png"
        io.save_png(p, img)
        rows.append({"path": str(p), "label": label, "source_id": f"{name}-{i}", "lesion_id": f"{name}-L{i}"})
    return rows


def _recompressed_copy(src, dst, size=72, quality=70):
    img = cv2.imread(str(src))
    small = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(dst), small, [cv2.IMWRITE_JPEG_QUALITY, quality])


def test_planted_duplicates_within_and_across_datasets(tmp_path):
    a_rows = _demo_files(tmp_path, "a", 24)
    # within a: a near copy of a-0 under another lesion id must land in a-0's split
    _recompressed_copy(a_rows[0]["path"], tmp_path / "a" / "a-copy.jpg")
    a_rows.append(
        {
            **a_rows[0],
            "path": str(tmp_path / "a" / "a-copy.jpg"),
            "source_id": "a-copy",
            "lesion_id": "a-Lcopy",
        }
    )
    b_rows = _demo_files(tmp_path, "b", 6)
    for i, r in enumerate(a_rows[1:13], start=1):  # near copies of a-1..a-12 in dataset b
        dst = tmp_path / "b" / f"near-{i}.jpg"
        _recompressed_copy(r["path"], dst, size=64 + i, quality=60 + 2 * i)
        b_rows.append({**r, "path": str(dst), "source_id": f"near-{i}", "lesion_id": f"near-L{i}"})
    b_rows.append({**a_rows[13], "source_id": "exact-13", "lesion_id": "exact-L13"})  # same file
    clash = tmp_path / "b" / "clash.png"  # an id clash (same ISIC id in two datasets), other pixels
    io.save_png(clash, demo.make_image(9, "z", "benign", 0, 0, 96, "ham10000", CLASSES, False)[0])
    b_rows.append({"path": str(clash), "label": "benign", "source_id": "a-14", "lesion_id": "b-L14"})
    other = tmp_path / "b" / "other-view.png"  # another photo of lesion a-L15 (known lesion id)
    io.save_png(other, demo.make_image(9, "z", "benign", 1, 0, 96, "ham10000", CLASSES, False)[0])
    b_rows.append({"path": str(other), "label": "benign", "source_id": "b-15", "lesion_id": "a-L15"})
    ma = _manifest(a_rows, "a", tmp_path / "a.csv")
    mb = _manifest(b_rows, "b", tmp_path / "b.csv")
    out, leak = _run(tmp_path, {"a": ma, "b": mb}, {"a": {"val": 0.25, "test": 0.25}, "b": {"test": 1.0}})
    split = out.set_index(["dataset", "source_id"])["split"]
    assert split[("a", "a-copy")] == split[("a", "a-0")]
    within = leak[leak.dataset_a == leak.dataset_b]
    assert len(within) == 1 and within["action"].iat[0] == "grouped"
    kinds = {(r.source_id_a, r.source_id_b): r.kind for r in leak.itertuples()}
    assert all("phash" in kinds[(f"a-{i}", f"near-{i}")] for i in range(1, 13))
    assert "sha256" in kinds[("a-13", "exact-13")]
    assert "source_id" in kinds[("a-14", "a-14")]
    assert kinds[("a-15", "b-15")] == "lesion_id"
    cross = leak[leak.dataset_a != leak.dataset_b]
    assert len(cross) == 15  # 12 near + 1 exact + 1 id + 1 lesion; nothing else among similar demo lesions
    for r in cross.itertuples():
        sa, sb = split[(r.dataset_a, r.source_id_a)], split[(r.dataset_b, r.source_id_b)]
        assert sb == ("test" if sa == "test" else "excluded")
        assert sa != "excluded"


def test_select(tmp_path):
    man = pd.DataFrame(
        {
            "path": list("abcd"),
            "label": ["benign"] * 4,
            "dataset": ["x", "x", "y", "y"],
            "source_id": ["1", "2", "1", "3"],
            "sha256": list("abcd"),
        }
    )
    sp = pd.DataFrame(
        {
            "dataset": ["x", "x", "y", "y"],
            "source_id": ["1", "2", "1", "3"],
            "split": ["train", "test", "test", "excluded"],
        }
    )
    io.write_csv(tmp_path / "s.csv", sp)
    assert list(splits.select(man, tmp_path / "s.csv", "test")["path"]) == ["b", "c"]
    assert list(splits.select(man, sp, "test", datasets=["y"])["path"]) == ["c"]
    assert list(splits.select(man, sp, "train")["path"]) == ["a"]
    with pytest.raises(ConfigError):
        splits.select(man, sp, "holdout")


def _frame(n_b, n_m, origin):
    labels = ["benign"] * n_b + ["malignant"] * n_m
    return pd.DataFrame(
        {
            "path": [f"{origin}/{i}.png" for i in range(len(labels))],
            "label": labels,
            "dataset": origin,
            "source_id": [f"{origin}{i}" for i in range(len(labels))],
            "sha256": "x",
        }
    )


def test_make_regime_hits_fraction_and_is_deterministic(caplog):
    real, syn = _frame(30, 10, "real"), _frame(200, 200, "syn")
    h = splits.make_regime(real, syn, "hybrid", 0.75, 0, CLASSES)
    assert (h["origin"] == "synthetic").mean() == pytest.approx(0.75, abs=0.01)
    counts = h.groupby(["label", "origin"]).size().to_dict()
    assert counts == {
        ("benign", "real"): 30,
        ("benign", "synthetic"): 90,
        ("malignant", "real"): 10,
        ("malignant", "synthetic"): 30,
    }
    assert h["source_id"].is_unique
    assert list(splits.make_regime(real, syn, "hybrid", 0.75, 0, CLASSES)["path"]) == list(h["path"])
    assert list(splits.make_regime(real, syn, "hybrid", 0.75, 1, CLASSES)["path"]) != list(h["path"])
    r = splits.make_regime(real, syn, "real", 0.75, 0, CLASSES)
    assert len(r) == 40 and set(r["origin"]) == {"real"}
    s = splits.make_regime(real, syn, "synthetic", 0.75, 0, CLASSES)
    assert len(s) == 400 and set(s["origin"]) == {"synthetic"}
    with caplog.at_level(logging.WARNING, logger="dermsynth"):
        few = splits.make_regime(real, _frame(5, 50, "syn"), "hybrid", 0.75, 0, CLASSES)
    assert "only 5" in caplog.text
    assert few.groupby(["label", "origin"]).size()[("benign", "synthetic")] == 5
    with pytest.raises(ConfigError, match="real, hybrid, synthetic"):
        splits.make_regime(real, syn, "mixed", 0.75, 0, CLASSES)


def test_groups_fall_back_to_patient_and_patient_groups(tmp_path):
    rows = _demo_files(tmp_path, "p", 40)
    for k, r in enumerate(rows):
        r["lesion_id"] = r["source_id"]  # "unknown" lesion, as the data stage writes it
        r["patient_id"] = f"P{k // 4}"  # 10 patients with 4 images each
    m = _manifest(rows, "p", tmp_path / "p.csv")
    out, _ = _run(tmp_path, {"p": m}, {"p": {"val": 0.2, "test": 0.2}})
    assert out.groupby("lesion_id").size().eq(4).all()  # grouped by patient
    assert out.groupby("lesion_id")["split"].nunique().max() == 1
    rows[0]["lesion_id"], rows[5]["lesion_id"] = "L-a", "L-a"  # patients P0 and P1 share a lesion
    m = _manifest(rows, "p", tmp_path / "p.csv")
    out, _ = _run(tmp_path, {"p": m}, {"p": {"val": 0.2, "test": 0.2}}, patient_groups=True)
    split = out.set_index("source_id")["split"]
    assert split[[r["source_id"] for r in rows[:8]]].nunique() == 1  # P0, P1 and the lesion: one split


def test_real_ham10000_all_124_copies_found_no_false_pair_no_straddle(tmp_path, shared_data):
    """The 124 full-resolution HAM10000 images against their 200x150 copies among ~400 other images.

    benchmarks/dedup.py runs the same check on all 10,015 + 124 images.
    """
    meta = pd.read_csv(shared_data / "ham10000_200x150" / "metadata.csv")
    full = sorted(p.stem for p in (shared_data / "ham10000" / "images").glob("*.jpg"))
    assert len(full) == 124
    # whole lesions: every lesion of the copies, the known same-photo pair under two lesion ids,
    # 150 multi-image lesions and 100 single-image ones
    twins = {"ISIC_0030074", "ISIC_0025226"}
    counts = meta.lesion_id.value_counts()
    lesions = set(meta.loc[meta.image_id.isin(full) | meta.image_id.isin(twins), "lesion_id"])
    lesions |= set(counts[counts > 1].index[::10][:150]) | set(counts[counts == 1].index[::50][:100])
    small_ids = meta.loc[meta.lesion_id.isin(lesions), "image_id"].tolist()
    small = _manifest(_ham_rows(shared_data, small_ids), "ham200", tmp_path / "small.csv")
    # the copies come with other image and lesion ids: only the pixels can pair them
    big = _manifest(_ham_rows(shared_data, full, "ham10000", prefix="copy-"), "ham600", tmp_path / "big.csv")
    out, leak = _run(
        tmp_path,
        {"ham200": small, "ham600": big},
        {"ham200": {"val": 0.15, "test": 0.2}, "ham600": {"val": 0, "test": 1.0}},
        threads=2,
    )
    true_lesion = meta.set_index("image_id")["lesion_id"]
    key = {
        (d, s): true_lesion[s.replace("copy-", "")] for d, s in zip(out.dataset, out.source_id, strict=True)
    }
    ph = leak[leak["kind"].str.contains("phash")]
    found = {a for a, b in zip(ph.source_id_a, ph.source_id_b, strict=True) if b == f"copy-{a}"}
    assert found == set(full)  # all 124
    wrong = {
        frozenset((r.source_id_a, r.source_id_b))
        for r in ph.itertuples()
        if key[(r.dataset_a, r.source_id_a)] != key[(r.dataset_b, r.source_id_b)]
    }
    assert wrong == {frozenset(twins)}  # the only cross-lesion match: one photo filed under two lesions
    assert ph["hamming"].max() <= 6
    # no lesion (true HAM10000 id, over both datasets) in two splits among the images kept
    out["true_lesion"] = [key[k] for k in zip(out.dataset, out.source_id, strict=True)]
    kept = out[out.split != "excluded"]
    assert kept.groupby("true_lesion")["split"].nunique().max() == 1
    assert out[out.dataset == "ham200"].groupby("lesion_id").size().max() >= 2
    split = out.set_index("source_id")["split"]
    assert split["ISIC_0030074"] == split["ISIC_0025226"]  # the twin photos were grouped
    assert split[[f"copy-{i}" for i in full]].isin(["test", "excluded"]).all()
