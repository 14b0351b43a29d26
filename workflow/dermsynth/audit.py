"""Memorization audit: the nearest fine-tune image of every synthetic image.

Each image becomes the 32x32 grayscale thumbnail of ``dermsynth.splits`` (the same thumbnail and
64-bit pHash the leakage check of the splits uses), normalised to zero mean and unit norm, so the
dot product of two is their Pearson correlation: insensitive to brightness, contrast and mild
recolouring, and to JPEG recompression (which lives in frequencies a 32x32 thumbnail drops). The
eight flips and quarter turns of every training thumbnail are added, so a flipped or rotated copy
matches as well as a straight one. All synthetic x training similarities are computed as blocked
matrix products (BLAS), so the pair count costs little: reading the images is the slow part.

Measured on the project's generator (benchmarks/filter.py): different lesions correlate <= ~0.99
(same layout: a centred dark blob), copies, flipped, rotated, JPEG q60 or recoloured, >= ~0.998.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from .splits import phashes, thumbnails

log = logging.getLogger("dermsynth.audit")

NEAREST_COLUMNS = ["path", "nearest", "transform", "similarity", "phash_distance", "memorized"]
#: The 8 symmetries of the square (flips and quarter turns), as applied to the training image.
TRANSFORMS = ("id", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")


def dihedral(thumbs: np.ndarray) -> np.ndarray:
    """(N, 8, h, w): every thumbnail under the 8 symmetries, in ``TRANSFORMS`` order."""
    out = []
    for flip in (False, True):
        base = thumbs[:, :, ::-1] if flip else thumbs
        for k in range(4):
            out.append(np.rot90(base, k, axes=(1, 2)))
    return np.ascontiguousarray(np.stack(out, axis=1))


def embed(thumbs: np.ndarray) -> np.ndarray:
    """Flattened, zero-mean, unit-norm thumbnails (float32): dot products are correlations."""
    x = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-6)


def nearest_neighbours(
    syn: np.ndarray, train: np.ndarray, transforms: str = "dihedral", block: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each synthetic thumbnail, the most similar training thumbnail (over its symmetries).

    Returns (train index, transform index, similarity, pHash Hamming distance of that pair).
    Work is blocked over the synthetic rows so memory stays at ``block`` x (8 x n_train) floats.
    """
    n, m = len(syn), len(train)
    if n == 0 or m == 0:
        empty = np.zeros(n, np.int64)
        return empty - 1, empty, np.full(n, np.nan, np.float32), empty - 1
    variants = dihedral(train) if transforms == "dihedral" else train[:, None]
    k = variants.shape[1]
    flat = variants.reshape(m * k, *train.shape[1:])
    tf = embed(flat)  # (m*k, d): row j is training image j // k under transform j % k
    sf = embed(syn)
    th = phashes(flat)
    sh = phashes(syn)
    best = np.empty(n, np.int64)
    sim = np.empty(n, np.float32)
    for s in range(0, n, block):
        c = sf[s : s + block] @ tf.T  # (b, m*k)
        j = c.argmax(axis=1)
        best[s : s + block] = j
        sim[s : s + block] = c[np.arange(len(j)), j]
    dist = np.bitwise_count(sh ^ th[best]).astype(np.int64)
    return best // k, best % k, sim, dist


def memorization_audit(
    synthetic_paths,
    train_paths,
    min_similarity: float,
    transforms: str = "dihedral",
    block: int = 2048,
    threads: int = 1,
    synthetic_thumbs: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per synthetic image: its nearest fine-tune image, similarity, pHash distance, verdict.

    ``synthetic_thumbs`` = (thumbnails, readable) when the caller has them already.
    """
    synthetic_paths = [str(p) for p in synthetic_paths]
    train_paths = [str(p) for p in train_paths]
    if synthetic_thumbs is None:
        synthetic_thumbs = thumbnails(synthetic_paths, threads, "audit: synthetic")
    st, s_ok = synthetic_thumbs
    tt, t_ok = thumbnails(train_paths, threads, "audit: fine-tune")
    if (~t_ok).any():
        log.warning("audit: %d fine-tune images unreadable, left out", int((~t_ok).sum()))
    keep_t = np.flatnonzero(t_ok)
    idx, tr, sim, dist = nearest_neighbours(st, tt[keep_t], transforms, block)
    rows = pd.DataFrame(
        {
            "path": synthetic_paths,
            "nearest": [train_paths[keep_t[i]] if i >= 0 else "" for i in idx],
            "transform": [
                TRANSFORMS[t] if transforms == "dihedral" and i >= 0 else ("id" if i >= 0 else "")
                for i, t in zip(idx, tr, strict=True)
            ],
            "similarity": sim.astype(float),
            "phash_distance": dist,
        }
    )
    rows.loc[~s_ok, ["nearest", "transform"]] = ""
    rows.loc[~s_ok, ["similarity"]] = np.nan
    rows.loc[~s_ok, ["phash_distance"]] = -1
    rows["memorized"] = rows["similarity"].fillna(-1.0) >= float(min_similarity)
    log.info(
        "audit: %d synthetic x %d fine-tune images (x%d symmetries); %d near copies (similarity >= %s)",
        len(st),
        len(keep_t),
        8 if transforms == "dihedral" else 1,
        int(rows["memorized"].sum()),
        min_similarity,
    )
    return rows[NEAREST_COLUMNS]
