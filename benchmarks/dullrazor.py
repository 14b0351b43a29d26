"""DullRazor, measured: PSNR/SSIM against the hair-free truth, damage to hair-free images, speed.

- hairy set: demo images (both domains, both classes) with drawn hairs; the hair-free render is the truth;
- real-skin set: real ISIC images (../shared/data/isic) with the same drawn hairs on top, so the
  inpainting is also scored on real skin texture;
- hair-free set: demo images without hairs; DullRazor output vs its input (it must not damage them);
- every inpainting method (closing, telea, ns, biharmonic) on the same masks, with its speed: the
  choice of the default is this table;
- speed: images per second at 512 px on one core (OpenCV single-threaded; CPU time of this process,
  so other jobs on a shared machine do not distort it), default settings;
- a before / after / mask contact sheet of the real hairy images (../shared/data/hairy) in
  ``--out`` (default results/benchmarks/dullrazor_hairy.png).

``--device`` is accepted for symmetry with the other benchmarks: DullRazor runs on the CPU.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from dermsynth import hair, io  # noqa: E402
from dermsynth.data import demo  # noqa: E402
from dermsynth.imaging import center_square_resize, contact_sheet  # noqa: E402

CLASSES = ["benign", "malignant"]
SIZE = 512


def demo_sets(n: int, seed: int = 5) -> tuple[list, list]:
    hairy = [
        demo.make_image(
            seed, "bench", CLASSES[i % 2], i, 0, SIZE, list(demo.DOMAINS)[(i // 2) % 2], CLASSES, True
        )
        for i in range(n)
    ]
    free = [
        demo.make_image(
            seed + 1, "bench", CLASSES[i % 2], i, 0, SIZE, list(demo.DOMAINS)[(i // 2) % 2], CLASSES, False
        )[0]
        for i in range(n)
    ]
    return hairy, free


def real_skin_set(data: Path, n: int) -> list:
    paths = sorted((data / "isic" / "benign").glob("*.jpg"))[: n // 2]
    paths += sorted((data / "isic" / "malignant").glob("*.jpg"))[: n - len(paths)]
    out = []
    for k, p in enumerate(paths):
        truth = center_square_resize(np.asarray(io.load_rgb(p)), SIZE)
        hairy, _ = demo.draw_hairs(truth.astype(np.float32) / 255, np.random.default_rng(1000 + k))
        hairy = np.round(np.clip(hairy, 0, 1) * 255).astype(np.uint8)
        if not np.array_equal(hairy, truth):  # all hairs can fall outside the image: not a hairy image
            out.append((hairy, truth))
    return out


def score(pairs: list, cfg: dict) -> dict:
    """Mean PSNR/SSIM before and after DullRazor (``cfg`` = preprocess.dullrazor) and seconds per image."""
    kw = hair.scaled_params(cfg, SIZE, SIZE)
    pb, pa, sb, sa, secs = [], [], [], [], []
    for img, truth in pairs:
        t0 = time.process_time()
        clean, _ = hair.dullrazor(img, **kw)
        secs.append(time.process_time() - t0)
        pb.append(hair.psnr(img, truth))
        pa.append(hair.psnr(clean, truth))
        sb.append(hair.ssim(img, truth))
        sa.append(hair.ssim(clean, truth))
    return {
        "psnr_before": float(np.mean(pb)),
        "psnr_after": float(np.mean(pa)),
        "ssim_before": float(np.mean(sb)),
        "ssim_after": float(np.mean(sa)),
        "s_per_img": float(np.mean(secs)),
    }


def hairfree(images: list, cfg: dict) -> tuple[float, float]:
    """(mean, min) PSNR of DullRazor's output against its hair-free input; inf (identical) capped at 100."""
    kw = hair.scaled_params(cfg, SIZE, SIZE)
    v = [min(100.0, hair.psnr(hair.dullrazor(img, **kw)[0], img)) for img in images]
    return float(np.mean(v)), float(np.min(v))


