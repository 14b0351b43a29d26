"""The detection check (the paper's Fig. 12): boxes from masks, training, scores and the report section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermsynth import detect, io, metrics, tiny
from dermsynth.errors import DataSourceError, ModelNotFoundError

CLASSES = ["benign", "malignant"]
FAST = {"image_size": 32, "batch_size": 8, "learning_rate": 1e-3, "augment_flip": False, "eval_batch_size": 8}


# ---------------------------------------------------------------- boxes


def test_mask_box_is_the_bounding_box_of_the_largest_component():
    mask = np.zeros((10, 20), bool)
    mask[2:6, 3:10] = True  # rows 2..5, columns 3..9: the lesion
    mask[8, 15:17] = True  # a two-pixel speck elsewhere is ignored
    # pixel edges: x from 3/20 to 10/20, y from 2/10 to 6/10
    assert detect.mask_box(mask) == pytest.approx((6.5 / 20, 4 / 10, 7 / 20, 4 / 10))
    assert detect.mask_box(np.zeros((4, 4), bool)) is None


def test_box_iou_by_hand():
    a = np.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2]])
    b = np.array([[0.6, 0.5, 0.2, 0.2], [0.9, 0.9, 0.1, 0.1]])
    # first pair: overlap 0.1 x 0.2 = 0.02 over 0.04 + 0.04 - 0.02; second pair: disjoint
    assert detect.box_iou(a, b) == pytest.approx([0.02 / 0.06, 0.0])


def test_training_rows_are_the_train_split_with_a_non_empty_mask(tmp_path):
    paths, masks = [], []
    for i in range(4):
        p = tmp_path / f"im{i}.png"
        Image.new("RGB", (10, 10), (200, 180, 170)).save(p)
        m = np.zeros((10, 10), np.uint8)
        m[1 + i : 5 + i, 2:6] = 255
        mp = tmp_path / f"mask{i}.png"
        Image.fromarray(m).save(mp)
        paths.append(str(p))
        masks.append(str(mp))
    manifest = pd.DataFrame(
        {
            "path": paths,
            "label": ["benign", "malignant"] * 2,
            "dataset": "isic",
            "source_id": ["a", "b", "c", "d"],
        }
    )
    splits = pd.DataFrame(
        {"dataset": "isic", "source_id": ["a", "b", "c", "d"], "split": ["train", "train", "val", "train"]}
    )
    table = pd.DataFrame(
        {"path": paths, "label": manifest["label"], "mask_path": masks, "status": ["ok", "empty", "ok", "ok"]}
    )
    for name, df in (("sd.csv", manifest), ("splits.csv", splits), ("masks.csv", table)):
        io.write_csv(tmp_path / name, df)
    rows = detect.with_boxes(
        detect.training_rows(
            [tmp_path / "sd.csv"], tmp_path / "splits.csv", [tmp_path / "masks.csv"], "train"
        )
    )
    # b has an empty mask, c is a validation image
    assert rows["path"].tolist() == [paths[0], paths[3]]
    assert rows[["cx", "cy", "w", "h"]].to_numpy() == pytest.approx(
        np.array([[0.4, 0.3, 0.4, 0.4], [0.4, 0.6, 0.4, 0.4]])
    )


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny YOLOS and 8 images, each a dark rectangle (its lesion box) on skin-coloured ground."""
    d = tmp_path_factory.mktemp("detect")
    model = tiny.build("yolos", d / "tiny-yolos", seed=0, image_size=32)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        a = np.full((32, 32, 3), (205, 170, 150), np.uint8)
        y0, x0 = rng.integers(2, 14, 2)
        a[y0 : y0 + 12, x0 : x0 + 10] = (60, 40, 30) if i % 2 else (140, 100, 80)
        p = d / f"im{i}.png"
        Image.fromarray(a).save(p)
        rows.append(
            {
                "path": str(p),
                "label": CLASSES[i % 2],
                "cx": (x0 + 5) / 32,
                "cy": (y0 + 6) / 32,
                "w": 10 / 32,
                "h": 12 / 32,
            }
        )
    return d, model, pd.DataFrame(rows)


def test_training_reduces_the_loss_repeatably_and_the_saved_model_predicts_the_same(tiny_data):
    d, model_dir, rows = tiny_data
    cfg = {**FAST, "epochs": 6}
    model, history = detect.train(rows, str(model_dir), CLASSES, d / "a", cfg, threads=1, device="cpu")
    assert len(history) == 6 and history["steps"].tolist() == [1] * 6
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    # the same seed, the same run
    _, again = detect.train(rows, str(model_dir), CLASSES, d / "b", cfg, threads=1, device="cpu")
    np.testing.assert_allclose(again["loss"], history["loss"], rtol=1e-5)
    # save/load round trip: the loaded detector gives the trained one's boxes and scores
    loaded, info = detect.load_trained(d / "a")
    assert info["classes"] == CLASSES and info["image_size"] == 32
    paths = rows["path"].tolist()
    before = detect.predict(model, info, paths, 8)
    after = detect.predict(loaded, info, paths, 3)  # another batch size too
    assert before["pred_label"].tolist() == after["pred_label"].tolist()
    np.testing.assert_allclose(
        after[["score", "cx", "cy", "w", "h"]], before[["score", "cx", "cy", "w", "h"]], atol=1e-5
    )
    assert set(before["pred_label"]) <= set(CLASSES)
    assert ((before["score"] > 0) & (before["score"] < 1)).all()


