"""De-duplication and lesion-grouped splits on the real HAM10000 (../shared/data).

The 124 full-resolution images in ``ham10000/`` reappear at 200x150 in ``ham10000_200x150/`` (10,015
images, 1,956 lesions with several images). The full-resolution copies get new image and lesion ids
("copy-<id>"), so only the pixels can pair them. Measured:

- recall: how many of the 124 cross-resolution copies the de-duplication finds;
- false pairs: pairs of images of different lesions (HAM10000 lesion_id) that are not the planted copies;
- straddling lesions: lesions (over both datasets) with images in two of train/val/test;
- speed: the vectorised pairwise pHash comparison (uint64 XOR + popcount in blocks) against the
  same comparison as a Python loop over pairs, measured on a sample of rows and scaled to all pairs.

``--quick`` uses the 124 copies plus 1,500 other 200x150 images (CPU, well under 2 min); without it the
whole set. ``--device`` is accepted for symmetry with the other benchmarks: this is CPU work.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

from dermsynth import io, splits  # noqa: E402

LABEL = {
    "mel": "malignant",
    "bcc": "malignant",
    "akiec": "malignant",
    "scc": "malignant",
    "nv": "benign",
    "bkl": "benign",
    "df": "benign",
    "vasc": "benign",
}


def manifests(data: Path, n_other: int | None, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(200x150 set, full-resolution set) as split-stage manifests; sha256 of the files."""
    meta = pd.read_csv(data / "ham10000_200x150" / "metadata.csv")
    full = sorted(p.stem for p in (data / "ham10000" / "images").glob("*.jpg"))
    if n_other is not None:
        rng = np.random.default_rng(seed)
        # whole lesions, so multi-image lesions stay complete; the planted copies' lesions always in
        keep = set(meta.loc[meta.image_id.isin(full), "lesion_id"])
        others = meta.loc[~meta.lesion_id.isin(keep), "lesion_id"].unique()
        for lesion in rng.permutation(others):
            if meta.lesion_id.isin(keep).sum() >= len(full) + n_other:
                break
            keep.add(lesion)
        meta = meta[meta.lesion_id.isin(keep)]
    by_id = meta.set_index("image_id")

    def rows(ids, folder, prefix):
        return pd.DataFrame(
            {
                "path": [str(data / folder / "images" / f"{i}.jpg") for i in ids],
                "label": [LABEL[by_id.loc[i, "dx"]] for i in ids],
                "source_id": [prefix + i for i in ids],
                # the copies' lesion ids are disguised too: the pairing must come from the pixels
                "lesion_id": [prefix + by_id.loc[i, "lesion_id"] for i in ids],
                "sha256": [io.sha256_file(data / folder / "images" / f"{i}.jpg") for i in ids],
            }
        )

    return rows(meta.image_id.tolist(), "ham10000_200x150", ""), rows(full, "ham10000", "copy-")


def naive_pairs_per_s(hashes: np.ndarray, threshold: int, rows: int = 40) -> float:
    """Pairs compared per second by a Python loop (the peer of :func:`splits.near_pairs`)."""
    hs = [int(h) for h in hashes]
    t0 = time.process_time()
    n = 0
    for i in range(min(rows, len(hs))):
        a = hs[i]
        for b in hs[i + 1 :]:
            n += 1
            if (a ^ b).bit_count() <= threshold:
                pass
    return n / (time.process_time() - t0)


def run(data: Path, n_other: int | None, threads: int, threshold: int = 6, min_corr: float = 0.985) -> dict:
    small, big = manifests(data, n_other)
    t0 = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        io.write_csv(tmp / "small.csv", small)
        io.write_csv(tmp / "big.csv", big)
        out = splits.make_splits(
            {"ham200": tmp / "small.csv", "ham600": tmp / "big.csv"},
            {"ham200": {"val": 0.15, "test": 0.2}, "ham600": {"val": 0.0, "test": 1.0}},
            42,
            tmp / "splits.csv",
            tmp / "leakage.csv",
            phash_threshold=threshold,
            min_corr=min_corr,
            threads=threads,
        )
        leak = io.read_csv(tmp / "leakage.csv")
    t_split = time.process_time() - t0

    # the pairwise comparison alone, vectorised vs a Python loop, on the same hashes
    hashes = np.array([int(h, 16) for h in out["phash"]], dtype=np.uint64)
    n = len(hashes)
    t0 = time.process_time()
    ii, _, _ = splits.near_pairs(hashes, threshold)
    t_vec = time.process_time() - t0
    n_pairs = n * (n - 1) // 2
    naive_rate = naive_pairs_per_s(hashes, threshold)

    # what was found, pixel-wise only (the copies have other ids and no shared lesion_id kind counts)
    out["lesion_id"] = out["lesion_id"].str.replace("copy-", "", regex=False)  # the true HAM10000 lesion
    lesion = dict(zip(zip(out.dataset, out.source_id, strict=True), out.lesion_id, strict=True))
    ph = leak[leak["kind"].str.contains("phash")]
    planted = {f"copy-{i}" for i in big.source_id.str.replace("copy-", "")}
    found = {
        b
        for a, b in zip(ph.source_id_a, ph.source_id_b, strict=True)
        if b in planted and a == b.replace("copy-", "")
    }
    found |= {
        a
        for a, b in zip(ph.source_id_a, ph.source_id_b, strict=True)
        if a in planted and b == a.replace("copy-", "")
    }
    false = [
        (r.source_id_a, r.source_id_b)
        for r in ph.itertuples()
        if lesion[(r.dataset_a, r.source_id_a)] != lesion[(r.dataset_b, r.source_id_b)]
    ]

    kept = out[out.split != "excluded"]
    multi = out[out.dataset == "ham200"].groupby("lesion_id").size()
    multi = multi[multi > 1].index
    straddle_all = int((kept.groupby("lesion_id")["split"].nunique() > 1).sum())
    straddle_multi = int((out[out.dataset == "ham200"].groupby("lesion_id")["split"].nunique() > 1).sum())
    return {
        "images": n,
        "planted_copies": len(planted),
        "copies_found": len(found),
        "phash_pairs": len(ph),
        "different_lesion_pairs": len(false),
        "different_lesion_examples": [list(p) for p in false[:5]],
        "multi_image_lesions": len(multi),
        "straddling_multi_image_lesions": straddle_multi,
        "straddling_lesions_both_datasets": straddle_all,
        "excluded": int((out.split == "excluded").sum()),
        "candidate_pairs_hamming": len(ii),
        "pairwise_s": round(t_vec, 3),
        "pairwise_naive_s_est": round(n_pairs / naive_rate, 1),
        "pairwise_speedup": round(n_pairs / naive_rate / max(t_vec, 1e-9), 1),
        "split_stage_s": round(t_split, 2),
        "threads": threads,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="124 copies + ~1,500 others (CPU, < 2 min)")
    ap.add_argument("--device", default="auto", help="accepted for symmetry; the work is on the CPU")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    res = run(Path(args.data), 1500 if args.quick else None, args.threads)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
