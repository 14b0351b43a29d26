"""Semantic memorization audit on real ISIC dermoscopy: recall on planted near copies, false rate
on distinct lesions, with a threshold calibrated on the other half of the images (held out).

The 200 images of /work/shared/data/isic are split in two seeded halves. Half A calibrates exactly
as the filter does each run (``semantic_audit.calibrate``: planted copies of a subset, distinct
lesions as negatives). Half B measures at A's threshold: every B image gets one near copy of each
kind (crop, rotate, colour, jpeg, combo; planted at ``PLANT_PX`` px, as a synthetic image is larger
than the audit's working size), searched in the gallery of B (recall), and every B image is
searched in the gallery of the other B images (false rate). The pixel audit (``dermsynth.audit``,
32x32 thumbnail correlation under 8 symmetries at its configured threshold) runs on the same
copies to show what the semantic audit adds.

``python benchmarks/_evaluation_semaudit.py [--full]`` prints the figures as JSON (last line).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow"))

from dermsynth import audit, semantic_audit  # noqa: E402
from dermsynth.config import section  # noqa: E402

DATA = Path("/work/shared/data/isic")
PLANT_PX = 256  # px of the measured near copies and distinct images (the fine-tune gallery: image_size)
SEED = 0


def _pixel_caught(copies, src, originals, min_similarity: float) -> np.ndarray:
    def thumb(a):
        return cv2.resize(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA).astype(
            np.float32
        )

    idx, _, sim, _ = audit.nearest_neighbours(
        np.stack([thumb(a) for a in copies]), np.stack([thumb(a) for a in originals])
    )
    return (sim >= min_similarity) & (idx == src)


def run(quick: bool = True) -> dict:
    t0 = time.time()
    c = section("filter")["memorization"]
    sem = dict(c["semantic"], features="descriptor")
    files = sorted(DATA.rglob("*.jpg"))
    if quick:
        files = files[::2]  # 100 images: 50 calibrate, 50 measure
    size = int(sem["image_size"])
    big = [semantic_audit.load_square(f, PLANT_PX) for f in files]
    perm = np.random.default_rng(SEED).permutation(len(big))
    a_idx, b_idx = perm[: len(big) // 2], perm[len(big) // 2 :]
    # the gallery is read at the audit's working size, as the filter reads fine-tune images
    small = [cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA) for a in big]
    half_a = [small[i] for i in a_idx]
    emb = semantic_audit.embedder(sem)

    ga = emb.gallery(half_a, 2)
    calib = semantic_audit.calibrate(half_a, emb, ga, sem)
    thr = calib["threshold"]

    gb = emb.gallery([small[i] for i in b_idx], 2)
    half_b = [big[i] for i in b_idx]
    own = np.arange(len(half_b))
    _, _, neg = semantic_audit.nearest(emb.queries(half_b), gb, own, own)
    copies, src, kinds = semantic_audit.plant_copies(half_b, len(half_b), SEED + 1)
    idx, _, pos = semantic_audit.nearest(emb.queries(copies), gb)
    hit = pos >= thr
    kinds = np.array(kinds)
    pixel = _pixel_caught(copies, src, half_b, float(c["min_similarity"]))
    return {
        "semantic_audit_recall": float(hit.mean()),
        "semantic_audit_false_rate": float(np.mean(neg >= thr)),
        "pixel_audit_recall": float(pixel.mean()),
        "semantic_only": float(np.mean(hit & ~pixel)),
        "recall_per_kind": {k: round(float(hit[kinds == k].mean()), 3) for k in semantic_audit.PLANT_KINDS},
        "pixel_recall_per_kind": {
            k: round(float(pixel[kinds == k].mean()), 3) for k in semantic_audit.PLANT_KINDS
        },
        "nearest_is_source": float(np.mean(idx == src)),
        "threshold": round(thr, 4),
        "calibration_recall": round(calib["recall"], 3),
        "calibration_false_rate": round(calib["false_rate"], 3),
        "distinct_nn_p95": round(float(np.quantile(neg, 0.95)), 4),
        "copies": len(copies),
        "distinct": len(neg),
        "images_per_half": [len(half_a), len(half_b)],
        "features": emb.name,
        "seconds": round(time.time() - t0, 1),
    }


if __name__ == "__main__":
    print(json.dumps(run("--full" not in sys.argv)))
