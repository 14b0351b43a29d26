"""Same lesion, different photograph: embedding-similarity pairs for the splitter, and their calibration.

pHash only pairs near-identical pixels. A lesion re-photographed (other zoom, angle, light) and filed
under a second lesion id needs a descriptor that survives those changes (config ``split.embedding``):

- ``sift`` (default): SIFT keypoints (OpenCV, offline). Each image's nearest neighbours by the VLAD
  of its keypoints form a shortlist; each candidate is verified by the keypoints matched under one
  similarity transform (RANSAC), which survives rotation, zoom and light. The score is the number
  of inlier matches: it needs the same structures in the same geometry, rare across lesions.
- ``colour``: a joint HSV histogram (16x8x8 bins, square-rooted), offline and cheap. It ignores
  where a colour is, so rotation and flips leave it unchanged, but it is weak on HAM10000.
- ``tiny`` / ``dinov2`` / ``clip``: the image features of ``quality.load_extractor`` (torch; dinov2
  and clip need the weights of ``models.dinov2`` / ``models.clip``).

Cosine features pair mutual k-nearest neighbours (``k``) whose similarity reaches ``min_similarity``:
an image pairs at most with its own few nearest, so a cluster of look-alikes cannot merge. ``sift``
pairs candidates with ``min_inliers`` or more. Merged groups are capped at ``max_group`` images,
best pairs first, so a weak pair never chains two groups together. :func:`calibrate` picks the
threshold on lesions known to have several images: the lowest score at which pairs of different
lesions stay within a budget per 1,000 images (benchmarks/_evaluation_leakage.py).

Measured on all of HAM10000 (200x150; calibrated on half of the lesions, measured on the other
half, 5,014 images): ``sift`` at 18 inliers pairs 45% of the same-lesion pairs directly (50% end up
in one group) with no pair the metadata proves false; the shortlist caps it (50% of same-lesion
pairs reach the verification). ``colour`` and ``tiny`` reach < 1% at the same false-pair budget.
The closest pairs of two lesion ids are one lesion filed twice (checked by eye), as expected."""

from __future__ import annotations

import functools
import logging

import cv2
import numpy as np

from . import config, io
from .errors import ConfigError
from .imaging import image_threads
from .progress import Bar

log = logging.getLogger("dermsynth")

FEATURES = ("colour", "sift", "tiny", "dinov2", "clip")
_HSV_BINS = (16, 8, 8)


# ---------------------------------------------------------------------------------------------
# descriptors


def _read(path, size: int) -> np.ndarray:
    """RGB uint8, longest side ``size`` (aspect kept)."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr is not None else np.asarray(io.load_rgb(path))
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    if scale != 1:
        rgb = cv2.resize(
            rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    return rgb


def colour_descriptor(rgb: np.ndarray) -> np.ndarray:
    """Square-rooted joint HSV histogram (unit L1 before the root, so unit L2 after)."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h = cv2.calcHist([hsv], [0, 1, 2], None, list(_HSV_BINS), [0, 180, 0, 256, 0, 256]).ravel()
    return np.sqrt(h / max(h.sum(), 1.0)).astype(np.float32)


_SIFT = None


