"""The real images in ../shared/data through `source: folder`: download -> dullrazor -> resize -> split.

Snakemake runs the data stages of the workflow on three real datasets: ISIC Archive images from a
``path,label`` CSV, full-resolution HAM10000 in its own layout (metadata.csv + images/), and the
200x150 HAM10000 copy in the same layout, which holds the same photographs again. The config is
written with absolute paths, since a config cannot know where the repository sits.
"""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dermsynth import io

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
# a Snakemake run of 13 jobs (~20-50 s): with the end-to-end tests, not in `make test`
pytestmark = pytest.mark.e2e


def _ham_subset(src: Path, dst: Path, ids: list[str]) -> Path:
    """A HAM10000 folder (metadata.csv + images/) with only ``ids``, images as symlinks."""
    (dst / "images").mkdir(parents=True)
    meta = pd.read_csv(src / "metadata.csv")
    meta[meta.image_id.isin(ids)].to_csv(dst / "metadata.csv", index=False)
    for i in ids:
        (dst / "images" / f"{i}.jpg").symlink_to(src / "images" / f"{i}.jpg")
    return dst


def test_folder_sources_through_the_data_stages(tmp_path, shared_data):
    labels = pd.read_csv(shared_data / "labels.csv")
    isic = pd.concat(
        [labels[(labels.dataset == "isic") & (labels.label == c)].head(6) for c in ("benign", "malignant")]
    )
    isic = isic.assign(path=[str(shared_data / p) for p in isic.path])
    isic.to_csv(tmp_path / "isic.csv", index=False)
    full = sorted(p.stem for p in (shared_data / "ham10000" / "images").glob("*.jpg"))[:16]
    small_meta = pd.read_csv(shared_data / "ham10000_200x150" / "metadata.csv")
    lesions = set(small_meta.loc[small_meta.image_id.isin(full), "lesion_id"])
    counts = small_meta.lesion_id.value_counts()
    lesions |= set(counts[counts > 1].index[:12]) | set(counts[counts == 1].index[:12])
    small = small_meta.loc[small_meta.lesion_id.isin(lesions), "image_id"].tolist()
    ham = _ham_subset(shared_data / "ham10000", tmp_path / "ham", full)
    ham200 = _ham_subset(shared_data / "ham10000_200x150", tmp_path / "ham200", small)
    (ham200 / "images" / "broken.jpg").write_bytes(b"")  # an empty file beside the images: not listed

    cfg = {
        "datasets": {
            "isic": {
                "source": "folder",
                "folder": {"csv": str(tmp_path / "isic.csv"), "filter_dataset": "isic", "max_side": 320},
                "split": {"val": 0.2, "test": 0.2},
            },
            "ham200": {
                "source": "folder",
                "folder": {"path": str(ham200)},
                "split": {"val": 0.2, "test": 0.2},
            },
            "ham10000": {
                "source": "folder",
                "folder": {"path": str(ham), "max_side": 320},
                "split": {"val": 0.0, "test": 1.0},
            },
        },
        "split": {
            "finetune_datasets": ["isic"],
            "train_datasets": ["isic", "ham200"],
            "test_datasets": ["isic", "ham10000"],
        },
        "preprocess": {"resize": {"diffusion": 64, "classifier": 32}},
    }
    (tmp_path / "real.yaml").write_text(yaml.safe_dump(cfg))
    out = subprocess.run(
        [
            SNAKEMAKE,
            "results/splits/splits.csv",
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(tmp_path),
            "--cores",
            "2",
            "--configfile",
            str(tmp_path / "real.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]

    res = tmp_path / "results"
    m = {d: io.read_csv(res / "data" / d / "raw" / "manifest.csv") for d in cfg["datasets"]}
    assert len(m["isic"]) == 12 and len(m["ham10000"]) == 16 and len(m["ham200"]) == len(small)
    assert (m["ham10000"][["width", "height"]].max(axis=1) <= 320).all()
    by_id = m["ham200"].set_index("source_id")
    meta = small_meta.set_index("image_id")
    assert (by_id["lesion_id"] == meta.loc[by_id.index, "lesion_id"]).all()
    mal = meta.loc[by_id.index, "dx"].isin(["mel", "bcc", "akiec"])
    assert (by_id.loc[mal, "label"] == "malignant").all() and (by_id.loc[~mal, "label"] == "benign").all()
    for d in cfg["datasets"]:
        clean = io.read_csv(res / "data" / d / "clean" / "manifest.csv")
        assert len(clean) == len(m[d]) and clean["mask_path"].str.len().gt(0).all()
        cls = io.read_csv(res / "data" / d / "cls32" / "manifest.csv")
        assert (cls["width"] == 32).all() and len(cls) == len(m[d])

    sp = io.read_csv(res / "splits" / "splits.csv")
    leak = io.read_csv(res / "splits" / "leakage.csv")
    # the full-resolution images and their 200x150 copies share ids (and lesions): all 16 found
    cross = leak[(leak.dataset_a != leak.dataset_b)]
    pairs = {frozenset((a, b)) for a, b in zip(cross.source_id_a, cross.source_id_b, strict=True)}
    assert {frozenset((i,)) for i in full} <= pairs
    copies = cross[cross.source_id_a == cross.source_id_b]
    assert copies["kind"].str.contains("phash").all() and len(copies) == 16
    # no lesion, over both HAM10000 datasets, in two splits among the images kept
    ham_sp = sp[sp.dataset.isin(["ham200", "ham10000"]) & (sp.split != "excluded")]
    assert ham_sp.groupby("lesion_id")["split"].nunique().max() == 1
    assert set(sp.loc[sp.dataset == "ham10000", "split"]) <= {"test", "excluded"}
    ft = io.read_csv(res / "splits" / "finetune.csv")
    assert set(ft["dataset"]) == {"isic"} and (ft["width"] == 64).all()
