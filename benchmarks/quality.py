"""Benchmark of the quality and segment stages on real HAM10000 images (200x150, with lesion masks).

Prints, last, one JSON line: feature_images_per_s, fid_same_set, fid_noise_levels (FID of real images
against the same images with increasing Gaussian noise; must increase), dice_classical_ham with its
bootstrap CI (>= 500 images), dice_sam_ham (SAM zero-shot on the same images where a GPU and the
weights are available, else null), device.

    python benchmarks/quality.py --quick               # CPU, < 2 min
    python benchmarks/quality.py --quick --only-dice   # just the classical Dice figures (CPU, ~15 s)
    python benchmarks/quality.py --device cuda --sam-model facebook/sam-vit-base
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from dermsynth import quality, segment  # noqa: E402
from dermsynth.errors import DermsynthError  # noqa: E402

HAM = Path(__file__).resolve().parents[2] / "shared" / "data" / "ham10000_200x150"
NOISE = (5, 10, 20, 40, 80)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU-sized run (< 2 min)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--ham", default=str(HAM), help="folder with images/ and masks/ (HAM10000 200x150)")
    p.add_argument("--n-seg", type=int, default=None, help="images for the Dice figures (>= 500)")
    p.add_argument("--n-fid", type=int, default=None, help="images for the FID figures")
    p.add_argument("--features", default="tiny", choices=("tiny", "inception"))
    p.add_argument("--sam-model", default="facebook/sam-vit-base")
    p.add_argument("--prompt", default="center_point", choices=segment.PROMPTS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--only-dice", action="store_true", help="only the classical segmentation figures (no FID, no SAM)"
    )
    return p.parse_args(argv)


def main(argv=None) -> dict:
    a = parse_args(argv)
    n_seg = a.n_seg or (500 if a.quick else 2000)
    n_fid = a.n_fid or (300 if a.quick else 2000)
    dev = (
        "cuda"
        if a.device == "auto" and torch.cuda.is_available()
        else ("cpu" if a.device == "auto" else a.device)
    )
    torch.set_num_threads(2 if dev == "cpu" else torch.get_num_threads())
    root = Path(a.ham)
    ids = sorted(p.name[: -len("_segmentation.png")] for p in (root / "masks").glob("*_segmentation.png"))
    rng = np.random.default_rng(a.seed)
    seg_ids = list(rng.choice(ids, min(n_seg, len(ids)), replace=False))
    out: dict = {
        "device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
        "n_seg": len(seg_ids),
        "features": a.features,
    }

    if not a.only_dice:
        _fid(a, out, root, seg_ids, n_fid, dev)
    _dice(a, out, root, seg_ids, dev)
    return out


def _fid(a, out: dict, root: Path, seg_ids: list, n_fid: int, dev: str) -> None:
    # features and FID
    fid_paths = [str(root / "images" / f"{i}.jpg") for i in seg_ids[:n_fid]]
    ex = quality.load_extractor(a.features, {"seed": a.seed}, device=dev)
    x = quality.load_uint8(fid_paths, ex.size, threads=2)
    t = time.perf_counter()
    feats = np.concatenate([ex(x[i : i + 64]).double().numpy() for i in range(0, len(x), 64)])
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    out["feature_images_per_s"] = round(len(x) / (time.perf_counter() - t), 1)
    out["fid_same_set"] = quality.fid(feats, feats)
    g = torch.Generator().manual_seed(a.seed)
    levels = []
    for sigma in NOISE:
        xn = (x.float() + sigma * torch.randn(x.shape, generator=g)).clamp(0, 255).to(torch.uint8)
        fn = np.concatenate([ex(xn[i : i + 64]).double().numpy() for i in range(0, len(xn), 64)])
        levels.append(round(quality.fid(feats, fn), 5))
    out["fid_noise_sigmas"] = list(NOISE)
    out["fid_noise_levels"] = levels
    out["fid_noise_monotonic"] = all(p < q for p, q in zip(levels, levels[1:], strict=False))


def _dice(a, out: dict, root: Path, seg_ids: list, dev: str) -> None:
    # classical segmentation vs the HAM10000 masks
    imgs = [np.asarray(Image.open(root / "images" / f"{i}.jpg").convert("RGB")) for i in seg_ids]
    # through convert("L"): 402 of these masks are palette PNGs whose raw indices read inverted
    truths = [segment.load_mask(root / "masks" / f"{i}_segmentation.png") for i in seg_ids]
    t = time.perf_counter()
    preds = [segment.classical_mask(im) for im in imgs]
    out["classical_masks_per_s"] = round(len(imgs) / (time.perf_counter() - t), 1)
    s = segment.score_masks(preds, truths, n_boot=1000, seed=a.seed)
    out["dice_classical_ham"] = round(s["dice"]["mean"], 4)
    out["dice_classical_ham_ci"] = [round(s["dice"]["lo"], 4), round(s["dice"]["hi"], 4)]
    out["dice_classical_ham_median"] = round(s["dice"]["median"], 4)
    out["iou_classical_ham"] = round(s["iou"]["mean"], 4)
    d = np.array([segment.dice(p, t) for p, t in zip(preds, truths, strict=True)])
    # the images at even / odd positions of the sample: tune on one half, check on the other
    out["dice_classical_ham_even_odd"] = [round(float(d[0::2].mean()), 4), round(float(d[1::2].mean()), 4)]

    # SAM zero-shot on the same images (GPU and weights needed)
    out["dice_sam_ham"] = None
    if a.only_dice:
        out["sam_note"] = "--only-dice: SAM not run"
        return
    if not dev.startswith("cuda"):
        out["sam_note"] = "no GPU: SAM not run"
    else:
        try:
            sam = segment.SamSegmenter(a.sam_model, a.prompt, dev)
            t = time.perf_counter()
            sp = []
            for i in range(0, len(imgs), 16):
                sp += sam(imgs[i : i + 16])
            torch.cuda.synchronize()
            out["sam_masks_per_s"] = round(len(imgs) / (time.perf_counter() - t), 1)
            s = segment.score_masks(sp, truths, n_boot=1000, seed=a.seed)
            out["dice_sam_ham"] = round(s["dice"]["mean"], 4)
            out["dice_sam_ham_ci"] = [round(s["dice"]["lo"], 4), round(s["dice"]["hi"], 4)]
            out["dice_sam_ham_median"] = round(s["dice"]["median"], 4)
            out["sam_model"], out["sam_prompt"] = a.sam_model, a.prompt
        except DermsynthError as e:
            out["sam_note"] = str(e)


if __name__ == "__main__":
    print(json.dumps(main()))