def sift_keypoints(rgb: np.ndarray, n: int = 500, contrast: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """(positions (k, 2), descriptors (k, 128)) of up to ``n`` SIFT keypoints on the local-contrast gray.

    ``contrast``: SIFT's contrast threshold; below OpenCV's 0.04, because dermoscopy is low-contrast
    and smooth lesions otherwise keep too few keypoints to verify.
    """
    global _SIFT
    if _SIFT is None or _SIFT[0] != (n, contrast):
        _SIFT = ((n, contrast), cv2.SIFT_create(nfeatures=n, contrastThreshold=contrast))
    gray = cv2.createCLAHE(2.0, (4, 4)).apply(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    kps, desc = _SIFT[1].detectAndCompute(gray, None)
    pts = np.float32([k.pt for k in kps]).reshape(-1, 2)
    return pts, desc if desc is not None else np.zeros((0, 128), np.float32)


def inliers(a: tuple, b: tuple, ratio: float = 0.8, reproj_px: float = 4.0) -> int:
    """SIFT matches of ``a`` and ``b`` (Lowe's ratio test) consistent with one similarity transform."""
    (pa, da), (pb, db) = a, b
    if len(da) < 3 or len(db) < 3:
        return 0
    matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(da, db, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < ratio * m[1].distance]
    if len(good) < 4:
        return 0
    src = pa[[g.queryIdx for g in good]]
    dst = pb[[g.trainIdx for g in good]]
    _, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=reproj_px)
    return int(mask.sum()) if mask is not None else 0


def _root(desc: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalised, square-rooted descriptors (Hellinger kernel, better for retrieval)."""
    d = desc.astype(np.float32)
    return np.sqrt(d / np.abs(d).sum(1, keepdims=True).clip(1e-9))


def vlad(descs: list[np.ndarray], words: int = 64, sample: int = 30000, seed: int = 0) -> np.ndarray:
    """Unit-norm VLAD vectors (n, words * 128) of RootSIFT descriptors, vocabulary k-means on the set.

    Each keypoint adds its offset from the nearest visual word; power- and per-word normalisation
    keep frequent bursty structures (hairs, ring edges) from dominating (Arandjelovic & Zisserman 2013).
    """
    roots = [_root(d) for d in descs]
    pool = np.concatenate([r for r in roots if len(r)] or [np.zeros((0, 128), np.float32)])
    words = max(1, min(int(words), len(pool)))
    out = np.zeros((len(descs), words, 128), np.float32)
    if not len(pool):
        return out.reshape(len(descs), -1)
    rng = np.random.default_rng(seed)
    fit = pool[rng.choice(len(pool), min(sample, len(pool)), replace=False)]
    cv2.setRNGSeed(int(seed))
    crit = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-3)
    _, _, centres = cv2.kmeans(fit, words, None, crit, 1, cv2.KMEANS_PP_CENTERS)
    for i, r in enumerate(roots):
        if len(r):
            word = np.argmin(((r[:, None, :] - centres[None]) ** 2).sum(2), axis=1)
            np.add.at(out[i], word, r - centres[word])
    out = np.sign(out) * np.sqrt(np.abs(out))
    out /= np.linalg.norm(out, axis=2, keepdims=True).clip(1e-9)
    out = out.reshape(len(descs), -1)
    return out / np.linalg.norm(out, axis=1, keepdims=True).clip(1e-9)


@functools.cache
def _dullrazor_defaults() -> dict:
    return config.section("preprocess")["dullrazor"]


def dehair(rgb: np.ndarray) -> np.ndarray:
    """DullRazor (the schema's preprocess.dullrazor defaults, scaled to the image): hair crossings
    make keypoints that match between any two hairy images."""
    from . import hair  # imported here: only the sift features need it

    return hair.dullrazor(rgb, **hair.scaled_params(_dullrazor_defaults(), *rgb.shape[:2]))[0]


def _local(path, cfg: dict):
    rgb = _read(path, cfg["image_size"])
    if cfg["features"] == "sift":
        rgb = dehair(rgb) if cfg["dehair"] else rgb
        return sift_keypoints(rgb, cfg["keypoints"], cfg["contrast"]), None
    return None, colour_descriptor(rgb)


def describe(paths, cfg: dict, threads: int = 1, device: str = "auto", model_dir=None):
    """(unit-norm embeddings (n, d) float32, SIFT keypoints per image or None) of ``paths``.

    ``sift``: the embedding is the VLAD of the keypoints (the shortlist), the keypoints verify.
    """
    kind = cfg["features"]
    paths = [str(p) for p in paths]
    if kind in ("colour", "sift"):
        kps, emb = [], []
        fn = lambda p: _local(p, cfg)  # noqa: E731
        with image_threads(threads) as pmap:
            for k, e in Bar(pmap(fn, paths), total=len(paths), desc=f"embedding ({kind})"):
                kps.append(k)
                emb.append(e)
        if kind == "sift":
            return vlad([d for _, d in kps], cfg["words"]), kps
        return (np.stack(emb) if emb else np.zeros((0, int(np.prod(_HSV_BINS))), np.float32)), None
    from . import quality  # torch: only for the network features

    ext = quality.load_extractor(kind, {}, model_dir, None, device)
    feats = quality.extract(paths, ext, threads=threads, desc=f"embedding ({kind})")
    feats = feats - feats.mean(0, keepdims=True)  # cosine around the set's mean: the shared look cancels
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True).clip(1e-12)).astype(np.float32), None


# ---------------------------------------------------------------------------------------------
# candidates, scores, groups


def knn(emb: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows by cosine: (indices (n, k), similarities (n, k)), best first."""
    n = len(emb)
    k = min(int(k), max(n - 1, 0))
    idx, sim = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    for s in range(0, n, chunk):
        block = emb[s : s + chunk] @ emb.T
        block[np.arange(len(block)), np.arange(s, s + len(block))] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k else np.zeros((len(block), 0), int)
        vals = np.take_along_axis(block, top, 1)
        order = np.argsort(-vals, axis=1, kind="stable")
        idx[s : s + chunk] = np.take_along_axis(top, order, 1)
        sim[s : s + chunk] = np.take_along_axis(vals, order, 1)
    return idx, sim


def candidates(emb: np.ndarray, k: int, mutual: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j, cosine) where each is among the other's ``k`` nearest (or either, ``mutual=False``)."""
    idx, sim = knn(emb, k)
    found: dict[tuple[int, int], float] = {}
    count: dict[tuple[int, int], int] = {}
    for i in range(len(idx)):
        for j, s in zip(idx[i].tolist(), sim[i].tolist(), strict=True):
            key = (min(i, j), max(i, j))
            found[key] = s
            count[key] = count.get(key, 0) + 1
    keys = sorted(p for p in found if count[p] == 2 or not mutual)
    ii = np.array([p[0] for p in keys], np.int64)
    jj = np.array([p[1] for p in keys], np.int64)
    return ii, jj, np.array([found[p] for p in keys], np.float64)


def scores(emb, kps, cfg: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All candidate pairs (i, j, score): cosine, or for ``sift`` the inliers of the VLAD shortlist."""
    if cfg["features"] != "sift":
        return candidates(emb, cfg["k"], mutual=True)
    ii, jj, _ = candidates(emb, cfg["shortlist"], mutual=False)
    bar = Bar(zip(ii.tolist(), jj.tolist(), strict=True), total=len(ii), desc="SIFT verification")
    return ii, jj, np.array([inliers(kps[i], kps[j]) for i, j in bar], np.float64)


def threshold_of(cfg: dict) -> float:
    return float(cfg["min_inliers"] if cfg["features"] == "sift" else cfg["min_similarity"])


def capped_pairs(ii, jj, ss, threshold: float, n: int, max_group: int) -> list[tuple[int, int, float]]:
    """Pairs scoring >= ``threshold``, best first, dropping any that would merge past ``max_group`` images."""
    parent = list(range(n))
    size = [1] * n

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    out = []
    for k in np.argsort(-np.asarray(ss), kind="stable"):
        if ss[k] < threshold:
            break
        i, j = int(ii[k]), int(jj[k])
        a, b = find(i), find(j)
        if a != b and size[a] + size[b] > max_group:
            continue
        if a != b:
            parent[b] = a
            size[a] += size[b]
        out.append((i, j, float(ss[k])))
    return sorted(out)


def find_pairs(paths, cfg: dict | None = None, threads: int = 1, device: str = "auto", model_dir=None):
    """Same-lesion pairs (i < j, score) among ``paths`` under ``split.embedding`` (defaults filled)."""
    c = validate(cfg)
    if len(paths) < 2:
        return []
    emb, kps = describe(paths, c, threads, device, model_dir)
    ii, jj, ss = scores(emb, kps, c)
    pairs = capped_pairs(ii, jj, ss, threshold_of(c), len(paths), c["max_group"])
    log.info(
        "embedding (%s): %d candidate pairs, %d at score >= %g",
        c["features"],
        len(ii),
        len(pairs),
        threshold_of(c),
    )
    return pairs


def validate(cfg: dict | None) -> dict:
    """``split.embedding`` with defaults; one-line ConfigError for values the schema cannot express."""
    c = config.section("split", {"embedding": dict(cfg or {})})["embedding"]
    if c["features"] not in FEATURES:
        raise ConfigError(f"split.embedding.features is '{c['features']}'; allowed: {', '.join(FEATURES)}")
    if c["features"] == "sift" and c["shortlist"] < 1:
        raise ConfigError("split.embedding.shortlist must be >= 1 for features: sift")
    return c


# ---------------------------------------------------------------------------------------------
# calibration


def calibrate(
    scores_,
    positive,
    n_images: int,
    n_positive: int,
    false_per_1000: float = 1.0,
    negative=None,
    false_scale: float = 1.0,
) -> dict:
    """The operating point: the lowest score threshold at which pairs of different lesions stay
    <= ``false_per_1000`` per 1,000 images; recall = positives at or above it / ``n_positive``
    (all same-lesion pairs, also those no candidate reached).

    ``negative``: the pairs known to be different lesions (default: all not ``positive``); when only
    some are known (lesion ids miss re-photographs), ``false_scale`` = 1 / the share of false pairs
    that can be known, so the estimate counts the unknown ones too.
    """
    s = np.asarray(scores_, np.float64)
    pos = np.asarray(positive, bool)
    neg = ~pos if negative is None else np.asarray(negative, bool)

    def n_false(t):
        return false_scale * int((neg & (s >= t)).sum())

    budget = false_per_1000 * n_images / 1000 + 1e-9
    best = np.inf
    for t in np.unique(s)[::-1]:  # descending: false pairs only grow as the threshold falls
        if n_false(t) > budget:
            break
        best = t
    false = n_false(best)
    hits = int((pos & (s >= best)).sum())
    return {
        "threshold": float(best),
        "recall": hits / n_positive if n_positive else float("nan"),
        "false_pairs": false,
        "false_pairs_per_1000_images": 1000 * false / n_images if n_images else 0.0,
    }
