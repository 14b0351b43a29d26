"""Issue 25, part "can a classifier tell them apart?": the C2ST of the quality stage on real images.

Two halves of 600 real HAM10000 images (200x150; a seeded split stratified by diagnosis, no lesion
in both halves) should be indistinguishable: the held-out AUROC's CI must cover 0.5
(``c2st_auroc_same``). One half against the other half visibly shifted (a warm colour cast and a
Gaussian blur, the kind of drift a generator shows) must be found: AUROC >= 0.9
(``c2st_auroc_shifted``). The same on the 200 ISIC images (``isic_*``) shows the power at a third of
the sample. Features: the quality stage's fixed random conv encoder (``quality.features: tiny``) at
64 px, so the figures need no model download; the C2ST settings are the schema's defaults.

    python benchmarks/_evaluation_c2st.py            # quick (~20 s on 2 cores)
    python benchmarks/_evaluation_c2st.py --full     # 2000 HAM10000 images
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from dermsynth import config, fidelity, quality  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SIZE = 64
#: the shift: per-channel gain (warm cast) and blur sigma in px at 64 px
GAIN, BLUR_SIGMA = (1.12, 1.0, 0.85), 1.2


def images(dataset: str, n: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(paths, labels, lesion ids): the ISIC images, or a seeded sample of ``n`` HAM10000 images."""
    if dataset == "isic":
        paths = sorted((DATA / "isic").glob("*/*.jpg"))
        return [str(p) for p in paths], [p.parent.name for p in paths], [p.stem for p in paths]
    import pandas as pd

    meta = pd.read_csv(DATA / "ham10000_200x150" / "metadata.csv").sort_values("image_id")
    meta = meta.sample(n=min(n, len(meta)), random_state=seed)
    paths = [str(DATA / "ham10000_200x150" / "images" / f"{i}.jpg") for i in meta["image_id"]]
    return paths, meta["dx"].astype(str).tolist(), meta["lesion_id"].astype(str).tolist()


def shift(x: torch.Tensor) -> torch.Tensor:
    """A warm colour cast and a Gaussian blur on uint8 (B, 3, H, W)."""
    r = int(3 * BLUR_SIGMA)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * BLUR_SIGMA**2))
    k = k / k.sum()
    y = x.float() * torch.tensor(GAIN).view(1, 3, 1, 1)
    y = torch.nn.functional.pad(y, (r, r, r, r), mode="reflect")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    y = torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return y.round().clamp(0, 255).to(torch.uint8)


def same_and_shifted(dataset: str, n: int, q: dict) -> dict:
    """C2ST of one real half against the other half, and against the other half shifted."""
    c = q["c2st"]
    paths, labels, lesions = images(dataset, n, q["seed"])
    x = quality.load_uint8(paths, SIZE, threads=2)
    enc = quality.TinyEncoder(seed=q["seed"], size=SIZE)
    # halves with the same class mix and no lesion in both (HAM10000 has several images per lesion)
    split = StratifiedGroupKFold(2, shuffle=True, random_state=q["seed"])
    ia, ib = next(split.split(np.zeros(len(x)), labels, lesions))
    fa, fb, fs = (enc(v).double().numpy() for v in (x[ia], x[ib], shift(x[ib])))
    args = (c["test_fraction"], c["regularization"], c["bootstrap"], c["ci"], q["seed"])
    same, shifted = fidelity.c2st(fa, fb, *args), fidelity.c2st(fa, fs, *args)
    return {
        "same": same["c2st_auroc"],
        "same_ci": [same["c2st_lo"], same["c2st_hi"]],
        "shifted": shifted["c2st_auroc"],
        "shifted_ci": [shifted["c2st_lo"], shifted["c2st_hi"]],
        "n_images": len(x),
        "n_test": same["c2st_n_test"],
    }


def run(quick: bool = True) -> dict:
    t0 = time.time()
    torch.set_num_threads(2)
    q = config.section("quality", {"features": "tiny", "image_size": SIZE})
    ham = same_and_shifted("ham10000", 600 if quick else 2000, q)
    isic = same_and_shifted("isic", 0, q)
    return {
        "c2st_auroc_same": ham["same"],
        "c2st_auroc_shifted": ham["shifted"],
        "c2st_auroc_same_ci": ham["same_ci"],
        "c2st_auroc_shifted_ci": ham["shifted_ci"],
        "same_ci_covers_half": bool(ham["same_ci"][0] <= 0.5 <= ham["same_ci"][1]),
        "data": f"ham10000_200x150: {ham['n_images']} real images, halves split by lesion and dx",
        "n_test": ham["n_test"],
        # the 200 ISIC images: the same test with a third of the images, for the power at small n
        "isic_c2st_auroc_same": isic["same"],
        "isic_c2st_auroc_same_ci": isic["same_ci"],
        "isic_c2st_auroc_shifted": isic["shifted"],
        "isic_c2st_auroc_shifted_ci": isic["shifted_ci"],
        "shift": {"gain_rgb": list(GAIN), "blur_sigma_px": BLUR_SIGMA, "size_px": SIZE},
        "features": "tiny random conv encoder (256 features)",
        "c2st": {k: q["c2st"][k] for k in ("test_fraction", "regularization", "bootstrap", "ci")},
        "seconds": round(time.time() - t0, 1),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="2000 HAM10000 images instead of 600")
    print(json.dumps(run(quick=not p.parse_args().full)))
