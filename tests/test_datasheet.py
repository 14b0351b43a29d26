"""The synthetic set's datasheet and imagefolder metadata.jsonl, checked against the manifests."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from dermsynth import datasheet, io
from dermsynth.config import validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(tmp_path):
    """A run folder: 2 classes x 2 samplers x 3 images, one rejected as blurry, one as memorized."""
    root = tmp_path / "results" / "synthetic" / "r"
    rows = []
    rng = np.random.default_rng(0)
    for label in ("benign", "malignant"):
        for sampler in ("euler", "plms"):
            d = root / label / sampler / "000"
            d.mkdir(parents=True)
            for i in range(3):
                p = d / f"{label}_{sampler}_{i}.png"
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(p)
                rows.append(
                    {
                        "path": str(p),
                        "label": label,
                        "sha256": io.sha256_file(p),
                        "seed": 2**40 + i,
                        "prompt": f"a {label} lesion" + (", large mole" if i == 2 else ""),
                        "negative_prompt": "",
                        "sampler": sampler,
                        "steps": 20 + i,
                        "guidance_scale": 7.0,
                        "resolution": 8,
                        "lora_scale": 1.0,
                        "modifiers": "size=large" if i == 2 else "size=typical",
                        "lora_sha256": "ab" * 32,
                        "base_model": "base",
                    }
                )
    made = pd.DataFrame(rows)
    manifests = []
    for (label, sampler), part in made.groupby(["label", "sampler"]):
        m = root / label / sampler / "manifest.csv"
        part.to_csv(m, index=False)
        manifests.append(str(m))
    rejected = made.iloc[[1, 7]][["path", "label", "sampler"]].assign(reason=["blurry", "memorized"])
    kept = made.drop(index=[1, 7])
    kept.to_csv(tmp_path / "kept.csv", index=False)
    rejected.to_csv(tmp_path / "rejected.csv", index=False)
    pd.DataFrame(
        {
            "path": made["path"],
            "similarity": np.linspace(0.1, 0.999, len(made)),
            "memorized": [False] * 11 + [True],
        }
    ).to_csv(tmp_path / "nearest.csv", index=False)
    pd.DataFrame(
        {
            "path": ["a", "b", "c"],
            "dataset": ["isic", "isic", "ham10000"],
            "license": ["CC-0", "CC-BY", "CC-BY-NC-4.0"],
        }
    ).to_csv(tmp_path / "finetune.csv", index=False)
    cfg = validate(
        yaml.safe_load((ROOT / "config" / "demo.yaml").read_text()), ROOT / "config" / "schema.yaml"
    )
    images = datasheet.write(
        manifests,
        tmp_path / "kept.csv",
        tmp_path / "rejected.csv",
        tmp_path / "nearest.csv",
        tmp_path / "finetune.csv",
        cfg,
        "r",
        root / "DATASHEET.md",
        root / "metadata.jsonl",
    )
    return root, made, rejected, images


def test_metadata_jsonl_lists_every_image_with_its_manifest_row_and_verdict(run):
    root, made, rejected, _ = run
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == len(made)
    by_path = made.set_index("path")
    reasons = dict(zip(rejected["path"], rejected["reason"], strict=True))
    for r in rows:
        path = str(root / r["file_name"])
        assert io.sha256_file(path) == r["sha256"] == by_path.loc[path, "sha256"]
        for col in ("label", "prompt", "sampler", "steps", "seed", "modifiers", "guidance_scale"):
            assert r[col] == by_path.loc[path, col], col
        assert r["verdict"] == reasons.get(path, "kept")


def test_imagefolder_loads_the_set_with_its_columns(run):
    datasets = pytest.importorskip("datasets")
    root, made, _, _ = run
    ds = datasets.load_dataset("imagefolder", data_dir=str(root), split="train")
    assert ds.num_rows == len(made)
    assert {"image", "label", "prompt", "sampler", "steps", "seed", "modifiers", "verdict"} <= set(
        ds.column_names
    )
    assert sorted(ds["verdict"]).count("kept") == len(made) - 2
    assert ds[0]["image"].size == (8, 8)


def test_datasheet_counts_and_licences_match_the_inputs(run):
    root, made, rejected, images = run
    text = (root / "DATASHEET.md").read_text()
    assert f"{len(made)} images on disk, {len(made) - 2} kept" in text
    assert "blurry: 1" in text and "memorized: 1" in text
    # per class x sampler x modifier: benign/euler has 2 typical (1 of them blurry) and 1 large
    assert "| benign | euler | size=typical | 1 | 1 | 1 | 0 |" in text
    assert "| malignant | euler | size=typical | 1 | 1 | 0 | 1 |" in text
    assert "| benign | plms | size=large | 1 | 0 | 0 | 0 |" in text
    for dataset, licence in (("isic", "CC-0"), ("isic", "CC-BY"), ("ham10000", "CC-BY-NC-4.0")):
        assert f"| {dataset} | {licence} | 1 |" in text
    assert f"`{'ab' * 32}`" in text and "`base`" in text
    assert "Not for:** diagnosis" in text
    assert "1 image(s) at or above 0.997 were rejected as `memorized`" in text