def real_hairy_sheet(data: Path, out: Path, cfg: dict, size: int = 256) -> dict:
    rows, fractions = [], []
    for p in sorted((data / "hairy").glob("*.jpg")):
        rgb = np.asarray(io.load_rgb(p))
        clean, mask = hair.dullrazor(rgb, **hair.scaled_params(cfg, *rgb.shape[:2]))
        fractions.append(float((mask > 0).mean()))
        tiles = [center_square_resize(x, size) for x in (rgb, clean, np.repeat(mask[..., None], 3, 2))]
        rows.append((p.stem, tiles, f"hair {100 * fractions[-1]:.1f}%"))
    contact_sheet(rows, ["before", "after", "mask"], out)
    return {"n": len(rows), "hair_fraction_mean": float(np.mean(fractions)) if fractions else 0.0}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="12 images per set (CPU, < 2 min)")
    ap.add_argument("--device", default="auto", help="accepted for symmetry; DullRazor runs on the CPU")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--out", default="results/benchmarks/dullrazor_hairy.png")
    args = ap.parse_args(argv)
    n = 12 if args.quick else 48
    cv2.setNumThreads(1)  # one core
    cfg = {}  # the schema defaults: what a run without preprocess.dullrazor settings does
    data = Path(args.data)
    hairy, free = demo_sets(n)
    real = real_skin_set(data, n) if (data / "isic").is_dir() else []

    # every method on the same subset (biharmonic takes ~0.5 s per image)
    sub = max(4, n // 3)
    methods = {}
    for method in hair.METHODS:
        mcfg = {**cfg, "method": method}
        d = score(hairy[:sub], mcfg)
        r = score(real[:sub], mcfg) if real else None
        methods[method] = {
            "psnr_demo_db": round(d["psnr_after"], 2),
            "ssim_demo": round(d["ssim_after"], 4),
            "psnr_real_skin_db": round(r["psnr_after"], 2) if r else None,
            "img_per_s_512": round(1 / d["s_per_img"], 1),
        }

    main_d = score(hairy, cfg)
    main_r = score(real, cfg) if real else None
    free_mean, free_min = hairfree(free, cfg)
    noguard_mean, noguard_min = hairfree(free, {**cfg, "guard": False})
    # speed: the whole default DullRazor on the hairy set, again, timed end to end
    t0 = time.process_time()
    kw = hair.scaled_params(cfg, SIZE, SIZE)
    for img, _ in hairy:
        hair.dullrazor(img, **kw)
    ips = len(hairy) / (time.process_time() - t0)
    sheet = real_hairy_sheet(data, Path(args.out), cfg) if (data / "hairy").is_dir() else {"n": 0}

    res = {
        "n": n,
        "method": hair.DEFAULT_METHOD,
        "psnr_hairy_db": round(main_d["psnr_before"], 2),
        "psnr_cleaned_db": round(main_d["psnr_after"], 2),
        "psnr_gain_db": round(main_d["psnr_after"] - main_d["psnr_before"], 2),
        "ssim_hairy": round(main_d["ssim_before"], 4),
        "ssim_cleaned": round(main_d["ssim_after"], 4),
        "psnr_hairfree_db": round(free_mean, 2),
        "psnr_hairfree_min_db": round(free_min, 2),
        "psnr_hairfree_noguard_db": round(noguard_mean, 2),
        "psnr_hairfree_noguard_min_db": round(noguard_min, 2),
        "psnr_real_skin_hairy_db": round(main_r["psnr_before"], 2) if main_r else None,
        "psnr_real_skin_cleaned_db": round(main_r["psnr_after"], 2) if main_r else None,
        "img_per_s_512": round(ips, 1),
        "speed_vs_biharmonic": round(ips / methods["biharmonic"]["img_per_s_512"], 1),
        "methods": methods,
        "real_hairy_sheet": str(args.out) if sheet["n"] else None,
        "real_hairy_mask_fraction": round(sheet.get("hair_fraction_mean", 0.0), 4),
    }
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
