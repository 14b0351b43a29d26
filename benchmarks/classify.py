"""Classifier training and evaluation speed through the workflow's own code (dermsynth.classify).

Runs ``classify.train`` (the train_classifier rule's loop: augmentations, class-balanced loss, AdamW,
validation every epoch, save_pretrained) and ``classify.predict`` (the evaluate rule's path: image
decoding from disk + forward pass) on generated PNGs, for ViT and MobileNetV2.

- ``--quick`` (CPU): the demo's tiny models (dermsynth.tiny) at 64 px; fp32 only (the CPU has no
  mixed precision in this code), so the precision ratio is null.
- CUDA: the full architectures with random weights built from configs (ViTConfig() = ViT-B/16 at
  224 px, MobileNetV2Config(depth_multiplier=1.0, image_size=224)), the same FLOPs and memory as the
  hub checkpoints, trained at fp32 and with the mixed precision of ``--amp`` (bf16 or fp16); the
  figure of merit is the ratio amp / fp32 of the train and eval img/s measured in the same run.

Train img/s: images per second of the optimisation steps (median over epochs after the first, which
holds cuDNN autotuning); eval img/s: the second of two predict passes (decoding included, as users run it).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from dermsynth import classify, io, tiny  # noqa: E402
from dermsynth.device import resolve_device  # noqa: E402

CLASSES = ["benign", "malignant"]
ARCHS = ("vit", "mobilenet_v2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models at 64 px on the CPU (< 2 min)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--images", type=int, default=None, help="training images (default 96 quick, 1024 GPU)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None, help="default 16 quick, 64 GPU")
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16"], help="mixed precision on CUDA")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def make_images(root: Path, n: int, size: int, seed: int = 0) -> pd.DataFrame:
    """Noisy skin-toned squares with a dark or multicoloured disc: content does not change speed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for i in range(n):
        label = CLASSES[i % 2]
        img = np.array([190, 150, 130], np.float32) + rng.normal(0, 12, (size, size, 3))
        disc = np.hypot(yy - size / 2, xx - size / 2) < size * rng.uniform(0.2, 0.35)
        img[disc] = (70, 45, 30) if label == "benign" else rng.uniform(20, 230, 3)
        p = root / f"{label}_{i}.png"
        sha = io.save_png(p, np.clip(img, 0, 255).astype(np.uint8))
        rows.append({"path": str(p), "label": label, "source_id": p.stem, "sha256": sha, "origin": "real"})
    return pd.DataFrame(rows)


def build_models(root: Path, full: bool) -> dict[str, str]:
    if not full:
        return {a: str(tiny.build(a, root / a, image_size=64)) for a in ARCHS}
    import torch
    from transformers import (
        MobileNetV2Config,
        MobileNetV2ForImageClassification,
        MobileNetV2ImageProcessor,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(num_labels=2)).save_pretrained(root / "vit")
    ViTImageProcessor().save_pretrained(root / "vit")
    mcfg = MobileNetV2Config(depth_multiplier=1.0, image_size=224, num_labels=2)
    MobileNetV2ForImageClassification(mcfg).save_pretrained(root / "mobilenet_v2")
    MobileNetV2ImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(root / "mobilenet_v2")
    return {a: str(root / a) for a in ARCHS}


def run_one(arch, model, train_df, val_df, out, size, args, precision, device) -> dict:
    cfg = {
        "image_size": size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "eval_batch_size": 2 * args.batch_size,
        "learning_rate": 1e-4,
        "mixed_precision": precision,
        "early_stopping_patience": args.epochs + 1,  # never stop early: every epoch is timed
    }
    summ = classify.train(arch, model, train_df, val_df, out, cfg, 0, CLASSES, args.threads, device)
    hist = pd.read_csv(out / "history.csv")
    per_epoch = (summ["n_train"] / hist["train_seconds"]).tolist()
    train_img_s = statistics.median(per_epoch[1:] if len(per_epoch) > 1 else per_epoch)
    speeds = []
    for _ in range(2):  # the first pass pays cuDNN autotuning and file-cache misses
        t0 = time.perf_counter()
        classify.predict(
            out / "model",
            train_df,
            CLASSES,
            batch_size=2 * args.batch_size,
            threads=args.threads,
            device=device,
            mixed_precision=precision,
        )
        speeds.append(len(train_df) / (time.perf_counter() - t0))
    return {"train_img_s": round(train_img_s, 2), "eval_img_s": round(speeds[-1], 2)}


def main(argv=None) -> dict:
    args = parse_args(argv)
    dev = resolve_device(args.device)
    cuda = dev.startswith("cuda")
    full = cuda and not args.quick
    size = 224 if full else 64
    args.images = args.images or (1024 if full else 96)
    args.batch_size = args.batch_size or (64 if full else 16)
    precisions = ["no", args.amp] if cuda else ["no"]
    result = {
        "benchmark": "classify",
        "device": f"cuda ({_gpu_name()})" if cuda else dev,
        "models": "ViT-B/16 + MobileNetV2 1.0 (random weights)" if full else "tiny ViT + MobileNetV2 0.35",
        "image_size": size,
        "n_train": args.images,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "threads": args.threads,
    }
    with tempfile.TemporaryDirectory(prefix="bench-classify-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        train_df = make_images(tmp / "train", args.images, size, seed=0)
        val_df = make_images(tmp / "val", max(16, args.images // 8), size, seed=1)
        models = build_models(tmp / "models", full)
        print(f"data + models in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for arch in ARCHS:
            for prec in precisions:
                key = f"{arch}_{'fp32' if prec == 'no' else prec}"
                t0 = time.perf_counter()
                r = run_one(arch, models[arch], train_df, val_df, tmp / key, size, args, prec, dev)
                print(f"{key}: {r} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
                for k, v in r.items():
                    result[f"{key}_{k}"] = v
            if len(precisions) > 1:
                amp = f"{arch}_{args.amp}"
                for k in ("train_img_s", "eval_img_s"):
                    result[f"{arch}_{k.split('_')[0]}_{args.amp}_vs_fp32"] = round(
                        result[f"{amp}_{k}"] / result[f"{arch}_fp32_{k}"], 3
                    )
            else:
                result[f"{arch}_amp_vs_fp32"] = None  # the CPU runs fp32 only
    print(json.dumps(result))
    return result


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


if __name__ == "__main__":
    main()