def test_a_missing_model_is_one_clear_line(tiny_data, tmp_path):
    _, _, rows = tiny_data
    missing = "results/models/tiny-nothing-here"
    with pytest.raises(ModelNotFoundError) as e:
        detect.train(rows, missing, CLASSES, tmp_path / "m", {**FAST, "epochs": 1}, device="cpu")
    msg = str(e.value)
    assert "\n" not in msg and missing in msg and "tiny_model rule" in msg
    with pytest.raises(DataSourceError) as e:
        detect.load_trained(tmp_path)  # a folder that is no trained detector
    assert "\n" not in str(e.value) and "train_detector" in str(e.value)


# ---------------------------------------------------------------- scores and section


def judged_by_hand() -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "path": [f"s{i}.png" for i in range(5)],
            "label": ["benign", "malignant", "benign", "malignant", "benign"],
            "sampler": ["a", "a", "a", "b", "b"],
        }
    )
    preds = pd.DataFrame(
        {
            "score": [0.9, 0.8, 0.3, 0.6, 0.7],
            "pred_label": ["benign", "benign", "malignant", "malignant", "malignant"],
            "cx": 0.5,
            "cy": 0.5,
            "w": 0.4,
            "h": 0.3,
        }
    )
    return detect.judge(df, preds, threshold=0.5)


def test_detection_rate_and_accuracy_equal_the_hand_count():
    j = judged_by_hand()
    # detected: score >= 0.5 -> images 0, 1, 3, 4; correct: detected with the label -> 0, 3
    assert j["detected"].tolist() == [True, True, False, True, True]
    assert j["correct"].tolist() == [True, False, False, True, False]
    t = detect.summary_table(j, n_boot=200, ci=0.9, seed=3).set_index("set")
    assert t.loc["all", ["n", "detection_rate", "accuracy", "accuracy_detected"]].tolist() == pytest.approx(
        [5, 0.8, 0.4, 0.5]
    )
    assert t.loc["a", ["n", "detection_rate", "accuracy"]].tolist() == pytest.approx([3, 2 / 3, 1 / 3])
    assert t.loc["b", ["n", "detection_rate", "accuracy"]].tolist() == pytest.approx([2, 1.0, 0.5])
    # the CI is the percentile interval of the resampled shares (same resamples as the classifier metrics)
    v = j["correct"].to_numpy(float)
    boots = [v[i].mean() for i in metrics.resample_indices(5, 200, 3)]
    lo, hi = np.quantile(boots, [0.05, 0.95])
    assert (t.loc["all", "accuracy_lo"], t.loc["all", "accuracy_hi"]) == pytest.approx((lo, hi))


def test_the_section_sets_the_papers_figure_beside_ours(tmp_path):
    j = judged_by_hand()
    paths = []
    for i in range(len(j)):
        p = tmp_path / f"s{i}.png"
        Image.new("RGB", (16, 16), (190, 150, 140)).save(p)
        paths.append(str(p))
    j["path"] = paths
    io.write_csv(tmp_path / "pred.csv", j)
    val = j.drop(columns=["sampler"]).assign(iou=[0.5, 0.7, 0.0, 1.0, 0.3])
    io.write_csv(tmp_path / "val.csv", val)
    io.write_csv(tmp_path / "hist.csv", pd.DataFrame({"epoch": [1, 2], "steps": [3, 3], "loss": [2.0, 1.5]}))
    out = tmp_path / "sections"
    table = detect.section_detect(
        tmp_path / "pred.csv",
        tmp_path / "val.csv",
        tmp_path / "hist.csv",
        out / "detect_r.md",
        out / "detect_r_boxes.png",
        tmp_path / "table.csv",
        cfg={"sheet_images": 2},
        paper_accuracy=72.0,
        detector="hustvl/yolos-tiny",
        n_boot=100,
    )
    md = (out / "detect_r.md").read_text()
    all_row = next(line for line in md.splitlines() if line.startswith("| all |"))
    assert "| 40.0 % [" in all_row and all_row.rstrip().endswith("| 72.0 % |")
    assert "| real validation | 5 |" in md and "mean box IoU with the mask box 0.50" in md
    assert "(sections/detect_r_boxes.png)" in md and "random-weight" not in md
    assert table.set_index("set").loc["all", "paper_accuracy"] == pytest.approx(0.72)
    with Image.open(out / "detect_r_boxes.png") as im:
        assert im.width > 2 * 128  # two thumbnails per row beside the row labels
    # a dataset without a validation split (val: 0): the row reads n = 0 and says why
    empty = detect.judge(
        pd.DataFrame(columns=["path", "label"]),
        pd.DataFrame(columns=["score", "pred_label", "cx", "cy", "w", "h"]),
        0.5,
    )
    io.write_csv(tmp_path / "val.csv", empty)
    args = [tmp_path / "pred.csv", tmp_path / "val.csv", tmp_path / "hist.csv", out / "e.md", out / "e.png"]
    detect.section_detect(*args, tmp_path / "t.csv", cfg={"sheet_images": 2}, n_boot=100)
    md = (out / "e.md").read_text()
    assert "| real validation | 0 | — | — | — |" in md and "no validation images" in md
